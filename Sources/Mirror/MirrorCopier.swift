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
/// nothing (invariant 3). A hole of a sparse source is zeroed on the target, not read, in runs of
/// up to `maximumHoleRun` regions, and not even zeroed where the target reads zeroes already; an
/// all-zero region is zeroed, not written; a region in doubt (`Shared.verifying`) is compared first and
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
    /// The most regions one copy of a source hole covers (256 MiB of 1 MiB regions). Region by
    /// region, a 1 TiB source holding 1 GiB took 6-7 s to copy (two hops to the blocking queue per
    /// region: the map, the zeroing); a run is one of each. Bounded, because client writes to the
    /// run wait while a target without holes (a block device) is zeroed.
    static let maximumHoleRun = 256

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
            guard stillDirty else { return copied(region..<(region + 1), target: target, bytes: 0, clean: false) }
            let mapped: @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void = { [self] map in
                if case .success(let map) = map, map.count == 1, map[0].isHole, map[0].length == range.length {
                    return zeroHoleRun(from: region, to: target)
                }
                copyData(region, range: range, to: target)
            }
            // The lock may have been granted on an event loop: the map is asked through its
            // completion, which no leg answers by blocking this thread (a file seeks on the
            // blocking queue, an NBD server answers BLOCK_STATUS).
            core.source.allocationMap(offset: range.offset, length: range.length, maxExtents: 1, completion: mapped)
        }
    }

    /// Region `first`, held, is a hole of the source: the dirty regions after it that nobody holds
    /// or waits for are taken too (up to `maximumHoleRun` in all), the source's map asked again
    /// under their locks, and the regions the hole covers — `first`'s at least — are zeroed on the
    /// target in one request, or not at all where the target reads zeroes there already (a hole of
    /// a sparse file, an NBD extent with NBD_STATE_ZERO). The regions after the hole are released
    /// dirty, for copies of their own.
    private func zeroHoleRun(from first: Int, to target: any Leg) {
        let candidates: Range<Int> = core.shared.withLock { shared in
            let limit = min(shared.bitmap.regionCount, first + Self.maximumHoleRun)
            var end = first + 1
            while end < limit, shared.bitmap.isDirty(end) { end += 1 }
            return (first + 1)..<end
        }
        let run = first..<max(first + 1, core.locks.lockFreePrefix(candidates).upperBound)
        let (offset, length) = byteRange(of: run)
        core.source.allocationMap(offset: offset, length: length, maxExtents: 1) { [self] map in
            var holeEnd = first + 1
            if case .success(let map) = map, let extent = map.first, extent.isHole {
                let covered = core.shared.withLock { $0.bitmap.regionsFullyCovered(offset: offset, length: extent.length) }
                holeEnd = min(run.upperBound, max(holeEnd, covered.upperBound))
            }
            if holeEnd < run.upperBound { core.locks.unlock(holeEnd..<run.upperBound, .exclusive) }
            let hole = first..<holeEnd
            let (_, holeLength) = byteRange(of: hole)
            target.allocationMap(offset: offset, length: holeLength, maxExtents: 1) { [self] targetMap in
                if case .success(let extents) = targetMap, extents.count == 1, extents[0].isHole, extents[0].length == holeLength {
                    return copied(hole, target: target, bytes: holeLength, clean: true)
                }
                // Zeroes the target must write count against the limits beyond the first region's.
                throttle.charge(holeLength - byteRange(of: first..<(first + 1)).length)
                target.writeZeroes(offset: offset, length: holeLength, mayDeallocate: true, fastOnly: false) { [self] in
                    targetWritten(hole, target: target, bytes: holeLength, $0)
                }
            }
        }
    }

    /// The bytes of consecutive regions.
    private func byteRange(of regions: Range<Int>) -> (offset: UInt64, length: UInt64) {
        core.shared.withLock { shared in
            let first = shared.bitmap.byteRange(of: regions.lowerBound), last = shared.bitmap.byteRange(of: regions.upperBound - 1)
            return (first.offset, last.offset + last.length - first.offset)
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
                return copied(region..<(region + 1), target: target, bytes: 0, clean: false, stall: true)
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
            targetWritten(region..<(region + 1), target: target, bytes: range.length, result)
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
                copied(region..<(region + 1), target: target, bytes: 0, clean: true)
            case .compared:
                core.shared.withLock { $0.verifiedDiffering += 1 }
                write(region, range: range, from: buffer, to: target)
            case .firstFailed(let error):
                pool.recycle(buffer)
                core.logger.error("copier cannot read the source; region stays dirty", metadata: ["error": "\(error)"])
                copied(region..<(region + 1), target: target, bytes: 0, clean: false, stall: true)
            case .secondFailed(let error):
                pool.recycle(buffer)
                core.targetFailed(error, on: target)
                copied(region..<(region + 1), target: target, bytes: 0, clean: false)
            }
        }
    }

    /// Ends a copy whose target write finished: clean on success, target failed otherwise.
    private func targetWritten(_ regions: Range<Int>, target: any Leg, bytes: UInt64, _ result: Result<Void, BlockIOError>) {
        switch result {
        case .success: copied(regions, target: target, bytes: bytes, clean: true)
        case .failure(let error):
            core.targetFailed(error, on: target)
            copied(regions, target: target, bytes: 0, clean: false)
        }
    }

    /// Ends one copy (of one region, or of a hole's run): clears the bits if asked, releases the
    /// regions, starts the next copies.
    private func copied(_ regions: Range<Int>, target: any Leg, bytes: UInt64, clean: Bool, stall: Bool = false) {
        var verified: Int?
        let (idle, save): (Bool, Bool) = core.shared.withLock { shared in
            // Only a copy onto the current, healthy target cleans its regions.
            let clean = clean && shared.target.isHealthy(target)
            if clean { for region in regions { shared.markClean(region) } }
            let (save, idle) = shared.copier.finished(bytes: bytes, cleaned: clean ? regions.count : 0, dirtyLeft: shared.bitmap.dirtyCount)
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
        core.locks.unlock(regions, .exclusive)
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
