import BlockExport
import BlockIO
import Control
import Foundation
import Logging
import NBD
import NIOCore

/// One export a daemon serves, with what belongs to it alone: its NBD listeners, its control
/// socket and pid file in the runtime directory, its Prometheus endpoint, and what stops it (a
/// `stop` request on its socket; the process's signals are the daemon's). `ExportDaemon` runs one;
/// a plan's daemon runs one per volume on the same `DaemonRuntime`.
final class ExportService<Export: BlockExport>: @unchecked Sendable {
    let name: String
    let export: Export
    /// Fired by a `stop` request on the control socket (or by the daemon); the requester gets the
    /// final report once `finish` has closed the export.
    let stop = StopTrigger()
    /// The process goes on after this export stops (a plan's volume): the answer to `stop` says
    /// so, and the client does not wait for the process to exit.
    var staysRunning = false
    private let runtime: DaemonRuntime
    private let server: NBDServer
    private let logger: Logger
    private let info: Mutex<DaemonInfo>
    private let tls: NBDServerTLSPolicy?
    // Set by `start`, read by `finish` and `abandon`: the daemon calls them one after the other.
    private var controlServer: ControlServer?
    private var metricsServer: MetricsServer?
    private var pidFile: String?

    /// `shared`: the NBD limits this export's server shares with the process's others (nil: its own).
    init(name: String, export: Export, runtime: DaemonRuntime, limits: NBDServerLimits, tls: NBDServerTLSPolicy?, logger: Logger,
         shared: NBDServer.SharedLimits? = nil) {
        self.name = name
        self.export = export
        self.runtime = runtime
        self.logger = logger
        self.tls = tls
        server = NBDServer(registry: NBDExportRegistry([(name, export)]), group: runtime.group, logger: logger, limits: limits, tls: tls,
                           busyPolling: runtime.busyPolling, shared: shared)
        info = Mutex(DaemonInfo(pid: getpid(), exports: [], started: ISO8601DateFormatter().string(from: Date()), backend: "engine"))
    }

    /// The NBD URIs clients use (once `start` announced them).
    var exports: [String] { info.withLock { $0.exports } }

    /// Serves: the control socket and pid file first (a second daemon of the same name is refused
    /// before it listens), then every address (each URI given to `announce`), then metrics. Throws
    /// with nothing left running but the export: call `abandon` then.
    func start(addresses: [ListenAddress], control: ExportDaemon.Control<Export>?, metrics: ExportDaemon.Metrics<Export>?,
               announce: (String) -> Void) async throws {
        if let control {
            let answer = control.answer
            let socket = ControlServer(path: control.directory.controlSocket(for: name), name: name, group: runtime.group,
                                       logger: logger) { [self] request in
                guard request.verb != .stop else { return await stop.request() }
                var response = await answer(export, runtime.aio, request)
                if request.verb == .status { response.daemon = info.withLock { $0 } }
                return response
            }
            try await socket.start()
            controlServer = socket
            pidFile = try Self.writePidFile(control.directory.pidFile(for: name))
        }
        for address in addresses {
            let bound = try await server.listen(on: address)
            let uri = bound.uri(exportName: name, tls: tls != nil)
            announce(uri)
            info.withLock { $0.exports.append(uri) }
        }
        if let metrics {
            let export = self.export
            let server = try await MetricsServer(host: metrics.host, port: metrics.port, group: runtime.group, registry: metrics.registry) {
                metrics.sample(export)
            }
            metricsServer = server
            let url = "http://\(metrics.host.contains(":") ? "[\(metrics.host)]" : metrics.host):\(server.boundPort)/metrics"
            info.withLock { $0.metrics = url }
            logger.notice("serving Prometheus metrics", metadata: ["url": "\(url)"])
        }
    }

    /// Stops serving: no new connection, the requests in flight answered, the export closed (which
    /// makes it durable), the final report (`report`, only after a clean close) handed to every
    /// `stop` requester; then the control socket and metrics go. Throws what closing the export threw.
    func finish(report: (Export) -> String?) async throws -> String? {
        await server.shutdown()
        var failure: (any Error)?
        do { try await export.close() } catch { failure = error }
        let text = failure == nil ? report(export) : nil
        var response = failure.map { ControlResponse.failure(name, "stop failed: \($0)") } ?? ControlResponse(ok: true, name: name, message: text)
        if staysRunning { response.staysRunning = true }
        stop.finish(response)
        await controlServer?.shutdown()
        await metricsServer?.shutdown()
        removePidFile()
        if let failure { throw failure }
        return text
    }

    /// Tears down what a failed `start` set up, and closes the export.
    func abandon() async {
        await server.shutdown()
        await metricsServer?.shutdown()
        await controlServer?.shutdown()
        try? await export.close()
        removePidFile()
    }

    private func removePidFile() {
        if let pidFile { unlink(pidFile) }
        pidFile = nil
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
