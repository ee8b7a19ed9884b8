import ArgumentParser
import BlockExport
import BlockIO
import Control
import Daemon
import Foundation
import Logging
import MDBackend
import Mirror
import MirrorModel
import NBD

/// `blockmirror build NAME --source OLD --target NEW|missing --listen …`: runs a mirror in the
/// foreground (like `mdadm --build … OLD missing`), exported over NBD.
struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Run a mirror of OLD onto NEW (or degraded on OLD with --target missing), exported over NBD.",
        discussion: """
            Reads come from the source; every write goes to both; a background copy fills the \
            target. With --bitmap, a write-intent bitmap file lets a restart resume the copy instead \
            of starting over. On SIGINT/SIGTERM the mirror drains, flushes both devices, saves the \
            bitmap and says whether the target is a complete copy.
            """)

    @Argument(help: "The mirror's name (its NBD export name).")
    var name: String

    @Option(name: .long, help: "The source (OLD): a device, an image or an NBD URI; the copy every read comes from.")
    var source: String

    @Option(name: .long, help: ArgumentHelp(
        "The target (NEW): a device, an image or an NBD URI, or \"missing\" to start degraded.",
        discussion: "NBD URIs as libnbd and qemu spell them: nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH."))
    var target: String

    @Option(name: .long, help: "Where to listen: unix:PATH or tcp:HOST:PORT (repeatable).")
    var listen: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Write-intent bitmap file: created if absent, resumed from if present (also by a degraded run, which then records what NEW will lack).",
        discussion: "A bitmap is trusted only for the legs it was written for, unless something shows they were written outside the mirror since; otherwise every region is copied, and the log says why."))
    var bitmap: String?

    @Option(name: .long, help: "Bytes per bitmap region (a power of two, at least 4K; default 1M, or the bitmap file's).")
    var regionSize: ByteSize?

    @Flag(name: .long, help: "When resuming from a bitmap, compare the regions it calls clean before trusting them (reads both legs; copies only what differs).")
    var verifyClean = false

    @Option(name: .long, help: "KiB/s the background copy keeps even while clients do I/O (md's speed_limit_min).")
    var speedMin: UInt64 = SpeedLimits().minimum

    @Option(name: .long, help: "KiB/s the background copy never exceeds (md's speed_limit_max); default: unlimited.")
    var speedMax: UInt64?

    @Option(name: .long, help: ArgumentHelp(
        "Regions the background copy keeps in flight (each --region-size large); a quarter of them while clients do I/O.",
        discussion: "4 copied as fast as dd on one disk here, 8 and 16 were 15% slower; an array of many disks may want more.",
        valueName: "N"))
    var copyDepth: Int = MirrorExport.defaultCopiesInFlight

    @Flag(name: .long, help: "Run in the background: print the NBD URI and return once serving (log in RUNDIR/NAME.log).")
    var daemon = false

    @OptionGroup var remote: RemoteLegOptions
    @OptionGroup var serverLimits: ServerLimitsOptions
    @OptionGroup var serverTLS: ServerTLSOptions
    @OptionGroup var busyPoll: BusyPollOption
    @OptionGroup var metrics: MetricsOption
    @OptionGroup var runtime: RuntimeOptions
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if runtime.backend == .md {
            // Kernel md: the array itself is the block device clients use; the engine's options do not apply.
            let engineOnly = [("--listen", !listen.isEmpty), ("--bitmap", bitmap != nil), ("--daemon", daemon),
                              ("--metrics", metrics.metrics != nil), ("--speed-max", speedMax != nil), ("--tls", serverTLS.tls != .off)]
            if let (option, _) = engineOnly.first(where: { $0.1 }) {
                throw ValidationError("\(option) is for the engine backend; with --backend md the array is /dev/NAME")
            }
            return
        }
        guard !listen.isEmpty else { throw ValidationError("--listen is required (unix:PATH or tcp:HOST:PORT)") }
        for value in listen { _ = try ListenAddress(parsing: value) }
        if let size = regionSize?.bytes, size < 4096 || size & (size - 1) != 0 {
            throw ValidationError("--region-size must be a power of two of at least 4K (got \(size) bytes)")
        }
        do { try RuntimeDirectory.validate(name: name) } catch { throw ValidationError(error.description) }
        guard (1...64).contains(copyDepth) else { throw ValidationError("--copy-depth must be from 1 to 64 (got \(copyDepth))") }
        if let speedMax, speedMax < speedMin {
            throw ValidationError("--speed-max (\(speedMax)K) is below --speed-min (\(speedMin)K)")
        }
        guard source != target else { throw ValidationError("--source and --target are the same path (\(source))") }
    }

    func run() async throws {
        if runtime.backend == .md {
            try attempt {
                if let uri = [source, target].first(where: NBDURI.isURI) { throw CLIError(MDMirror.noURIs(uri)) }
                let array = try MDArray(name)
                try array.build(source: absolutePath(self.source), target: target == "missing" ? nil : absolutePath(target))
                print(array.device)
                print("\(name): built (mdadm --build, RAID1 without superblock) on \(absolutePath(self.source))"
                      + (target == "missing" ? ", degraded: add a target with blockmirror add \(name) NEW" : ", recovery onto \(absolutePath(target)) started"))
            }
            return
        }
        if daemon {
            do {
                for line in try Daemonizer.detach(name: name, directory: runtime.directory) { print(line) }
            } catch {
                throw exitWithError(error)
            }
            return
        }
        let logger = makeLogger(label: "blockmirror.build", level: logging.logLevel.level)
        let addresses = try listen.map { value throws(ListenAddress.ParseError) in try ListenAddress(parsing: value) }
        // Absolute paths: the bitmap file records them, and status shows them.
        let settings = MirrorDaemon(name: name, source: try legName(source), target: target == "missing" ? nil : try legName(target),
                                    bitmap: bitmap, regionSize: regionSize?.bytes, verifyClean: verifyClean,
                                    limits: SpeedLimits(minimum: speedMin, maximum: speedMax), copiesInFlight: copyDepth,
                                    remote: remote.options)
        let control = ExportDaemon.Control<MirrorExport>(directory: runtime.directory) { [name] mirror, aio, request in
            await MirrorControl.answer(request, name: name, mirror: mirror, aio: aio, remote: settings.remote, logger: logger)
        }
        var metricsSettings: ExportDaemon.Metrics<MirrorExport>? = try metrics.daemonMetrics()
        if metricsSettings != nil {
            let mirrorMetrics = MirrorMetrics(name: name)
            metricsSettings?.sample = { mirrorMetrics.update(from: $0.status) }
        }
        let tls = try attempt { try serverTLS.policy() }
        try await ExportDaemon.serve(name: name, listen: addresses, limits: serverLimits.limits, tls: tls, busyPoll: busyPoll, logger: logger, control: control,
                                     metrics: metricsSettings, open: { aio in try await settings.open(aio: aio, logger: logger) },
                                     report: { settings.report($0.status) })
    }
}
