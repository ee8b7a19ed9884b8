import BlockIO
import Control
import Foundation
import Logging
import MigrationPlan
import Mirror
import MirrorModel
import NBD
import NIOCore

/// A fleet migration in one process (`blockmirror migrate PLAN`): every volume of a
/// `MigrationPlan` served as a mirror of its own — its NBD export, its control socket (so every
/// verb works on it by name), its bitmap — on one `DaemonRuntime`, the copies started in the
/// plan's order at most `concurrency` at once and paced within the plan's and their group's
/// shared rates (`CopyBudget`).
///
/// Every volume comes up degraded first, serving its source, so that each VM can be pointed at its
/// export before any copy starts; `ready` is called then. A volume that cannot start, or whose
/// copy fails, is reported and the others go on. Run again after a reboot, a kill -9 or a crash,
/// each volume resumes from its bitmap: no region it recorded clean is copied again. The plan has
/// a control socket of its own (`RuntimeDirectory.planSocket`): `status` (every volume and its
/// phase), `speed` (the shared rate, live) and `stop` (every volume). Stopping every volume on
/// its own ends the process too.
public enum PlanDaemon {
    /// How the volumes are served: what `migrate` shares with `build`.
    public struct Settings: Sendable {
        public var directory: RuntimeDirectory
        /// The plan file, as status shows it.
        public var planFile: String
        public var limits: NBDServerLimits
        public var tls: NBDServerTLSPolicy?
        public var busyPoll: TimeAmount
        public var remote: NBDLeg.Options

        public init(directory: RuntimeDirectory, planFile: String, limits: NBDServerLimits = NBDServerLimits(), tls: NBDServerTLSPolicy? = nil,
                    busyPoll: TimeAmount = .zero, remote: NBDLeg.Options = NBDLeg.Options()) {
            self.directory = directory; self.planFile = planFile; self.limits = limits; self.tls = tls
            self.busyPoll = busyPoll; self.remote = remote
        }
    }

    /// Runs `plan` until SIGINT/SIGTERM (with `takeSignals`), a `stop` of the plan, or every
    /// volume stopped on its own; returns each volume's final report. Lines for people go to
    /// `announce`: each volume's NBD URI (`NAME URI`), and why a volume did not start
    /// (`blockmirror: error: …`). Throws only what stops the plan as a whole (its control socket
    /// taken by a running plan, libaio missing).
    public static func run(plan: MigrationPlan, settings: Settings, logger: Logger, takeSignals: Bool = true,
                           announce: @escaping @Sendable (String) -> Void, ready: () -> Void = {}) async throws -> [String] {
        let signals = SignalWaiter()
        if takeSignals { signals.install() }
        try settings.directory.prepare()
        let runtime = try await DaemonRuntime.start(busyPoll: settings.busyPoll)
        let run = PlanRun(plan: plan, settings: settings, runtime: runtime, logger: logger, announce: announce)
        do { try await run.startControlSocket() } catch {
            await runtime.shutdown()
            throw error
        }
        await run.startVolumes()
        ready()
        if run.startedNone { run.stop.fire(.request) }
        run.startCopies()
        if takeSignals { Task { run.stop.fire(.signal(await signals.wait())) } }
        let reason = await run.stop.wait()
        logger.info("stopping the plan", metadata: ["reason": "\(reason)"])
        let reports = await run.stopVolumes()
        run.stop.finish(ControlResponse(ok: true, name: plan.name, message: reports.joined(separator: "\n")))
        await run.stopControlSocket()
        await runtime.shutdown()
        logger.info("plan stopped")
        return reports
    }
}

/// One run of a plan: its volumes' services, the scheduler, the shared rates.
private final class PlanRun: @unchecked Sendable {
    let plan: MigrationPlan
    let settings: PlanDaemon.Settings
    let logger: Logger
    let announce: @Sendable (String) -> Void
    /// Fired by a signal, a `stop` of the plan, or the last volume stopped on its own.
    let stop = StopTrigger()
    let total: CopyBudget
    let groupBudgets: [String: CopyBudget]
    let runtime: DaemonRuntime
    private let scheduler: Mutex<PlanScheduler>
    /// The volumes that started, by name.
    private let volumes = Mutex<[String: Volume]>([:])
    /// Each started volume's end: its final report (set once every volume started).
    private var ended: [String: Task<String?, Never>] = [:]
    private var controlServer: ControlServer?

    /// A started volume: its settings (for its report) and its service.
    struct Volume: Sendable {
        let plan: MigrationPlan.Volume
        let daemon: MirrorDaemon
        let service: ExportService<MirrorExport>
    }

    init(plan: MigrationPlan, settings: PlanDaemon.Settings, runtime: DaemonRuntime, logger: Logger,
         announce: @escaping @Sendable (String) -> Void) {
        self.plan = plan
        self.settings = settings
        self.runtime = runtime
        self.logger = logger
        self.announce = announce
        total = CopyBudget(name: "plan \(plan.name)", maximum: plan.speedMax)
        groupBudgets = Dictionary(uniqueKeysWithValues: plan.groups.map { ($0.name, CopyBudget(name: "group \($0.name)", maximum: $0.speedMax)) })
        scheduler = Mutex(PlanScheduler(order: plan.copyOrder.map(\.name), concurrency: plan.concurrency))
    }

    // MARK: The plan's control socket

    /// Listens on the plan's socket; refused if the plan runs already.
    func startControlSocket() async throws {
        let server = ControlServer(path: settings.directory.planSocket(for: plan.name), name: plan.name, group: runtime.group,
                                   logger: logger) { [self] request in await answer(request) }
        try await server.start()
        controlServer = server
    }

    func stopControlSocket() async {
        await controlServer?.shutdown()
    }

    private func answer(_ request: ControlRequest) async -> ControlResponse {
        switch request.verb {
        case .status:
            return ControlResponse(ok: true, name: plan.name, plan: status())
        case .speed:
            if let maximum = request.speedMax { total.maximum = maximum == 0 ? nil : maximum }
            if let minimum = request.speedMin {
                for volume in started() {
                    var limits = volume.service.export.status.speedLimits
                    limits.minimum = minimum
                    volume.service.export.setSpeedLimits(limits)
                }
            }
            let minimum = request.speedMin.map { "; every volume's min \($0)K/sec" } ?? ""
            return ControlResponse(ok: true, name: plan.name, message: "plan \(plan.name): copies together at most "
                                   + (total.maximum.map { "\($0)K/sec" } ?? "unlimited") + minimum, plan: status())
        case .stop:
            return await stop.request()
        default:
            let names = plan.volumes.map(\.name).joined(separator: ", ")
            return .failure(plan.name, "\(plan.name) is a plan: \(request.verb.rawValue) one of its volumes (\(names))")
        }
    }

    /// Every volume's phase and status.
    func status() -> PlanStatus {
        let scheduler = self.scheduler.withLock { $0 }
        let volumes = self.volumes.withLock { $0 }
        var entries = plan.volumes.map { volume in
            PlanStatus.Volume(name: volume.name, phase: scheduler.phases[volume.name] ?? .failed, error: scheduler.errors[volume.name],
                              status: volumes[volume.name]?.service.export.status)
        }
        entries += plan.rejected.map { PlanStatus.Volume(name: $0.volume ?? "#\($0.index)", phase: .failed, error: $0.reason) }
        return PlanStatus(name: plan.name, plan: settings.planFile, concurrency: plan.concurrency, peakCopying: scheduler.peakCopying,
                          speedMax: total.maximum, volumes: entries)
    }

    /// No volume started: the plan has nothing to serve.
    var startedNone: Bool { volumes.withLock { $0.isEmpty } }

    private func started() -> [Volume] {
        let volumes = self.volumes.withLock { $0 }
        return plan.volumes.compactMap { volumes[$0.name] }
    }

    // MARK: Volumes

    /// Opens and exports every volume degraded, in the plan's order; one that cannot start is
    /// reported and left out.
    func startVolumes() async {
        for rejected in plan.rejected { announce("blockmirror: error: plan \(plan.name): \(rejected)") }
        for volume in plan.volumes {
            do {
                try makeDirectory(for: volume.bitmap)
                let started = try await start(volume)
                volumes.withLock { $0[volume.name] = started }
                scheduler.withLock { $0.served(volume.name) }
            } catch {
                let reason = "cannot start: \(error)"
                scheduler.withLock { $0.failed(volume.name, reason) }
                logger.error("volume \(volume.name): \(reason)")
                announce("blockmirror: error: plan \(plan.name): volume \"\(volume.name)\": \(reason)")
            }
        }
        ended = Dictionary(uniqueKeysWithValues: started().map { volume in (volume.plan.name, Task { await self.whenStopped(volume) }) })
    }

    private func start(_ volume: MigrationPlan.Volume) async throws -> Volume {
        var volumeLogger = logger
        volumeLogger[metadataKey: "volume"] = "\(volume.name)"
        let daemon = MirrorDaemon(name: volume.name, source: volume.source, target: nil, bitmap: volume.bitmap, regionSize: nil,
                                  verifyClean: false, limits: SpeedLimits(minimum: volume.speedMin, maximum: volume.speedMax),
                                  budgets: [total] + (volume.group.flatMap { groupBudgets[$0] }.map { [$0] } ?? []), remote: settings.remote)
        let mirror = try await daemon.open(aio: runtime.aio, logger: volumeLogger)
        let service = ExportService(name: volume.name, export: mirror, runtime: runtime, limits: settings.limits, tls: settings.tls,
                                    logger: volumeLogger)
        service.staysRunning = true
        let (remote, answerLogger) = (settings.remote, volumeLogger)
        let control = ExportDaemon.Control<MirrorExport>(directory: settings.directory) { mirror, aio, request in
            await MirrorControl.answer(request, name: volume.name, mirror: mirror, aio: aio, remote: remote, logger: answerLogger)
        }
        do {
            let addresses = try volume.listen.map { text throws(ListenAddress.ParseError) in try ListenAddress(parsing: text) }
            try await service.start(addresses: addresses, control: control, metrics: nil) { [announce] uri in announce("\(volume.name) \(uri)") }
        } catch {
            await service.abandon()
            throw error
        }
        return Volume(plan: volume, daemon: daemon, service: service)
    }

    /// Creates the directory of a bitmap file if it is missing (the plan's state directory, 0700).
    private func makeDirectory(for file: String) throws {
        let directory = (file as NSString).deletingLastPathComponent
        guard !FileManager.default.fileExists(atPath: directory) else { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw DaemonError("cannot create the state directory \(directory): \(error.localizedDescription)")
        }
    }

    // MARK: Copies

    /// Starts the copies the scheduler lets start now.
    func startCopies() {
        for name in scheduler.withLock({ $0.next() }) {
            Task { await copy(name) }
        }
    }

    /// Attaches a volume's target (unless one was added by hand meanwhile) and waits for its copy
    /// to end; then the next copies start.
    private func copy(_ name: String) async {
        guard let volume = volumes.withLock({ $0[name] }) else { return }
        let mirror = volume.service.export
        if mirror.status.target == nil {
            do {
                let regions = try await MirrorDaemon.attachTarget(volume.plan.target, to: mirror, aio: runtime.aio, remote: settings.remote,
                                                                  logger: logger)
                logger.notice("volume \(name): copy started onto \(volume.plan.target) (\(regions) regions to copy)")
            } catch {
                fail(name, "cannot attach its target \(volume.plan.target): \(error)")
                return startCopies()
            }
        }
        let settled = await mirror.waitUntilSettled()
        if settled.state == .inSync {
            scheduler.withLock { $0.inSync(name) }
            logger.notice("volume \(name): in sync")
        } else {
            fail(name, "its copy ended \(settled.state.rawValue)" + (settled.failure.map { ": \($0)" } ?? ""))
        }
        startCopies()
    }

    private func fail(_ name: String, _ reason: String) {
        scheduler.withLock { $0.failed(name, reason) }
        logger.error("volume \(name): \(reason)")
    }

    // MARK: Stopping

    /// Ends a volume once a `stop` of it (or of the plan) fired: its export closed and its report
    /// returned; the plan stops with its last volume.
    private func whenStopped(_ volume: Volume) async -> String? {
        let name = volume.plan.name
        _ = await volume.service.stop.wait()
        let report = try? await volume.service.finish { volume.daemon.report($0.status) }
        let names = volumes.withLock { Array($0.keys) }
        let last = scheduler.withLock { scheduler -> Bool in
            scheduler.stopped(name)
            return names.allSatisfy { scheduler.phases[$0] == .stopped }
        }
        startCopies()
        if last { stop.fire(.request) }
        return report ?? "\(name): stop failed (see the log)"
    }

    /// Stops every volume still serving and returns every volume's final report.
    func stopVolumes() async -> [String] {
        for volume in started() { volume.service.stop.fire(.request) }
        var reports: [String] = []
        for volume in started() {
            if let report = await ended[volume.plan.name]?.value { reports.append(report) }
        }
        return reports
    }
}
