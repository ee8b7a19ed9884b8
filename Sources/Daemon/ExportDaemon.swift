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
        let aio: AIOEngine
        do { aio = try AIOEngine(depth: 512) } catch {
            throw DaemonError("cannot set up libaio: \(error) (see /proc/sys/fs/aio-max-nr)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        func tearDown() async {
            aio.shutdown()
            try? await group.shutdownGracefully()
        }
        let stop = StopTrigger()
        // Signals are taken over before anything is announced: a SIGTERM right after the URI line
        // must stop the daemon cleanly, not kill it.
        let signals = SignalWaiter()
        if takeSignals { signals.install() }
        let info = Mutex(DaemonInfo(pid: getpid(), exports: [], started: ISO8601DateFormatter().string(from: Date()), backend: "engine"))
        let export: Export
        var controlServer: ControlServer?
        var metricsServer: MetricsServer?
        var pidFile: String?
        defer { if let pidFile { unlink(pidFile) } }
        let polling: BusyPolling
        do {
            try control?.directory.prepare()
            polling = try await aio.bind(to: group, busyPoll: busyPoll)
            export = try await open(aio)
        } catch {
            await tearDown()
            throw error
        }
        let server = NBDServer(registry: NBDExportRegistry([(name, export)]), group: group, logger: logger, limits: limits, tls: tls,
                               busyPolling: polling)
        do {
            if let control {
                let answer = control.answer
                let socket = ControlServer(path: control.directory.controlSocket(for: name), name: name, group: group,
                                           logger: logger) { request in
                    guard request.verb != .stop else { return await stop.request() }
                    var response = await answer(export, aio, request)
                    if request.verb == .status { response.daemon = info.withLock { $0 } }
                    return response
                }
                try await socket.start()
                controlServer = socket
                pidFile = try writePidFile(control.directory.pidFile(for: name))
            }
            for address in addresses {
                let bound = try await server.listen(on: address)
                announce(bound.uri(exportName: name, tls: tls != nil))
                info.withLock { $0.exports.append(bound.uri(exportName: name, tls: tls != nil)) }
            }
            if let metrics {
                let server = try await MetricsServer(host: metrics.host, port: metrics.port, group: group, registry: metrics.registry) {
                    metrics.sample(export)
                }
                metricsServer = server
                let url = "http://\(metrics.host.contains(":") ? "[\(metrics.host)]" : metrics.host):\(server.boundPort)/metrics"
                info.withLock { $0.metrics = url }
                logger.notice("serving Prometheus metrics", metadata: ["url": "\(url)"])
            }
            ready()
        } catch {
            await server.shutdown()
            await metricsServer?.shutdown()
            await controlServer?.shutdown()
            try? await export.close()
            await tearDown()
            throw error
        }

        if takeSignals { Task { stop.fire(.signal(await signals.wait())) } }
        let reason = await stop.wait()
        logger.info("stopping", metadata: ["reason": "\(reason)"])
        await server.shutdown()
        var failure: (any Error)?
        do { try await export.close() } catch { failure = error }
        let text = failure == nil ? report(export) : nil
        stop.finish(failure.map { ControlResponse.failure(name, "stop failed: \($0)") }
                    ?? ControlResponse(ok: true, name: name, message: text))
        await controlServer?.shutdown()
        await metricsServer?.shutdown()
        await tearDown()
        if let failure { throw failure }
        logger.info("stopped")
        return text
    }

    /// Writes this process's pid to `path` (0644, never through a symbolic link) and returns the path.
    private static func writePidFile(_ path: String) throws -> String {
        let fd = try PrivateFile.open(path, role: "pid file", flags: O_WRONLY | O_TRUNC, mode: 0o644)
        defer { fd.close() }
        let text = Array("\(getpid())\n".utf8)
        if case .failure(let error) = text.withUnsafeBytes({ fd.writeAll($0, at: 0) }) {
            throw DaemonError("cannot write the pid file \(path): \(error.description.lowercased())")
        }
        return path
    }
}
