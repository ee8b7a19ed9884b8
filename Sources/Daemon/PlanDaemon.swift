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
/// plan's order at most `concurrency` at once (`PlanScheduler`, asked every quarter second with
/// every volume's live state) and paced within the plan's and their group's shared rates
/// (`CopyBudget`); the NBD limits hold for the process (`NBDServer.SharedLimits`).
///
/// Every volume comes up degraded first, all at once, serving its source, so that each VM can be
/// pointed at its export before any copy starts; `ready` is called then. A volume that cannot
/// start, or whose target cannot be attached or fails, is reported and the others go on. Run
/// again after a reboot, a kill -9 or a crash, each volume resumes from its bitmap: one whose
/// target has nothing to copy is attached at once (in sync again without waiting for a slot), the
/// others copy in their turn what their files recorded dirty, and one that `complete` switched
/// serves its new storage. The plan has a control socket of its own
/// (`RuntimeDirectory.planSocket`): `status` (every volume and its phase), `speed` (the shared
/// rate, live) and `stop` (every volume). Stopping every volume on its own ends the process too.
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
    /// (`blockmirror: error: …`). Throws what stops the plan as a whole: its control socket taken
    /// by a running plan, its name a running mirror's, libaio missing, or no volume that started.
    public static func run(plan: MigrationPlan, settings: Settings, logger: Logger, takeSignals: Bool = true,
                           announce: @escaping @Sendable (String) -> Void, ready: () -> Void = {}) async throws -> [String] {
        let signals = SignalWaiter()
        if takeSignals { signals.install() }
        try settings.directory.prepare()
        if UnixSocket.state(of: settings.directory.controlSocket(for: plan.name)) == .live {
            throw DaemonError("a mirror named \(plan.name) runs already (\(settings.directory.controlSocket(for: plan.name))): "
                              + "name the plan otherwise (its \"name\" key)")
        }
        let runtime = try await DaemonRuntime.start(busyPoll: settings.busyPoll)
        let run = PlanRun(plan: plan, settings: settings, runtime: runtime, logger: logger, announce: announce)
        do { try await run.startControlSocket() } catch {
            await runtime.shutdown()
            throw error
        }
        if takeSignals { Task { run.stop.fire(.signal(await signals.wait())) } }
        await run.startVolumes()
        ready()
        let scheduling = Task { await run.schedule() }
        let reason = await run.stop.wait()
        SystemdNotifier.stopping()
        logger.info("stopping the plan", metadata: ["reason": "\(reason)"])
        scheduling.cancel()
        let reports = await run.stopVolumes()
        run.stop.finish(ControlResponse(ok: true, name: plan.name, message: reports.joined(separator: "\n")))
        await run.stopControlSocket()
        await runtime.shutdown()
        logger.info("plan stopped")
        guard !run.startedNone else { throw DaemonError("plan \(plan.name): no volume started") }
        return reports
    }
}

/// One run of a plan: its volumes' services, the scheduler, the shared rates.
private final class PlanRun: @unchecked Sendable {
    let plan: MigrationPlan
    let settings: PlanDaemon.Settings
    let runtime: DaemonRuntime
    let logger: Logger
    let announce: @Sendable (String) -> Void
    /// Fired by a signal, a `stop` of the plan, or the last volume stopped on its own.
    let stop = StopTrigger()
    let total: CopyBudget
    let groupBudgets: [String: CopyBudget]
    /// The NBD limits every volume's server shares.
    let shared: NBDServer.SharedLimits
    private let scheduler: Mutex<PlanScheduler>
    /// The volumes serving, by name; why each of the others could not start; those stopped.
    private let volumes = Mutex<(serving: [String: Volume], failed: [String: String], stopped: Set<String>)>(([:], [:], []))
    /// Each started volume's end: its final report (set once every volume started).
    private var ended: [String: Task<String?, Never>] = [:]
    private var controlServer: ControlServer?
    /// How often the scheduler looks at the volumes.
    private static let tick: UInt64 = 250_000_000

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
        shared = NBDServer.SharedLimits(settings.limits)
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
            return speed(minimum: request.speedMin, maximum: request.speedMax)
        case .stop:
            return await stop.request()
        default:
            let names = plan.volumes.map(\.name).joined(separator: ", ")
            return .failure(plan.name, "\(plan.name) is a plan: \(request.verb.rawValue) one of its volumes (\(names))")
        }
    }

    /// `speed PLAN`: the shared rate (0: unlimited) and every serving volume's minimum (refused
    /// whole if it is above a volume's own maximum).
    private func speed(minimum: UInt64?, maximum: UInt64?) -> ControlResponse {
        let serving = servingVolumes()
        if let minimum, let over = serving.first(where: { ($0.service.export.status.speedLimits.maximum ?? .max) < minimum }) {
            let own = over.service.export.status.speedLimits.maximum ?? 0
            return .failure(plan.name, "speed min \(minimum)K/sec would be above volume \(over.plan.name)'s own max \(own)K/sec")
        }
        if let maximum { total.maximum = maximum == 0 ? nil : maximum }
        if let minimum {
            for volume in serving {
                var limits = volume.service.export.status.speedLimits
                limits.minimum = minimum
                volume.service.export.setSpeedLimits(limits)
            }
        }
        let minimumText = minimum.map { "; every volume's min \($0)K/sec" } ?? ""
        return ControlResponse(ok: true, name: plan.name, message: "plan \(plan.name): copies together at most "
                               + (total.maximum.map { "\($0)K/sec" } ?? "unlimited") + minimumText, plan: status())
    }

    /// What the scheduler is told of every volume now.
    private func live() -> [String: PlanScheduler.Live] {
        let (serving, failed, stopped) = volumes.withLock { ($0.serving, $0.failed, $0.stopped) }
        return Dictionary(uniqueKeysWithValues: plan.volumes.map { volume in
            (volume.name, Self.live(serving[volume.name], failed: failed[volume.name], stopped: stopped.contains(volume.name)))
        })
    }

    /// What the scheduler is told of one volume now.
    private func live(_ name: String) -> PlanScheduler.Live {
        let (serving, failed, stopped) = volumes.withLock { ($0.serving[name], $0.failed[name], $0.stopped.contains(name)) }
        return Self.live(serving, failed: failed, stopped: stopped)
    }

    /// A volume's live state from what the plan holds of it (its mirror's status read outside the lock).
    private static func live(_ serving: Volume?, failed: String?, stopped: Bool) -> PlanScheduler.Live {
        if stopped { return .stopped }
        if let failed { return .failedToStart(failed) }
        guard let serving else { return .starting }
        let status = serving.service.export.status
        return .serving(status.state, switched: status.switched != nil, failure: status.failure)
    }

    /// Every volume's phase and status; the volumes the plan refused after them, named apart
    /// from an accepted volume of the same name.
    func status() -> PlanStatus {
        let live = live()
        let scheduler = self.scheduler.withLock { $0 }
        let serving = volumes.withLock { $0.serving }
        var entries = plan.volumes.map { volume in
            let now = live[volume.name] ?? .starting
            return PlanStatus.Volume(name: volume.name, phase: scheduler.phase(volume.name, now), error: scheduler.error(volume.name, now),
                                     status: serving[volume.name]?.service.export.status)
        }
        let accepted = Set(plan.volumes.map(\.name))
        entries += plan.rejected.map { rejected in
            let name = rejected.volume.map { accepted.contains($0) ? "\($0)#\(rejected.index)" : $0 } ?? "#\(rejected.index)"
            return PlanStatus.Volume(name: name, phase: .failed, error: rejected.reason)
        }
        return PlanStatus(name: plan.name, plan: settings.planFile, concurrency: plan.concurrency, peakCopying: scheduler.peakCopying,
                          speedMax: total.maximum, volumes: entries)
    }

    private func servingVolumes() -> [Volume] {
        let serving = volumes.withLock { $0.serving }
        return plan.volumes.compactMap { serving[$0.name] }
    }

    /// No volume started: the plan has nothing to serve.
    var startedNone: Bool { volumes.withLock { $0.serving.isEmpty && $0.stopped.isEmpty } }

    // MARK: Volumes

    /// Opens and exports every volume degraded, all at once; one that cannot start is reported
    /// and left out. A stop requested meanwhile leaves the volumes not yet started out.
    func startVolumes() async {
        for rejected in plan.rejected { announce("blockmirror: error: plan \(plan.name): \(rejected)") }
        await withTaskGroup(of: Void.self) { group in
            for volume in plan.volumes {
                group.addTask { [self] in
                    do {
                        guard !stop.fired else { throw DaemonError("the plan is stopping") }
                        let started = try await start(volume)
                        volumes.withLock { $0.serving[volume.name] = started }
                    } catch {
                        let reason = "cannot start: \(error)"
                        volumes.withLock { $0.failed[volume.name] = reason }
                        logger.error("volume \(volume.name): \(reason)")
                        announce("blockmirror: error: plan \(plan.name): volume \"\(volume.name)\": \(reason)")
                    }
                }
            }
        }
        let started = servingVolumes()
        ended = Dictionary(uniqueKeysWithValues: started.map { volume in (volume.plan.name, Task { await self.whenStopped(volume) }) })
        if started.isEmpty { stop.fire(.request) }
    }

    private func start(_ volume: MigrationPlan.Volume) async throws -> Volume {
        var volumeLogger = logger
        volumeLogger[metadataKey: "volume"] = "\(volume.name)"
        try makeDirectory(for: volume.bitmap)
        // A bitmap of an earlier run: its record may say `complete` switched the roles; given the
        // target too (as `build`'s command line would), the volume then serves the leg it names.
        let resuming = FileManager.default.fileExists(atPath: volume.bitmap)
        let switched = resuming && (try? WriteIntentLog.examine(path: volume.bitmap).header.record.switched) != nil
        let daemon = MirrorDaemon(name: volume.name, source: volume.source, target: switched ? volume.target : nil, bitmap: volume.bitmap,
                                  regionSize: nil, verifyClean: false, limits: SpeedLimits(minimum: volume.speedMin, maximum: volume.speedMax),
                                  budgets: [total] + (volume.group.flatMap { groupBudgets[$0] }.map { [$0] } ?? []), remote: settings.remote)
        let mirror = try await daemon.open(aio: runtime.aio, logger: volumeLogger)
        let service = ExportService(name: volume.name, export: mirror, runtime: runtime, limits: settings.limits, tls: settings.tls,
                                    logger: volumeLogger, shared: shared)
        service.staysRunning = true
        let (remote, answerLogger) = (settings.remote, volumeLogger)
        let control = ExportDaemon.Control<MirrorExport>(directory: settings.directory) { [self] mirror, aio, request in
            var response = await MirrorControl.answer(request, name: volume.name, mirror: mirror, aio: aio, remote: remote, logger: answerLogger)
            response.status?.pendingCopy = pendingCopy(of: volume)
            return response
        }
        do {
            let addresses = try volume.listen.map { text throws(ListenAddress.ParseError) in try ListenAddress(parsing: text) }
            try await service.start(addresses: addresses, control: control, metrics: nil) { [announce] uri in announce("\(volume.name) \(uri)") }
        } catch {
            await service.abandon()
            throw error
        }
        if resuming && !switched {
            scheduler.withLock { $0.resume(volume.name) }
            Task { await resumeIfInSync(volume, mirror) }
        }
        return Volume(plan: volume, daemon: daemon, service: service)
    }

    /// After a restart: attaches the volume's target at once if the bitmap says nothing is to be
    /// copied onto it, so that an in-sync volume does not wait for a slot; otherwise it waits for
    /// its turn (the target, if it opened, is closed again).
    private func resumeIfInSync(_ volume: MigrationPlan.Volume, _ mirror: MirrorExport) async {
        do {
            _ = try await MirrorDaemon.attachTarget(volume.target, to: mirror, aio: runtime.aio, remote: settings.remote, onlyIfInSync: true,
                                                    logger: logger)
            logger.notice("volume \(volume.name): in sync again with \(volume.target)")
        } catch {
            logger.info("volume \(volume.name): waits for its turn to copy (\(error))")
        }
        scheduler.withLock { $0.resumed(volume.name) }
    }

    /// The copy `volume` waits to start, if it waits for a slot (what its status and its report say).
    private func pendingCopy(of volume: MigrationPlan.Volume) -> MirrorStatus.PendingCopy? {
        let now = live(volume.name)
        guard scheduler.withLock({ $0.phase(volume.name, now) }) == .waiting else { return nil }
        return MirrorStatus.PendingCopy(plan: plan.name, planFile: settings.planFile, target: volume.target)
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

    /// Every quarter second, until the plan stops: the copies the scheduler lets start now.
    func schedule() async {
        while !Task.isCancelled && !stop.fired {
            let live = live()
            let starting = scheduler.withLock { scheduler -> [String] in
                scheduler.observe(live)
                return scheduler.next(live)
            }
            for name in starting { Task { await copy(name) } }
            try? await Task.sleep(nanoseconds: Self.tick)
        }
    }

    /// Attaches a volume's target (unless one was added by hand meanwhile): its copy starts; from
    /// then on its mirror's state is its phase.
    private func copy(_ name: String) async {
        guard let volume = volumes.withLock({ $0.serving[name] }) else { return }
        let mirror = volume.service.export
        guard mirror.status.target == nil else { return scheduler.withLock { $0.attached(name) } }
        do {
            let regions = try await MirrorDaemon.attachTarget(volume.plan.target, to: mirror, aio: runtime.aio, remote: settings.remote,
                                                              logger: logger)
            scheduler.withLock { $0.attached(name) }
            logger.notice("volume \(name): copy started onto \(volume.plan.target) (\(regions) regions to copy)")
        } catch {
            let why = "cannot attach its target \(volume.plan.target): \(error)"
            scheduler.withLock { $0.attachFailed(name, why) }
            logger.error("volume \(name): \(why)")
        }
    }

    // MARK: Stopping

    /// Ends a volume once a `stop` of it (or of the plan) fired: its export closed and its report
    /// returned; the plan stops with its last volume.
    private func whenStopped(_ volume: Volume) async -> String? {
        let name = volume.plan.name
        _ = await volume.service.stop.wait()
        let pending = pendingCopy(of: volume.plan)
        let report = try? await volume.service.finish { export in
            var status = export.status
            status.pendingCopy = pending
            return volume.daemon.report(status)
        }
        let last = volumes.withLock { volumes -> Bool in
            volumes.serving[name] = nil
            volumes.stopped.insert(name)
            return volumes.serving.isEmpty
        }
        if last { stop.fire(.request) }
        return report ?? "\(name): stop failed (see the log)"
    }

    /// Stops every volume still serving (no copy starts any more) and returns every started
    /// volume's final report.
    func stopVolumes() async -> [String] {
        scheduler.withLock { $0.stop() }
        for volume in servingVolumes() { volume.service.stop.fire(.request) }
        var reports: [String] = []
        for volume in plan.volumes {
            if let report = await ended[volume.name]?.value { reports.append(report) }
        }
        return reports
    }
}
