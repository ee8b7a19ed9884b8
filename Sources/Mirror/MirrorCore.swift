import BlockIO
import Dispatch
import Logging
import MirrorModel

/// The mirror's state under one lock, and the transitions every part of the engine makes on it: the
/// target failing (the first reason wins), waking whoever waits for the recovery to settle or for
/// the background work to stop, and watching that the legs are still what was opened.
///
/// The copier (`MirrorCopier`), the bitmap file's writer (`WriteIntentRecorder`), the check and the
/// export's requests (`MirrorExport`) all read and change `shared`: one lock keeps the bitmap, the
/// write intent and the target's state consistent with each other, and each of them keeps its own
/// part of the state in a pure type (`TargetSlot`, `CopierState`, `WriteIntentState`, `CheckState`).
final class MirrorCore: Sendable {
    struct Shared {
        /// The leg reads come from: the one built as source, until `complete` or `reverse` switch
        /// the roles (with no request in flight: `MirrorExport+Roles`).
        var source: any Leg
        /// The target and its lifecycle.
        var target = TargetSlot()
        var bitmap: RegionBitmap
        var stopping = false
        /// The copier's cursor, copies running, delays and lazy saves.
        var copier = CopierState()
        /// Awaited by `waitUntilSettled` while recovering (made by the first waiter, fulfilled
        /// and cleared by `settle`).
        var settled: OneShot<MirrorStatus>?
        /// Awaited by `waitUntilBackgroundIdle` until neither copies nor check workers run.
        var backgroundIdle: OneShot<Void>?
        /// What the bitmap file holds and must hold (invariant 4).
        var intent: WriteIntentState
        /// An fdatasync error of the source met by a bitmap save, not yet reported to a client:
        /// the next FLUSH fails with it (the kernel reports a writeback error once per file).
        var unreportedSourceError: BlockIOError?
        /// The check running now, its next region and its workers.
        var check = CheckState()
        /// Dirty regions the copier compares before copying (the bitmap called them clean, but that
        /// is in doubt: `--verify-clean`, or a hole of the target over the source's data); how many
        /// of them turned out to differ.
        var verifying: RegionBitmap?
        var verifiedDiffering = 0
        /// The source's path no longer names the file or device served (deleted, replaced).
        var sourceProblem: String?
        /// When `complete` or `reverse` last switched the roles (ISO 8601), and the leg `complete`
        /// retired, by path.
        var switched: String?
        var retired: String?
        /// A role switch holds the legs: the verbs that change them are refused until it ends.
        var switching = false
        /// A region now holds the same bytes on both legs.
        mutating func markClean(_ region: Int) {
            bitmap.setClean(region)
            verifying?.setClean(region)
        }
    }

    let shared: Mutex<Shared>
    let logger: Logger
    /// Held exclusively by a copy or a check of a region, shared by writes: a copy never lands
    /// over a newer write (invariant 3).
    let locks = RegionLocks()

    /// The state of a mirror over `source` whose bitmap is `bitmap`, as persisted (or all dirty).
    init(source: any Leg, bitmap: RegionBitmap, logger: Logger) {
        self.logger = logger
        shared = Mutex(Shared(source: source, bitmap: bitmap, intent: WriteIntentState(persisted: bitmap)))
    }

    /// The leg serving reads now.
    var source: any Leg { shared.withLock { $0.source } }

    /// Monotonic nanoseconds.
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// The state and counters (speed, limits and requests in flight are filled in by
    /// `MirrorExport.status`).
    static func status(of shared: Shared) -> MirrorStatus {
        let state: MirrorState
        if shared.stopping { state = .stopping }
        else if shared.target.failure != nil { state = .targetFailed }
        else if shared.target.leg == nil { state = .degraded }
        else if shared.bitmap.dirtyCount > 0 { state = .recovering }
        else { state = .inSync }
        return MirrorStatus(state: state, source: shared.source.path, target: shared.target.leg?.path, size: shared.bitmap.deviceSize,
                            regionSize: shared.bitmap.regionSize, regionsTotal: shared.bitmap.regionCount,
                            regionsDirty: shared.bitmap.dirtyCount, bytesCopied: shared.copier.bytesCopied, speedBytesPerSecond: 0,
                            speedLimits: SpeedLimits(), foregroundInFlight: 0, check: shared.check.running, lastCheck: shared.check.last,
                            failure: shared.target.failure, sourceProblem: shared.sourceProblem,
                            regionsVerifying: shared.verifying?.dirtyCount,
                            verifiedDiffering: shared.verifying == nil ? nil : shared.verifiedDiffering,
                            switched: shared.switched, retired: shared.retired)
    }

    // MARK: Waiting for the recovery

    /// Returns when the target is in sync, has failed, or the mirror is stopping.
    func waitUntilSettled() async -> MirrorStatus {
        let (status, settled) = shared.withLock { shared -> (MirrorStatus, OneShot<MirrorStatus>?) in
            let status = Self.status(of: shared)
            guard status.state == .recovering else { return (status, nil) }
            if shared.settled == nil { shared.settled = OneShot() }
            return (status, shared.settled)
        }
        guard let settled else { return status }
        return await settled.wait()
    }

    /// Wakes `waitUntilSettled` callers when the state is no longer `recovering`.
    func settle() {
        let (settled, status) = shared.withLock { shared -> (OneShot<MirrorStatus>?, MirrorStatus?) in
            guard shared.settled != nil else { return (nil, nil) }
            let status = Self.status(of: shared)
            guard status.state != .recovering else { return (nil, status) }
            defer { shared.settled = nil }
            return (shared.settled, status)
        }
        if let settled, let status { settled.fulfil(status) }
    }

    // MARK: Waiting for the background work

    /// Returns when neither copies nor check workers run (a stopping mirror starts no new ones).
    func waitUntilBackgroundIdle() async {
        let busy: OneShot<Void>? = shared.withLock { shared in
            guard shared.copier.copying > 0 || shared.check.workers > 0 else { return nil }
            if shared.backgroundIdle == nil { shared.backgroundIdle = OneShot() }
            return shared.backgroundIdle
        }
        await busy?.wait()
    }

    /// Wakes `waitUntilBackgroundIdle` when neither copies nor check workers run.
    func wakeBackgroundWaiters() {
        let idle: OneShot<Void>? = shared.withLock { shared in
            guard shared.copier.copying == 0, shared.check.workers == 0 else { return nil }
            defer { shared.backgroundIdle = nil }
            return shared.backgroundIdle
        }
        idle?.fulfil()
    }

    // MARK: Target failure

    /// Marks the target failed after an I/O error on it: writes continue on the source alone.
    func targetFailed(_ error: BlockIOError, on device: any Leg) {
        if markFailed(error.description, on: device) {
            logger.error("target failed, mirror degraded: serving from the source alone", metadata: ["error": "\(error)"])
        }
    }

    /// Records the target's failure (the first reason wins); true if it was healthy until now.
    func markFailed(_ reason: String, on device: any Leg) -> Bool {
        let first = shared.withLock { $0.target.fail(reason, on: device) }
        if first { settle() }
        return first
    }

    /// Fails the target when its path no longer names the file or device in use (deleted,
    /// truncated, renamed and re-created), and records it when the source's path does not: NEW
    /// changing under the mirror is never called a complete copy (invariant 8).
    func watchLegs() {
        if let target = shared.withLock({ $0.target.healthy }), let why = target.replacement(),
           markFailed(why, on: target) {
            logger.error("target failed, mirror degraded: serving from the source alone", metadata: ["reason": "\(why)"])
        }
        if let why = source.replacement(), shared.withLock({ shared in
            defer { shared.sourceProblem = why }
            return shared.sourceProblem == nil
        }) {
            logger.critical("the source's path no longer names the device served: its data lives on in this process only",
                            metadata: ["reason": "\(why)"])
        }
    }
}
