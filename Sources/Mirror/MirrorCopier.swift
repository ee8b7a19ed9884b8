import BlockExport
import BlockIO
import Dispatch
import struct Synchronization.Atomic

/// The background copy (md's recovery): fills the target region by region from the dirty bitmap,
/// as fast as the throttle lets it, yielding to client I/O.
///
/// A region is held exclusively while it is copied (writes hold theirs shared), and its bit is
/// cleared only when the copy onto the current, healthy target completed — the clean rule: a copy
/// never lands over a newer write, and a copy onto a target failed or replaced meanwhile cleans
/// nothing (invariant 3). A hole of a sparse source is zeroed on the target, not read; an all-zero
/// region is zeroed, not written; a region in doubt (`Shared.verifying`) is compared first and
/// written only where the legs differ. A source read that fails leaves its region dirty and is
/// tried again after a pause. What to do next is `CopierState`'s decision.
final class MirrorCopier: Sendable {
    /// Copies in flight at once, each one region.
    let depth: Int
    /// Paces the copy and the check (speed limits, speed shown, yield to foreground I/O).
    let throttle: CopyThrottle
    private let core: MirrorCore
    private let recorder: WriteIntentRecorder
    private let pool: BufferPool
    /// The export's requests in flight: while there are any, the copy yields.
    private let foreground: InFlightTracker
    /// When the last client request arrived (monotonic nanoseconds): the copy yields while clients
    /// are active.
    private let lastForeground = Atomic<UInt64>(0)
    /// Client activity this recent counts as "busy".
    private static let busyWindowNanos: UInt64 = 200_000_000
    /// How long the copier waits before trying again after it could not read the source.
    private static let readRetryNanos: UInt64 = 5_000_000_000

    init(core: MirrorCore, recorder: WriteIntentRecorder, throttle: CopyThrottle, depth: Int, pool: BufferPool,
         foreground: InFlightTracker) {
        self.core = core
        self.recorder = recorder
        self.throttle = throttle
        self.depth = depth
        self.pool = pool
        self.foreground = foreground
    }

    /// A client request arrived: the copy yields for a while.
    func foregroundArrived() { lastForeground.store(MirrorCore.now(), ordering: .relaxed) }

    /// Starts copies up to the throttle's depth while dirty regions remain; when the speed limit
    /// holds the copy back, schedules itself for when it may go on.
    func pump() {
        while true {
            let now = MirrorCore.now()
            let last = lastForeground.load(ordering: .relaxed)
            let busy = foreground.count > 0 || last > now || now - last < Self.busyWindowNanos
            let depth = throttle.depth(full: depth, foregroundBusy: busy, now: now)
            let next: (step: CopierState.Step, target: any Leg)? = core.shared.withLock { shared in
                guard !shared.stopping, shared.target.attaching == 0, let target = shared.target.healthy else { return nil }
                let regionSize = shared.bitmap.regionSize
                return (shared.copier.next(in: shared.bitmap, depth: depth) { throttle.admit(regionSize, now: now) }, target)
            }
            guard let next else { return }
            switch next.step {
            case .idle: return
            case .copy(let region): copy(region: region, to: next.target)
            case .wait(let nanos):
                pumpLater(afterNanoseconds: min(nanos, 1_000_000_000))
                return
            }
        }
    }

    /// Runs `pump` again after a delay; the copier was `delayed` by the caller. The retry holds the
    /// copier weakly: a mirror closed and let go meanwhile frees its state at once, not when the
    /// retry was due.
    private func pumpLater(afterNanoseconds nanos: UInt64) {
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanos))) { [weak self] in
            guard let self else { return }
            core.shared.withLock { $0.copier.resume() }
            pump()
        }
    }

    /// Copies one region under its exclusive lock; clears its bit only if the copy completed.
    private func copy(region: Int, to target: any Leg) {
        core.locks.lock(region..<(region + 1), .exclusive) { [self] in
            let (stillDirty, range): (Bool, (offset: UInt64, length: UInt64)) = core.shared.withLock {
                ($0.bitmap.isDirty(region), $0.bitmap.byteRange(of: region))
            }
            guard stillDirty else { return copied(region, target: target, bytes: 0, clean: false) }
            let source = core.source
            let mapped: @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void = { [self] map in
                if case .success(let map) = map, map.count == 1, map[0].isHole, map[0].length == range.length {
                    // A hole of a sparse source: zero the target's region without reading anything.
                    return target.writeZeroes(offset: range.offset, length: range.length, mayDeallocate: true, fastOnly: false) { [self] in
                        targetWritten(region, target: target, bytes: range.length, $0)
                    }
                }
                copyData(region, range: range, to: target)
            }
            // The lock may have been granted on an event loop: the map is asked through its
            // completion, which no leg answers by blocking this thread (a file seeks on the
            // blocking queue, an NBD server answers BLOCK_STATUS).
            source.allocationMap(offset: range.offset, length: range.length, maxExtents: 1, completion: mapped)
        }
    }

    /// Copies a region that holds data, under its exclusive lock (taken by `copy(region:to:)`):
    /// verified first when it is in doubt, else read from the source and written to the target.
    private func copyData(_ region: Int, range: (offset: UInt64, length: UInt64), to target: any Leg) {
        let length = Int(range.length)
        let buffer = pool.take(capacity: length)
        if core.shared.withLock({ $0.verifying?.isDirty(region) ?? false }) {
            return verifyThenCopy(region, range: range, buffer: buffer, to: target)
        }
        core.source.read(into: buffer.baseAddress, count: length, offset: range.offset) { [self] result in
            if case .failure(let error) = result {
                pool.recycle(buffer)
                core.logger.error("copier cannot read the source; region stays dirty", metadata: ["error": "\(error)"])
                return copied(region, target: target, bytes: 0, clean: false, stall: true)
            }
            write(region, range: range, from: buffer, to: target)
        }
    }

    /// Writes a region read from the source (in `buffer`, given back here) onto the target.
    private func write(_ region: Int, range: (offset: UInt64, length: UInt64), from buffer: AlignedBuffer, to target: any Leg) {
        let length = Int(range.length)
        let write: (@escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void
        if UnsafeRawBufferPointer(start: buffer.baseAddress, count: length).allSatisfy({ $0 == 0 }) {
            // An all-zero region: zero the target cheaply instead of writing zeroes.
            write = { target.writeZeroes(offset: range.offset, length: range.length, mayDeallocate: true, fastOnly: false, completion: $0) }
        } else {
            write = { target.write(from: buffer.baseAddress, count: length, offset: range.offset, durable: false, completion: $0) }
        }
        write { [self] result in
            pool.recycle(buffer)
            targetWritten(region, target: target, bytes: range.length, result)
        }
    }

    /// A region the bitmap called clean, in doubt: both legs are read and compared; the target is
    /// written only where they differ.
    private func verifyThenCopy(_ region: Int, range: (offset: UInt64, length: UInt64), buffer: AlignedBuffer, to target: any Leg) {
        let targetBuffer = pool.take(capacity: Int(range.length))
        Task { [self] in
            let outcome = await LegComparison.compare(core.source, target, offset: range.offset, length: Int(range.length),
                                                      into: (buffer, targetBuffer))
            pool.recycle(targetBuffer)
            switch outcome {
            case .compared(let mismatches) where mismatches.isEmpty:
                pool.recycle(buffer)
                copied(region, target: target, bytes: 0, clean: true)
            case .compared:
                core.shared.withLock { $0.verifiedDiffering += 1 }
                write(region, range: range, from: buffer, to: target)
            case .firstFailed(let error):
                pool.recycle(buffer)
                core.logger.error("copier cannot read the source; region stays dirty", metadata: ["error": "\(error)"])
                copied(region, target: target, bytes: 0, clean: false, stall: true)
            case .secondFailed(let error):
                pool.recycle(buffer)
                core.targetFailed(error, on: target)
                copied(region, target: target, bytes: 0, clean: false)
            }
        }
    }

    /// Ends a copy whose target write finished: clean on success, target failed otherwise.
    private func targetWritten(_ region: Int, target: any Leg, bytes: UInt64, _ result: Result<Void, BlockIOError>) {
        switch result {
        case .success: copied(region, target: target, bytes: bytes, clean: true)
        case .failure(let error):
            core.targetFailed(error, on: target)
            copied(region, target: target, bytes: 0, clean: false)
        }
    }

    /// Ends one copy: clears the bit if asked, releases the region, starts the next copies.
    private func copied(_ region: Int, target: any Leg, bytes: UInt64, clean: Bool, stall: Bool = false) {
        var verified: Int?
        let (idle, save): (Bool, Bool) = core.shared.withLock { shared in
            // Only a copy onto the current, healthy target cleans its region.
            let clean = clean && shared.target.isHealthy(target)
            if clean { shared.markClean(region) }
            let (save, idle) = shared.copier.finished(bytes: bytes, cleaned: clean, dirtyLeft: shared.bitmap.dirtyCount)
            if let verifying = shared.verifying, verifying.dirtyCount == 0 {
                shared.verifying = nil
                verified = shared.verifiedDiffering
            }
            return (idle, save)
        }
        if let verified {
            core.logger.notice("the regions in doubt were compared: \(verified) differed and were copied, the others were clean")
        }
        if bytes > 0 { throttle.completed(bytes, now: MirrorCore.now()) }
        if save { recorder.saveLater() }
        core.locks.unlock(region..<(region + 1), .exclusive)
        if idle { core.wakeBackgroundWaiters() }
        core.settle()
        if !stall {
            pump()
        } else if core.shared.withLock({ $0.copier.delay() }) {
            // A source read failed: try the region again later (the error may be transient), not in a loop.
            pumpLater(afterNanoseconds: Self.readRetryNanos)
        }
    }
}
