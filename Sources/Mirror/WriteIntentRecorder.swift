import BlockIO
import Dispatch
import Logging

/// Keeps the bitmap file true to the mirror (invariant 4): a write's regions set on disk before its
/// data moves, a region's bit cleared on disk only after both legs are durable, the target the
/// file names, and the final save of a stop. It also runs the mirror's housekeeping every second:
/// the legs watched (`MirrorCore.watchLegs`), then the lazy save.
///
/// Every write of the file goes through one serial queue, each from a snapshot of the state taken
/// when it runs, so a later write of a page never carries fewer set bits than an earlier one did
/// for a writer. Without a bitmap file only the housekeeping's watch runs.
final class WriteIntentRecorder: @unchecked Sendable {
    /// The persisted write-intent bitmap, if any.
    let log: WriteIntentLog?
    /// A region written this recently keeps its bit on disk (md's bitmap daemon waits a few idle
    /// seconds too): random writes then do not set and clear the same bits over and over.
    let writeHoldNanos: UInt64
    private let core: MirrorCore
    private let queue = DispatchQueue(label: "blockmirror.write-intent")
    /// Every second: the legs watched, then the lazy save. Cancelled by `stop`.
    private let housekeeping: any DispatchSourceTimer

    init(core: MirrorCore, log: WriteIntentLog?, writeHoldNanos: UInt64) {
        self.core = core
        self.log = log
        self.writeHoldNanos = writeHoldNanos
        housekeeping = DispatchSource.makeTimerSource(queue: queue)
        housekeeping.schedule(deadline: .now() + 1, repeating: 1)
        housekeeping.setEventHandler { [weak self] in self?.saveLogged() }
        housekeeping.resume()
    }

    deinit { housekeeping.cancel() }

    /// Ends the housekeeping (a stopping mirror); the final save is `saveFinal`.
    func stop() { housekeeping.cancel() }

    /// Runs `body` on the queue, behind the saves and intent writes queued there, suspending the
    /// caller instead of blocking its thread.
    private func onQueue<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in queue.async { continuation.resume(returning: body()) } }
    }

    // MARK: The target

    /// Whether the file's bits can be trusted for `target` (`BitmapTrust`); nil without a file.
    func verdict(forTarget target: any Leg) async -> BitmapTrust.Verdict? {
        guard let log else { return nil }
        return await onQueue { log.verdict(forTarget: target.identity, trace: target.writeTrace()) }
    }

    /// Names `target` in the file and marks everything the bitmap (`bitmap`, its state at the
    /// attach) has to copy, before any copy.
    func recordAttach(of target: any Leg, bitmap: RegionBitmap) async throws(WriteIntentLog.Failure) {
        guard let log else { return }
        let result = await onQueue { [core] () -> Result<Void, WriteIntentLog.Failure> in
            let (queued, persisted) = core.shared.withLock { ($0.intent.queue(bitmap), $0.intent.persisted) }
            return Result { () throws(WriteIntentLog.Failure) in
                try log.attach(target: target.identity, bitmap: persisted)
                core.shared.withLock { $0.intent.written(queued) }
            }
        }
        try result.get()
    }

    /// Records that the file names no target: the removed one is never trusted again by these bits
    /// (what it holds from now on is unknown).
    func recordRemoval() async {
        guard let log else { return }
        let result = await onQueue { [core] () -> Result<Void, WriteIntentLog.Failure> in
            Result { () throws(WriteIntentLog.Failure) in try log.detachTarget(bitmap: core.shared.withLock { $0.intent.persisted }) }
        }
        if case .failure(let failure) = result {
            core.logger.error("cannot record the removal in the bitmap", metadata: ["error": "\(failure)"])
        }
    }

    /// Runs `body` on the bitmap queue, where every save, page write and the housekeeping run:
    /// nothing of the bitmap file's work interleaves with it (a role switch checks, records and
    /// swaps there in one go).
    func exclusively<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await onQueue(body)
    }

    /// Records in the file that the legs switch roles (`WriteIntentLog.switchRoles`), durably; call
    /// on the queue (`exclusively`), before the switch takes effect. The caller has made both legs
    /// durable with no request in flight, so this save clears every clean bit, like a clean stop's:
    /// the bits left say what the leg the switch leaves behind (target or retired) lacks.
    func recordSwitch(source: any Leg, target: (any Leg)?, retired: (any Leg)?) throws(WriteIntentLog.Failure) {
        guard let log else { return }
        let now = MirrorCore.now()
        let (started, persisted) = core.shared.withLock { shared in
            (shared.intent.beginSave(dirty: shared.bitmap, now: now, holdNanos: writeHoldNanos, final: true), shared.intent.persisted)
        }
        do {
            try log.switchRoles(source: source.identity, target: target.map { .init(identity: $0.identity) },
                                retired: retired.map { .init(identity: $0.identity, trace: $0.writeTrace()) },
                                bitmap: started?.bits ?? persisted)
            if let started { core.shared.withLock { $0.intent.saved(started) } }
        } catch {
            if let started { core.shared.withLock { $0.intent.failed(started) } }
            throw error
        }
    }

    // MARK: Write intent

    /// Whether writes are recorded at all (there is a bitmap file).
    var recordsWrites: Bool { log != nil }

    /// Counts a request that modifies `regions` as in flight (their bits stay set on disk until
    /// `writeEnded`); true if a bit of them must be persisted before its data moves — also when
    /// another request set it a moment ago and its page write is still queued.
    func writeBegins(_ regions: Range<Int>) -> Bool {
        core.shared.withLock { $0.intent.begin(regions) }
    }

    /// Ends a request counted by `writeBegins`.
    func writeEnded(_ regions: Range<Int>) {
        let now = MirrorCore.now()
        core.shared.withLock { $0.intent.end(regions, at: now) }
    }

    /// Persists the bits of `regions` still owed (behind every page write queued before: a region
    /// still marked queued here had its write fail, or none yet, so this request writes it), then
    /// calls `completion` on the queue.
    func persist(_ regions: Range<Int>, completion: @escaping @Sendable (Result<Void, WriteIntentLog.Failure>) -> Void) {
        guard let log else { return completion(.success(())) }
        queue.async { [core] in
            let (needed, persisted) = core.shared.withLock { $0.intent.owed(regions) }
            completion(Result { () throws(WriteIntentLog.Failure) in
                guard !needed.isEmpty else { return }
                try log.persist(regions: needed, of: persisted)
                core.shared.withLock { $0.intent.written(needed) }
            })
        }
    }

    /// Marks a region the legs are known to differ in (a check found it): dirty, and in the bitmap
    /// file before this returns, so neither a save nor a restart can call it clean.
    func markDiffering(_ region: Int) async {
        guard let log else { return core.shared.withLock { _ = $0.bitmap.setDirty(region) } }
        await onQueue { [core] in
            let persisted = core.shared.withLock { shared -> RegionBitmap? in
                shared.bitmap.setDirty(region)
                return shared.intent.set(region)
            }
            guard let persisted else { return }
            do {
                try log.persist(regions: [region], of: persisted)
                core.shared.withLock { $0.intent.written([region]) }
            } catch {
                core.logger.error("cannot record a mismatching region in the bitmap", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: Saves

    /// Saves soon (the copier cleaned enough regions), logging a failure.
    func saveLater() { queue.async { [self] in saveLogged() } }

    /// Saves now (a FLUSH asks it: a restart then recopies little) and reports how it went.
    func save(completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        queue.async { [self] in completion(Result { try saveBitmap() }) }
    }

    /// Saves the file now, clearing every clean bit and recording the legs' write traces (a stop).
    func saveFinal() async throws {
        try await onQueue { [self] in Result { try saveBitmap(final: true) } }.get()
    }

    private func saveLogged() {
        do { try saveBitmap() } catch { core.logger.error("cannot save the bitmap", metadata: ["error": "\(error)"]) }
    }

    /// Writes the bitmap file lazily: bits of regions now clean, with no write in flight and (unless
    /// `final`) none lately, are cleared on disk. Before a bit is cleared, both legs are made
    /// durable, so a power loss cannot leave a clear bit over a region whose copies differ; with no
    /// target, or one that cannot flush (failed), nothing is cleared. If the save fails, the bits
    /// the file may still hold are remembered, so later page writes keep them. The `final` save of
    /// a clean stop also records the legs' write traces. Every save first checks that the legs are
    /// still what was opened. Runs on `queue` only.
    private func saveBitmap(final: Bool = false) throws {
        core.watchLegs()
        guard let log else { return }
        let now = MirrorCore.now()
        let (started, target, healthy) = core.shared.withLock { shared in
            (shared.intent.beginSave(dirty: shared.bitmap, now: now, holdNanos: writeHoldNanos, final: final), shared.target.leg,
             shared.target.failure == nil)
        }
        guard var save = started else { return }
        do {
            if save.clears {
                do { try core.source.flushNow() } catch {
                    core.shared.withLock { $0.unreportedSourceError = error }
                    throw error
                }
                var targetDurable = false
                if let target {
                    do {
                        try target.flushNow()
                        targetDurable = true
                    } catch {
                        if healthy { core.targetFailed(error, on: target) }
                    }
                }
                if !targetDurable { core.shared.withLock { $0.intent.clearNothing(&save) } }
            }
            if final {
                try log.saveStopped(save.bits, sourceTrace: core.source.writeTrace(), targetTrace: target?.writeTrace())
            } else {
                try log.save(save.bits)
            }
            core.shared.withLock { $0.intent.saved(save) }
        } catch {
            core.shared.withLock { $0.intent.failed(save) }
            throw error
        }
    }
}
