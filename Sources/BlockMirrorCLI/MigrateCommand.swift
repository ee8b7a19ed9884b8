import ArgumentParser
import Control
import Daemon
import Foundation
import MigrationPlan
#if canImport(Glibc)
import Glibc
#endif

/// `blockmirror migrate PLAN [--wait]`: a fleet migration from a TOML plan, every volume a mirror
/// of one daemon (`PlanDaemon`): all exported degraded first, then copied a few at a time within a
/// shared rate. Returns once every volume serves; run again after a reboot or a crash, it resumes
/// every volume from its bitmap.
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrate many volumes from a plan (TOML): one daemon, every volume exported at once, copies a few at a time within a shared rate.",
        discussion: """
            Every volume comes up degraded first, serving its source on its own export (point each VM at \
            it), then the copies start in priority order, at most `concurrency` at once, all together \
            within `speed_max` KiB/s (and their group's). Each volume is a mirror like `build` makes: \
            `status`, `add`, `fail`, `check`, `complete`, `stop` work on it by name; `status PLAN`, \
            `speed PLAN`, `wait PLAN` and `stop PLAN` on the whole plan. A volume that cannot start or \
            whose copy fails is reported, and the others go on. Run again after a reboot, a kill -9 or a \
            crash: every volume resumes from its bitmap (in the plan's state_dir). docs/PLAN.md lists the keys. \
            Exit status: 0 every volume serves (with --wait: is in sync); 1 a volume failed, or the plan \
            cannot run (its error names the volume and the key).
            """)

    @Argument(help: "The plan: a TOML file (docs/PLAN.md).") var plan: String
    @Flag(name: .long, help: "Return once every volume's copy is over: exit 0 if all are in sync, 1 if any failed.") var wait = false
    @Flag(name: .long, help: "Run the plan's daemon in the foreground, as systemd's Type=notify wants (READY=1 once every volume serves).")
    var foreground = false
    @OptionGroup var serverLimits: ServerLimitsOptions
    @OptionGroup var serverTLS: ServerTLSOptions
    @OptionGroup var busyPoll: BusyPollOption
    @OptionGroup var remote: RemoteLegOptions
    @OptionGroup var runtime: RuntimeOptions
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let parsed = try attempt { try readPlan() }
        if foreground || Daemonizer.isDetachedChild { return try await serve(parsed) }
        // The plan's log is NAME.plan.log: a mirror's log is NAME.log.
        let lines = try attempt { try Daemonizer.detach(name: parsed.name, logName: "\(parsed.name).plan", directory: runtime.directory) }
        let failures = lines.filter { $0.hasPrefix("blockmirror: error: ") }
        let served = lines.filter { line in parsed.volumes.contains { line.hasPrefix("\($0.name) ") } }
        for line in failures { FileHandle.standardError.write(Data((line + "\n").utf8)) }
        guard !served.isEmpty else {
            throw exitWithError(CLIError("plan \(parsed.name): no volume started (log: \(runtime.directory.logFile(for: "\(parsed.name).plan")))"))
        }
        for line in lines where !failures.contains(line) { print(line) }
        fflush(nil)
        if wait { return try PlanWaiter(plan: PlanHandle(name: parsed.name, directory: runtime.directory), interval: 1).run() }
        if !failures.isEmpty { throw ExitCode(1) }
    }

    /// The plan file: a regular file of at most 16 MiB of UTF-8 text, read without following it
    /// into a FIFO or a device.
    private func readPlan() throws -> MigrationPlan {
        let fd = open(plan, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw CLIError("cannot read the plan \(plan): \(String(cString: strerror(errno)).lowercased())") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw CLIError("cannot read the plan \(plan): not a regular file")
        }
        guard info.st_size <= 16 << 20 else { throw CLIError("cannot read the plan \(plan): \(info.st_size) bytes, more than a plan's 16 MiB") }
        let data: Data
        do { data = try handle.readToEnd() ?? Data() } catch {
            throw CLIError("cannot read the plan \(plan): \(error.localizedDescription)")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw CLIError("cannot read the plan \(plan): not UTF-8 text") }
        return try MigrationPlan(toml: text, file: plan)
    }

    /// The plan's daemon, in this process.
    private func serve(_ parsed: MigrationPlan) async throws {
        let logger = makeLogger(label: "blockmirror.migrate", level: logging.logLevel.level)
        let settings = PlanDaemon.Settings(directory: runtime.directory, planFile: absolutePath(plan), limits: serverLimits.limits,
                                           tls: try attempt { try serverTLS.policy() }, busyPoll: busyPoll.amount, remote: remote.options)
        let reports: [String]
        do {
            reports = try await PlanDaemon.run(plan: parsed, settings: settings, logger: logger, announce: { line in
                print(line)
                fflush(nil)
            }, ready: {
                fflush(nil)
                SystemdNotifier.ready(status: "plan \(parsed.name): serving")
                Daemonizer.detachStandardOutput()
            })
        } catch {
            throw exitWithError(error)
        }
        for report in reports { print(report) }
    }
}
