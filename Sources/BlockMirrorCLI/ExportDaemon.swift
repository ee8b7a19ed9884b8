import BlockExport
import BlockIO
import Control
import Foundation
import Logging
import NBD
import NIOCore
import NIOPosix
import Prometheus

/// What every serving verb does around its export: set up libaio on the event loops, open the
/// export, listen and print the NBD URIs, serve until SIGINT/SIGTERM (or a `stop` request on the
/// control socket), then answer the requests in flight, close the export (which makes it durable)
/// and tear everything down.
enum ExportDaemon {
    /// A control socket for the daemon: where it lives, and how the export answers every verb but
    /// `stop` (which the daemon handles itself).
    struct Control<Export: BlockExport> {
        var directory: RuntimeDirectory
        var answer: @Sendable (_ export: Export, _ aio: AIOEngine, _ request: ControlRequest) async -> ControlResponse
    }

    /// Prometheus metrics for the daemon (`--metrics HOST:PORT`): request latencies, plus what
    /// `sample` records from the export before each scrape.
    struct Metrics<Export: BlockExport> {
        var host: String
        var port: Int
        /// The registry `MetricsServer.bootstrap()` made the backend.
        var registry: PrometheusCollectorRegistry
        var sample: @Sendable (Export) -> Void = { _ in }
    }

    /// Runs the daemon. `open` opens the devices and builds the export; `report` runs after the
    /// export closed cleanly and says what state it was left in (printed, and the answer to a
    /// `stop` request). Errors exit with status 1.
    static func run<Export: BlockExport>(
        name: String, listen addresses: [ListenAddress], limits: NBDServerLimits, logger: Logger, control: Control<Export>? = nil,
        metrics: Metrics<Export>? = nil, open: (AIOEngine) async throws -> Export, report: (Export) -> String? = { _ in nil }
    ) async throws {
        let aio: AIOEngine
        do { aio = try AIOEngine(depth: 512) } catch {
            throw exitWithError(CLIError("cannot set up libaio: \(error) (see /proc/sys/fs/aio-max-nr)"))
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
        signals.install()
        let info = Mutex(DaemonInfo(pid: getpid(), exports: [], started: ISO8601DateFormatter().string(from: Date()), backend: "engine"))
        let export: Export
        var controlServer: ControlServer?
        var metricsServer: MetricsServer?
        var pidFile: String?
        defer { if let pidFile { unlink(pidFile) } }
        do {
            try control?.directory.prepare()
            try await aio.bind(to: group)
            export = try await open(aio)
        } catch {
            await tearDown()
            throw exitWithError(error)
        }
        let server = NBDServer(registry: NBDExportRegistry([(name, export)]), group: group, logger: logger, limits: limits)
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
                print(bound.uri(exportName: name))
                info.withLock { $0.exports.append(bound.uri(exportName: name)) }
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
            fflush(nil)
            Daemonizer.detachStandardOutput()
        } catch {
            await server.shutdown()
            await metricsServer?.shutdown()
            await controlServer?.shutdown()
            try? await export.close()
            await tearDown()
            throw exitWithError(error)
        }

        Task { stop.fire(.signal(await signals.wait())) }
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
        if let failure { throw exitWithError(failure) }
        if let text { print(text) }
        logger.info("stopped")
    }

    /// Writes this process's pid to `path` (0644, never through a symbolic link) and returns the path.
    private static func writePidFile(_ path: String) throws -> String {
        let fd = try PrivateFile.open(path, role: "pid file", flags: O_WRONLY | O_TRUNC, mode: 0o644)
        defer { fd.close() }
        let text = Array("\(getpid())\n".utf8)
        if case .failure(let error) = text.withUnsafeBytes({ fd.writeAll($0, at: 0) }) {
            throw CLIError("cannot write the pid file \(path): \(error.description.lowercased())")
        }
        return path
    }
}
