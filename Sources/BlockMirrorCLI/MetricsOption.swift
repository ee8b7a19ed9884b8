import ArgumentParser
import BlockExport
import Daemon
import NBD
import Prometheus

/// `--metrics HOST:PORT`: serve Prometheus metrics over HTTP (off by default).
struct MetricsOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free port).",
                                            valueName: "HOST:PORT"))
    var metrics: String?

    func validate() throws {
        _ = try endpoint()
    }

    /// The host and port, nil without `--metrics`.
    func endpoint() throws -> (host: String, port: Int)? {
        guard let metrics else { return nil }
        guard case let .tcp(host, port) = try? ListenAddress(parsing: "tcp:" + metrics) else {
            throw ValidationError("--metrics wants HOST:PORT (e.g. 127.0.0.1:9100), got \(metrics)")
        }
        return (host, port)
    }

    /// Without `--metrics`, nil. With it: makes Prometheus the process's metrics backend (before
    /// anything creates a metric) and returns the daemon's settings; set `sample` to record figures
    /// from the export before each scrape.
    func daemonMetrics<Export: BlockExport>() throws -> ExportDaemon.Metrics<Export>? {
        try endpoint().map { ExportDaemon.Metrics(host: $0.host, port: $0.port, registry: MetricsServer.bootstrap()) }
    }
}
