import ArgumentParser
import BlockExport
import BlockIO
import Daemon
import NBD

/// `blockmirror serve PATH --listen …`: exports one file or block device over NBD, unchanged.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Export a file or block device over NBD (passthrough, O_DIRECT with libaio).",
        discussion: """
            Prints the NBD URI clients should use, then serves until SIGINT or SIGTERM, when it \
            answers the requests in flight, flushes the device and exits 0.
            """)

    @Argument(help: "The file or block device to export.")
    var path: String

    @Option(name: .long, help: "Where to listen: unix:PATH or tcp:HOST:PORT (repeatable; tcp port 0 picks a free port).")
    var listen: [String]

    @Option(name: .long, help: "Export name (the default name \"\" also reaches it).")
    var name: String = ""

    @Flag(name: .long, help: "Refuse writes.")
    var readonly = false

    @OptionGroup var serverLimits: ServerLimitsOptions
    @OptionGroup var serverTLS: ServerTLSOptions
    @OptionGroup var busyPoll: BusyPollOption
    @OptionGroup var metrics: MetricsOption
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard !listen.isEmpty else { throw ValidationError("--listen is required (unix:PATH or tcp:HOST:PORT)") }
        for value in listen { _ = try ListenAddress(parsing: value) }
        guard name.utf8.count <= 4096 else { throw ValidationError("--name is longer than 4096 bytes") }
    }

    func run() async throws {
        let logger = makeLogger(label: "blockmirror.serve", level: logging.logLevel.level)
        let addresses = try listen.map { value throws(ListenAddress.ParseError) in try ListenAddress(parsing: value) }
        let metricsSettings: ExportDaemon.Metrics<FileExport>? = try metrics.daemonMetrics()
        let tls = try attempt { try serverTLS.policy() }
        try await ExportDaemon.serve(name: name, listen: addresses, limits: serverLimits.limits, tls: tls, busyPoll: busyPoll, logger: logger, metrics: metricsSettings) { aio in
            let device = try BlockDevice.open(path: path, readOnly: readonly, aio: aio, logger: logger)
            logger.info("opened", metadata: ["device": "\(path)", "kind": "\(device.kind.rawValue)", "size": "\(device.size)",
                                             "direct": "\(device.isDirect)", "alignment": "\(device.alignment)"])
            return FileExport(device: device, pool: BufferPool())
        }
    }
}
