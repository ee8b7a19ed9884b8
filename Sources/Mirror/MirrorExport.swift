import BlockExport
import Dispatch
import BlockIO
import Logging
import MirrorModel
import NIOCore

/// The mirror: an export over a source OLD and an optional target NEW — the `BlockExport` facade
/// over the engine's parts.
///
/// Reads come from the source, the only complete copy until the target is in sync (invariant 1).
/// A write goes to source and target together and is acknowledged only when both completed
/// (invariant 2), after its regions' write intent is on disk (invariant 4, `WriteIntentRecorder`).
/// A background copier (`MirrorCopier`) fills the target region by region, driven by the dirty
/// bitmap; it holds a region exclusively while it copies, and writes hold their regions shared, so
/// a copy never lands over a newer write (invariant 3). A target I/O error marks the target failed
/// and the mirror degraded, with no acknowledged write lost; a source error goes back to the client
/// (invariant 5). The source is written first-class on every path, so it is never older than what
/// was acknowledged (invariant 6). The state all of them share is `MirrorCore`'s; this type adds
/// the target's lifecycle (attach, fail, remove), the requests, the check and the stop.
public final class MirrorExport: BlockExport, Sendable {
    /// Why a target cannot be attached, failed or removed.
    public struct TargetError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// The leg reads come from: the one built as source until `complete` or `reverse` switch roles.
    public var source: any Leg { core.source }
    public let capabilities: ExportCapabilities
    /// The source's size when the mirror was built: a leg that serves later may be larger.
    public let size: UInt64
    public var exportDescription: String { "mirror of \(source.path)" }

    /// Copies in flight at once, each one region.
    public var copiesInFlight: Int { copier.depth }
    /// Regions the copy keeps in flight unless told otherwise. Measured here (1 GiB, idle, 5 rounds
    /// alternated, medians): 2 and 4 copied in 1.21 s like a one-request-at-a-time dd (1.23 s), 8
    /// took 1.41 s and 16 1.38-1.42 s (qemu's mirror keeps 16 x 1 MiB: 1.52-1.59 s), the reads and
    /// writes of more copies interleaving on the disk. 4 rather than 2, so that under client I/O,
    /// when the copy drops to a quarter of its depth, one copy still runs.
    public static let defaultCopiesInFlight = 4
    /// A region written this recently keeps its bit on disk (see `WriteIntentRecorder`).
    public var writeHoldNanos: UInt64 { recorder.writeHoldNanos }
    /// The persisted write-intent bitmap, if any (invariant 4).
    public var intentLog: WriteIntentLog? { recorder.log }
    let pool: BufferPool
    let logger: Logger
    let core: MirrorCore
    let recorder: WriteIntentRecorder
    let copier: MirrorCopier
    let tracker = InFlightTracker()
    /// Closed while the legs switch roles: requests wait (`MirrorExport+Roles`).
    let gate = RequestGate()

    /// A mirror over `source`, degraded until `attach` gives it a target. With `intentLog`, the
    /// bitmap is persisted there; `resuming` is the bitmap read back from it after a crash or stop
    /// (otherwise every region starts dirty). `blockSize` is the granularity the export asks of its
    /// clients (at least the source's required alignment): that of a target to come that needs
    /// aligned requests (an NBD server's minimum block size). `size` is the export's (nil: the
    /// source's): after a role switch the serving leg may be larger than the mirror it serves.
    /// The copy keeps within `limits` and within every shared `budgets` (a plan's total rate).
    public init(source: any Leg, size: UInt64? = nil, blockSize: Int = 1, regionSize: UInt64 = 1 << 20,
                copiesInFlight: Int = MirrorExport.defaultCopiesInFlight, limits: SpeedLimits = SpeedLimits(),
                budgets: [CopyBudget] = [], pool: BufferPool, logger: Logger, intentLog: WriteIntentLog? = nil, resuming: RegionBitmap? = nil,
                writeHoldNanos: UInt64 = 2_000_000_000) {
        self.size = size ?? source.size
        self.pool = pool
        self.logger = logger
        self.capabilities = ExportCapabilities(
            isReadOnly: false, canTrim: true, canWriteZeroes: true, canFastZero: false, canMultiConnect: true,
            blockSizes: BlockSizeConstraints(minimum: UInt32(max(blockSize, source.requiredAlignment)),
                                             preferred: UInt32(max(4096, source.alignment, blockSize)),
                                             maximum: BlockSizeConstraints.maximumPayload))
        let bitmap = resuming ?? RegionBitmap(deviceSize: self.size, regionSize: regionSize, allDirty: true)
        core = MirrorCore(source: source, bitmap: bitmap, logger: logger)
        if let record = intentLog?.record, record.switched != nil {
            core.shared.withLock { shared in
                shared.switched = record.switched
                shared.retired = record.retired?.identity.path
            }
        }
        recorder = WriteIntentRecorder(core: core, log: intentLog, writeHoldNanos: writeHoldNanos)
        copier = MirrorCopier(core: core, recorder: recorder, throttle: CopyThrottle(limits: limits, budgets: budgets), depth: copiesInFlight,
                              pool: pool, foreground: tracker)
    }

    // MARK: Status and control

    public var status: MirrorStatus {
        let now = MirrorCore.now()
        var status = core.shared.withLock { MirrorCore.status(of: $0) }
        status.bitmap = intentLog?.path
        let speed = copier.throttle.bytesPerSecond(now: now)
        status.speedBytesPerSecond = UInt64(speed)
        if status.state == .recovering, speed >= 1 { status.etaSeconds = Double(status.bytesDirty) / speed }
        status.speedLimits = copier.throttle.limits
        status.foregroundInFlight = tracker.count
        return status
    }

    /// Changes the copy's speed limits while it runs (like writing md's sync_speed_min/max).
    public func setSpeedLimits(_ limits: SpeedLimits) {
        copier.throttle.limits = limits
        logger.info("speed limits changed", metadata: ["min": "\(limits.minimum)K/s", "max": "\(limits.maximum.map { "\($0)K/s" } ?? "none")"])
        copier.pump()
    }

    /// Attaches a target (like `mdadm --add`) and starts the recovery. Without a bitmap file every
    /// region is copied; with one, only the regions it marks when its bits can be trusted for this
    /// target (`BitmapTrust`: the target it was written for, not written outside the mirror since)
    /// — and the regions it calls clean where a target file has a hole over the source's data are
    /// compared before being trusted, as every clean region is with `verifyClean`. The source
    /// itself (by any path: symlink, hard link, loop device) and a target smaller than the source
    /// are refused; a larger one is fine (the export keeps the source's size). Returns the number of
    /// regions to copy. With `onlyIfInSync`, the target is attached only if nothing is to be
    /// copied (the bitmap is trusted for it, no region dirty or in doubt) and refused otherwise,
    /// left as it was: a plan resumes its in-sync volumes at once, and the others in their turn.
    @discardableResult
    public func attach(target: any Leg, verifyClean: Bool = false, onlyIfInSync: Bool = false) async throws(TargetError) -> Int {
        try Self.refuse(target.identity, asTargetOf: source)
        let verdict = await recorder.verdict(forTarget: target)
        // Clean regions in doubt: all of them if asked, else those a sparse target lacks outright.
        let resumed = core.shared.withLock { $0.bitmap }
        var doubtful = RegionBitmap(deviceSize: resumed.deviceSize, regionSize: resumed.regionSize, allDirty: verifyClean)
        if !verifyClean, target.identity.kind != .blockDevice, case .trust = verdict {
            // SEEK_DATA/SEEK_HOLE over both legs can take a while: not on a cooperative thread.
            doubtful = await Self.offTheCooperativePool { [source] in resumed.holes(of: target).subtracting(resumed.holes(of: source)) }
        }
        let bitmap: RegionBitmap = try core.shared.withLock { shared throws(TargetError) in
            guard !shared.stopping else { throw TargetError(description: "the mirror is stopping") }
            guard !shared.switching else { throw TargetError(description: "a complete or reverse is in progress") }
            try shared.target.checkAttach(target, sourcePath: shared.source.path, sourceSize: size,
                                          exportBlockSize: Int(capabilities.blockSizes.minimum), regionSize: shared.bitmap.regionSize)
            guard shared.check.running == nil else { throw TargetError(description: "a check is running") }
            if onlyIfInSync {
                guard case .trust = verdict else { throw TargetError(description: "the bitmap is not trusted for it: every region is to be copied") }
                let toCopy = shared.bitmap.dirtyCount + doubtful.subtracting(shared.bitmap).dirtyCount
                guard toCopy == 0 else { throw TargetError(description: "\(toCopy) regions are to be copied") }
            }
            shared.target.attach(target)
            shared.retired = nil
            shared.verifiedDiffering = 0
            if case .trust = verdict {
                let verifying = doubtful.subtracting(shared.bitmap)
                shared.verifying = verifying.dirtyCount > 0 ? verifying : nil
                shared.bitmap.formUnion(verifying)
            } else {
                shared.verifying = nil
                shared.bitmap.setAll()
            }
            shared.copier.restart()
            return shared.bitmap
        }
        defer {
            core.shared.withLock { $0.target.attached() }
            copier.pump()
        }
        do {
            // The bitmap file names the new target and marks everything to copy before any copy.
            try await recorder.recordAttach(of: target, bitmap: bitmap)
        } catch {
            _ = core.markFailed("\(error)", on: target)
            throw TargetError(description: "\(error)")
        }
        let (dirty, verifying) = core.shared.withLock { ($0.bitmap.dirtyCount, $0.verifying?.dirtyCount ?? 0) }
        switch verdict {
        case .copyAll(let why): logger.notice("bitmap \(intentLog?.path ?? ""): \(why)")
        case .trust(let note?): logger.warning("bitmap \(intentLog?.path ?? ""): \(note)")
        default: break
        }
        if verifying > 0 {
            logger.notice("\(verifying) regions the bitmap calls clean are compared before they are trusted",
                          metadata: ["target": "\(target.path)", "reason": "\(verifyClean ? "--verify-clean" : "the target has holes where the source has data")"])
        }
        logger.info("target attached, recovery starts", metadata: ["target": "\(target.path)", "regions": "\(dirty)"])
        return dirty
    }

    /// Returns when the target is in sync, has failed, or the mirror is stopping.
    public func waitUntilSettled() async -> MirrorStatus { await core.waitUntilSettled() }

    /// Runs `body` on a global queue (system calls that may wait: SEEK_DATA/SEEK_HOLE over both
    /// legs) and returns its result, suspending the caller instead of blocking a cooperative thread.
    private static func offTheCooperativePool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in DispatchQueue.global().async { continuation.resume(returning: body()) } }
    }

    // MARK: Target failure and removal

    /// Marks a healthy target faulty on the administrator's word (`mdadm --fail`): writes go to the
    /// source alone from now on and the copy stops; the target keeps what it had.
    public func failTarget() throws(TargetError) {
        let (target, switching) = core.shared.withLock { ($0.target.healthy, $0.switching) }
        guard !switching else { throw TargetError(description: "a complete or reverse is in progress") }
        guard let target else {
            throw TargetError(description: "no healthy target to fail (state \(status.state.rawValue))")
        }
        if core.markFailed("\(target.path) marked faulty by the administrator", on: target) {
            logger.notice("target marked faulty, mirror degraded: serving from the source alone", metadata: ["target": "\(target.path)"])
        }
    }

    /// Detaches a failed target (`mdadm --remove`): the mirror is degraded and a new target can be
    /// added. An active target must be failed first, as md requires. Returns the removed path.
    @discardableResult
    public func removeTarget() async throws(TargetError) -> String {
        let (removed, leg): (String, (any Leg)?) = try core.shared.withLock { shared throws(TargetError) in
            guard !shared.switching else { throw TargetError(description: "a complete or reverse is in progress") }
            let path = try shared.target.checkRemove()
            guard shared.check.running == nil else { throw TargetError(description: "a check is running") }
            let leg = shared.target.leg
            shared.target.remove()
            shared.verifying = nil
            return (path, leg)
        }
        // Closed once the writes still in flight on it end: it can be added again at once.
        leg?.close()
        await recorder.recordRemoval()
        logger.notice("target removed, mirror degraded", metadata: ["target": "\(removed)"])
        return removed
    }

    // MARK: Export operations

    /// The legs a request works on, as they were when it started.
    private struct Legs {
        let source: any Leg
        /// Nil when degraded or failed.
        let target: (any Leg)?
    }

    /// Runs a request through the gate (it waits while the legs switch roles), then `admitted`.
    private func gated<T: Sendable>(
        _ command: ExportCommand?, offset: UInt64, length: UInt64, lockingRegions: Bool = true, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (_ legs: Legs, _ promise: EventLoopPromise<T>) -> Void
    ) -> EventLoopFuture<T> {
        var waiting: EventLoopFuture<T>?
        gate.enter(otherwise: {
            let promise = eventLoop.makePromise(of: T.self)
            waiting = promise.futureResult
            return { [self] in
                eventLoop.execute { [self] in
                    admitted(command, offset: offset, length: length, lockingRegions: lockingRegions, on: eventLoop, body)
                        .cascade(to: promise)
                }
            }
        })
        return waiting ?? admitted(command, offset: offset, length: length, lockingRegions: lockingRegions, on: eventLoop, body)
    }

    /// Runs a tracked, range-checked operation with its regions locked shared (unless
    /// `lockingRegions` is false: operations that only read the source need no lock); `body` gets
    /// the legs (the target nil when degraded) and must complete the promise exactly once. Leaves
    /// the gate when it completes.
    private func admitted<T: Sendable>(
        _ command: ExportCommand?, offset: UInt64, length: UInt64, lockingRegions: Bool, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (_ legs: Legs, _ promise: EventLoopPromise<T>) -> Void
    ) -> EventLoopFuture<T> {
        let regions = lockingRegions ? core.shared.withLock { $0.bitmap.regions(offset: offset, length: length) } : 0..<0
        let recordsIntent = (command?.modifies ?? false) && recorder.recordsWrites
        copier.foregroundArrived()
        let future = tracker.run(self, command, offset: offset, length: length, on: eventLoop) { (promise: EventLoopPromise<T>) in
            core.locks.lock(regions, .shared) { [self] in
                let legs = core.shared.withLock { Legs(source: $0.source, target: $0.target.healthy) }
                // Write intent before write (invariant 4): while this request is in flight its
                // regions stay set on disk; a clear bit is set durably before any data moves.
                let waitsForIntent = recordsIntent && recorder.writeBegins(regions)
                // What the request holds (its regions' lock and, if it modifies, their write
                // intent) is given back once, when it completes.
                promise.futureResult.whenComplete { [self] _ in
                    if recordsIntent { recorder.writeEnded(regions) }
                    core.locks.unlock(regions, .shared)
                }
                guard waitsForIntent else { return body(legs, promise) }
                recorder.persist(regions) { [logger] result in
                    switch result {
                    case .success: eventLoop.execute { body(legs, promise) }  // back to the request's event loop
                    case .failure(let error):
                        logger.error("cannot record write intent; request refused", metadata: ["error": "\(error)"])
                        promise.fail(BlockExportError(.io, "\(error)"))
                    }
                }
            }
        }
        future.whenComplete { [gate] _ in gate.leave() }
        return future
    }

    /// Runs the same operation on source and target (when there is one) and completes when both
    /// did. A source failure fails the request; a target failure degrades the mirror. When both
    /// succeeded, the regions the range covers whole hold the same bytes on both legs: clean;
    /// without a healthy target, the regions it touched are dirty.
    private func fanOut(offset: UInt64, length: UInt64, legs: Legs, promise: EventLoopPromise<Void>,
                        _ operation: @escaping @Sendable (any Leg, @escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) {
        let target = legs.target
        let outcome = Mutex<(pending: Int, source: Result<Void, BlockIOError>?, targetOK: Bool)>((target == nil ? 1 : 2, nil, target != nil))
        let finish: @Sendable () -> Void = { [self] in
            let (sourceResult, targetOK) = outcome.withLock { ($0.source!, $0.targetOK) }
            switch sourceResult {
            case .success:
                core.shared.withLock { shared in
                    if targetOK, let target, shared.target.isHealthy(target) {
                        for region in shared.bitmap.regionsFullyCovered(offset: offset, length: length) { shared.markClean(region) }
                    } else {
                        // Degraded, or the target failed: the target lacks this write.
                        for region in shared.bitmap.regions(offset: offset, length: length) { shared.bitmap.setDirty(region) }
                    }
                }
                core.settle()
                promise.succeed(())
            case .failure(let error):
                // The target may now hold bytes the source lacks: copy the regions again.
                core.shared.withLock { shared in
                    for region in shared.bitmap.regions(offset: offset, length: length) { shared.bitmap.setDirty(region) }
                }
                promise.fail(BlockExportError(error))
                copier.pump()
            }
        }
        operation(legs.source) { result in
            if outcome.withLock({ $0.source = result; $0.pending -= 1; return $0.pending == 0 }) { finish() }
        }
        if let target {
            operation(target) { [self] result in
                if case .failure(let error) = result { core.targetFailed(error, on: target) }
                let last = outcome.withLock { state -> Bool in
                    if case .failure = result { state.targetOK = false }
                    state.pending -= 1
                    return state.pending == 0
                }
                if last { finish() }
            }
        }
    }

    public func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        gated(.read, offset: offset, length: UInt64(length), lockingRegions: false, on: eventLoop) { [pool] legs, promise in
            legs.source.read(offset: offset, length: length, allocator: allocator, pool: pool, completing: promise)
        }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let length = data.readableBytes
        // Copy the payload now: `data` belongs to the connection's input buffer.
        let buffer = pool.take(capacity: max(length, 1))
        data.withUnsafeReadableBytes { if length > 0 { buffer.baseAddress.copyMemory(from: $0.baseAddress!, byteCount: length) } }
        let future: EventLoopFuture<Void> = gated(.write, offset: offset, length: UInt64(length), on: eventLoop) { [self] legs, promise in
            guard length > 0 else { return promise.succeed(()) }
            fanOut(offset: offset, length: UInt64(length), legs: legs, promise: promise) { device, done in
                device.write(from: buffer.baseAddress, count: length, offset: offset, durable: fua, completion: done)
            }
        }
        return future.always { [pool] _ in pool.recycle(buffer) }
    }

    /// FLUSH: both legs durable, then the bitmap file saved (so a restart recopies little).
    public func flush(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        gated(nil, offset: 0, length: 0, on: eventLoop) { [self] legs, promise in
            let flushed = eventLoop.makePromise(of: Void.self)
            fanOut(offset: 0, length: 0, legs: legs, promise: flushed) { device, done in device.flush(completion: done) }
            flushed.futureResult.whenComplete { [self] result in
                guard case .success = result else { return promise.completeWith(result) }
                // A writeback error a bitmap save's fdatasync took from the source is this FLUSH's.
                if let error = core.shared.withLock({ shared -> BlockIOError? in
                    defer { shared.unreportedSourceError = nil }
                    return shared.unreportedSourceError
                }) {
                    return promise.fail(BlockExportError(error))
                }
                guard recorder.recordsWrites else { return promise.succeed(()) }
                recorder.save { promise.completeWith($0.mapError { BlockExportError(.io, "\($0)") }) }
            }
        }
    }

    /// TRIM zeroes both legs (a hole on files), so that they stay identical whatever the device
    /// makes of a discard.
    public func trim(offset: UInt64, length: UInt64, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        zero(.trim, offset: offset, length: length, mayTrim: true, fua: fua, on: eventLoop)
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fastOnly: Bool, fua: Bool,
                            on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        zero(.writeZeroes, offset: offset, length: length, mayTrim: mayTrim, fua: fua, on: eventLoop)
    }

    private func zero(_ command: ExportCommand, offset: UInt64, length: UInt64, mayTrim: Bool, fua: Bool,
                      on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        gated(command, offset: offset, length: length, on: eventLoop) { [self] legs, promise in
            guard length > 0 else { return promise.succeed(()) }
            fanOut(offset: offset, length: length, legs: legs, promise: promise) { device, done in
                device.writeZeroes(offset: offset, length: length, mayDeallocate: mayTrim, fastOnly: false) { result in
                    guard fua, case .success = result else { return done(result) }
                    device.flush(completion: done)
                }
            }
        }
    }

    public func cache(offset: UInt64, length: UInt64, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        gated(.cache, offset: offset, length: length, lockingRegions: false, on: eventLoop) { legs, promise in
            legs.source.prefetch(offset: offset, length: length) { promise.completeWith($0.mapError { BlockExportError($0) }) }
        }
    }

    public func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[BlockExtent]> {
        gated(.blockStatus, offset: offset, length: length, lockingRegions: false, on: eventLoop) { legs, promise in
            legs.source.blockStatus(offset: offset, length: length, maxExtents: maxExtents, completing: promise)
        }
    }

    /// Stops the copier, waits for requests in flight, makes both legs durable, saves the bitmap
    /// and closes the legs (also when a step failed).
    public func close() async throws {
        defer {
            source.close()
            core.shared.withLock { $0.target.leg }?.close()
        }
        core.shared.withLock { $0.stopping = true }
        recorder.stop()
        core.settle()
        await core.waitUntilBackgroundIdle()
        await tracker.drain()
        let target = core.shared.withLock { $0.target.healthy }
        try await source.flush()
        try await target?.flush()
        try await recorder.saveFinal()
    }
}
