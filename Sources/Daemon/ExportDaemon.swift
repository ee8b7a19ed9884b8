import BlockExport
import BlockIO
import Control
import Foundation
import Logging
import NBD
import NIOCore
import NIOPosix
import Prometheus

/// A daemon's failure to start or to stop cleanly, described for people (it names the device,
/// path or address).
public struct DaemonError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What every serving verb does around its export: set up libaio on the event loops, open the
/// export, listen and announce the NBD URIs, serve until SIGINT/SIGTERM (or a `stop` request on
/// the control socket), then answer the requests in flight, close the export (which makes it
/// durable) and tear everything down. A library, so tests can run a daemon in their own process;
/// the CLI prints what it announces and reports.
public enum ExportDaemon {
    /// A control socket for the daemon: where it lives, and how the export answers every verb but
    /// `stop` (which the daemon handles itself).
    public struct Control<Export: BlockExport>: Sendable {
        public var directory: RuntimeDirectory
        public var answer: @Sendable (_ export: Export, _ aio: AIOEngine, _ request: ControlRequest) async -> ControlResponse

        public init(directory: RuntimeDirectory,
                    answer: @escaping @Sendable (_ export: Export, _ aio: AIOEngine, _ request: ControlRequest) async -> ControlResponse) {
            self.directory = directory
            self.answer = answer
        }
    }

    /// Prometheus metrics for the daemon (`--metrics HOST:PORT`): request latencies, plus what
    /// `sample` records from the export before each scrape.
    public struct Metrics<Export: BlockExport>: Sendable {
        public var host: String
        public var port: Int
        /// The registry `MetricsServer.bootstrap()` made the backend.
        public var registry: PrometheusCollectorRegistry
        public var sample: @Sendable (Export) -> Void = { _ in }

        public init(host: String, port: Int, registry: PrometheusCollectorRegistry) {
            self.host = host
            self.port = port
            self.registry = registry
        }
    }

    /// Runs the daemon. `open` opens the devices and builds the export; each NBD URI it listens
    /// on is given to `announce`, and once all are, `ready` is called (the CLI detaches from its
    /// standard output then). `report` runs after the export closed cleanly and says what state it
    /// was left in: returned, and the answer to a `stop` request. A failure to start or stop is
    /// thrown after everything was torn down. With `takeSignals` (a daemon process), SIGINT and
    /// SIGTERM stop it; a daemon inside another program (a test) leaves the process's signals alone
    /// and stops on a `stop` request only. `busyPoll` is how long at most an event loop spins after
    /// its I/O before it sleeps (`LoopPoller`; zero: never).
    public static func run<Export: BlockExport>(
        name: String, listen addresses: [ListenAddress], limits: NBDServerLimits, tls: NBDServerTLSPolicy? = nil,
        busyPoll: TimeAmount = .zero, logger: Logger,
        control: Control<Export>? = nil, metrics: Metrics<Export>? = nil, takeSignals: Bool = true, announce: (String) -> Void, ready: () -> Void = {},
        open: (AIOEngine) async throws -> Export, report: (Export) -> String? = { _ in nil }
    ) async throws -> String? {
        // Signals are taken over before anything is announced: a SIGTERM right after the URI line
        // must stop the daemon cleanly, not kill it.
        let signals = SignalWaiter()
        if takeSignals { signals.install() }
        try control?.directory.prepare()
        let runtime = try await DaemonRuntime.start(busyPoll: busyPoll)
        let service: ExportService<Export>
        do {
            service = ExportService(name: name, export: try await open(runtime.aio), runtime: runtime, limits: limits, tls: tls, logger: logger)
        } catch {
            await runtime.shutdown()
            throw error
        }
        do {
            try await service.start(addresses: addresses, control: control, metrics: metrics, announce: announce)
            ready()
        } catch {
            await service.abandon()
            await runtime.shutdown()
            throw error
        }
        if takeSignals { Task { service.stop.fire(.signal(await signals.wait())) } }
        let reason = await service.stop.wait()
        SystemdNotifier.stopping()
        logger.info("stopping", metadata: ["reason": "\(reason)"])
        let text: String?
        do {
            text = try await service.finish(report: report)
        } catch {
            await runtime.shutdown()
            throw error
        }
        await runtime.shutdown()
        logger.info("stopped")
        return text
    }
}
