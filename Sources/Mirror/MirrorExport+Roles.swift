import BlockIO
import MirrorModel

extension MirrorExport {
    /// What a role switch did: the leg serving now, its target (if any), the leg retired (if any).
    public struct RoleSwitch: Sendable, Equatable {
        public let source: String
        public let target: String?
        public let retired: String?
    }

    /// Ends the migration without a second outage (qemu's `block-job-complete`): the in-sync
    /// target becomes the leg the export serves, reads and writes, on the same connections. With
    /// `keepOld` the old source becomes the target, still written on every write, so the way back
    /// costs no copy; without it the old source is retired: it gets no more writes and keeps
    /// exactly what it held at the switch, and the bitmap from then on marks what it misses.
    public func complete(keepOld: Bool) async throws(TargetError) -> RoleSwitch {
        try await switchRoles(retiringSource: !keepOld, verb: "complete")
    }

    /// Swaps the roles of an in-sync mirror: the target serves, the source becomes its target.
    public func reverse() async throws(TargetError) -> RoleSwitch {
        try await switchRoles(retiringSource: false, verb: "reverse")
    }

    /// The switch: no new request starts (they wait at the gate), those in flight and the
    /// background work finish, and the verbs that change the legs (`add`, `fail`, `remove`,
    /// `check`) are refused until it ends; both legs are flushed; then, on the bitmap queue (where
    /// no save or housekeeping can slip in), the legs are checked once more, the bitmap file records
    /// the new roles durably, and only then the roles change. The waiting requests go on, on the
    /// new source. Any failure before the record leaves the roles as they were.
    private func switchRoles(retiringSource: Bool, verb: String) async throws(TargetError) -> RoleSwitch {
        guard intentLog != nil else {
            throw TargetError(description: "\(verb) needs a bitmap file (build --bitmap): without one a restart could not know "
                              + "that the roles switched, and would serve \(source.path) again")
        }
        let status = status
        _ = try core.shared.withLock { shared throws(TargetError) in try Self.inSyncLegs(shared, for: verb, status: status) }
        guard await gate.close() else { throw TargetError(description: "another complete or reverse is in progress") }
        defer { gate.open() }
        await core.waitUntilBackgroundIdle()
        // Checked again (a write may have failed the target while the requests drained), and from
        // here on the legs are this switch's.
        let (old, new) = try core.shared.withLock { shared throws(TargetError) in
            let legs = try Self.inSyncLegs(shared, for: verb, status: nil)
            shared.switching = true
            return legs
        }
        defer { core.shared.withLock { $0.switching = false } }
        if case .failure(let error) = await Self.flush(old) {
            // A writeback error is reported once per file: the next FLUSH of a client must get it.
            core.shared.withLock { $0.unreportedSourceError = error }
            throw TargetError(description: "\(verb): cannot flush the source \(old.path): \(error); the roles are unchanged")
        }
        if case .failure(let error) = await Self.flush(new) {
            core.targetFailed(error, on: new)
            throw TargetError(description: "\(verb): cannot flush the target \(new.path): \(error); the roles are unchanged")
        }
        let outcome: Result<RoleSwitch, TargetError> = await recorder.exclusively { [self] in
            do throws(TargetError) {
                try core.shared.withLock { shared throws(TargetError) in
                    guard !shared.stopping else { throw TargetError(description: "the mirror is stopping") }
                    guard shared.source === old, shared.target.isHealthy(new), shared.bitmap.dirtyCount == 0 else {
                        throw TargetError(description: "\(verb): \(new.path) failed or fell behind during the switch; the roles are unchanged")
                    }
                }
                do {
                    try recorder.recordSwitch(source: new, target: retiringSource ? nil : old, retired: retiringSource ? old : nil)
                } catch {
                    throw TargetError(description: "\(verb): cannot record the switch: \(error); the roles are unchanged")
                }
                return .success(core.shared.withLock { shared -> RoleSwitch in
                    shared.source = new
                    shared.target.remove()
                    if !retiringSource {
                        shared.target.attach(old)
                        shared.target.attached()
                    }
                    shared.switched = intentLog?.record.switched
                    shared.retired = retiringSource ? old.path : nil
                    return RoleSwitch(source: new.path, target: retiringSource ? nil : old.path, retired: retiringSource ? old.path : nil)
                })
            } catch {
                return .failure(error)
            }
        }
        let switched = try outcome.get()
        if retiringSource {
            old.close()
            logger.notice("\(verb): \(new.path) serves alone; \(old.path) is retired and holds the data of this moment",
                          metadata: ["source": "\(new.path)", "retired": "\(old.path)"])
        } else {
            logger.notice("\(verb): \(new.path) serves, \(old.path) is its target", metadata: ["source": "\(new.path)", "target": "\(old.path)"])
        }
        return switched
    }

    /// Makes `leg`'s completed writes durable, with the leg's own error.
    private static func flush(_ leg: any Leg) async -> Result<Void, BlockIOError> {
        await withCheckedContinuation { continuation in leg.flush { continuation.resume(returning: $0) } }
    }

    /// The source and the target of `shared`, if the mirror is in sync with nothing else running;
    /// otherwise the error says what stands in the way (how much is left to copy and, with
    /// `status`, how long that takes; the failure; the check).
    private static func inSyncLegs(_ shared: MirrorCore.Shared, for verb: String,
                                   status: MirrorStatus?) throws(TargetError) -> (source: any Leg, target: any Leg) {
        guard !shared.stopping else { throw TargetError(description: "the mirror is stopping") }
        guard !shared.switching else { throw TargetError(description: "another complete or reverse is in progress") }
        guard let target = shared.target.leg else {
            throw TargetError(description: "\(verb) needs a target in sync, and the mirror is degraded (no target)")
        }
        if let failure = shared.target.failure {
            throw TargetError(description: "\(verb) needs a target in sync, and \(target.path) has failed: \(failure)")
        }
        guard shared.bitmap.dirtyCount == 0 else {
            let left = status.map { " (\($0.bytesDirty) bytes to copy" + ($0.etaSeconds.map { ", about \(Int($0.rounded(.up))) s at the current speed" } ?? "") + ")" } ?? ""
            throw TargetError(description: "\(verb) needs a target in sync: \(target.path) still lacks \(shared.bitmap.dirtyCount) of "
                              + "\(shared.bitmap.regionCount) regions\(left)")
        }
        guard shared.target.attaching == 0 else { throw TargetError(description: "a target is being attached: \(target.path)") }
        guard shared.check.running == nil else { throw TargetError(description: "a check is running: wait for it to end") }
        return (shared.source, target)
    }
}
