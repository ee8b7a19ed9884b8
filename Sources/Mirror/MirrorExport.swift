import BlockExport
import BlockIO
import Dispatch
import Logging
import NIOCore
import Synchronization

/// The mirror: an export over a source OLD and an optional target NEW.
///
/// Reads come from the source, the only complete copy until the target is in sync (invariant 1).
/// A write goes to source and target together and is acknowledged only when both completed
/// (invariant 2). A background copier fills the target region by region, driven by the dirty
/// bitmap; it holds a region exclusively while it copies, and writes hold their regions shared, so a
/// copy never lands over a newer write (invariant 3). A target I/O error marks the target failed and
/// the mirror degraded, with no acknowledged write lost; a source error goes back to the client
/// (invariant 5). The source is written first-class on every path, so it is never older than what
/// was acknowledged (invariant 6).
public final class MirrorExport: BlockExport, @unchecked Sendable {
    /// Why a target cannot be attached.
    public struct AttachError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public let source: BlockDevice
    public let capabilities: ExportCapabilities
    public var size: UInt64 { source.size }
    public var exportDescription: String { "mirror of \(source.path)" }

    /// Copies in flight at once, each one region.
    public let copiesInFlight: Int
    private let pool: BufferPool
    private let logger: Logger
    private let locks = RegionLocks()
    private let tracker = InFlightTracker()
    /// The persisted write-intent bitmap, if any (invariant 4).
    public let intentLog: WriteIntentLog?
    /// Serialises every write of the bitmap file, each from a snapshot taken when it runs, so a
    /// later write of a page never carries fewer set bits than an earlier one did for a writer.
    private let intentQueue = DispatchQueue(label: "blockmirror.write-intent")
    /// Copied regions between two lazy saves of the bitmap.
    private static let regionsPerSave = 256

    private struct Shared {
        var target: BlockDevice?
        var bitmap: RegionBitmap
        var failure: String?
        var stopping = false
        var cursor = 0
        var copying = 0
        var bytesCopied: UInt64 = 0
        var waitersForSync: [CheckedContinuation<MirrorStatus, Never>] = []
        var waitersForCopier: [CheckedContinuation<Void, Never>] = []
        /// What the bitmap file holds (a superset of what may differ).
        var persisted: RegionBitmap
        /// Modifying requests in flight per region: their bits stay set on disk.
        var active: [Int: Int] = [:]
        var copiedSinceSave = 0
    }
    private let shared: Mutex<Shared>

    /// A mirror over `source`, degraded until `attach` gives it a target. With `intentLog`, the
    /// bitmap is persisted there; `resuming` is the bitmap read back from it after a crash or stop
    /// (otherwise every region starts dirty).
    public init(source: BlockDevice, regionSize: UInt64 = 1 << 20, copiesInFlight: Int = 8, pool: BufferPool, logger: Logger,
                intentLog: WriteIntentLog? = nil, resuming: RegionBitmap? = nil) {
        self.source = source
        self.intentLog = intentLog
        self.pool = pool
        self.logger = logger
        self.copiesInFlight = copiesInFlight
        self.capabilities = ExportCapabilities(
            isReadOnly: false, canTrim: true, canWriteZeroes: true, canFastZero: false, canMultiConnect: true,
            blockSizes: BlockSizeConstraints(minimum: 1, preferred: UInt32(max(4096, source.alignment)),
                                             maximum: BlockSizeConstraints.maximumPayload))
        let bitmap = resuming ?? RegionBitmap(deviceSize: source.size, regionSize: regionSize, allDirty: true)
        shared = Mutex(Shared(bitmap: bitmap, persisted: bitmap))
    }

    // MARK: Status and control

    public var status: MirrorStatus {
        shared.withLock { Self.status(of: $0) }
    }

    private static func status(of shared: Shared) -> MirrorStatus {
        let state: MirrorState
        if shared.stopping { state = .stopping }
        else if shared.failure != nil { state = .targetFailed }
        else if shared.target == nil { state = .degraded }
        else if shared.bitmap.dirtyCount > 0 { state = .recovering }
        else { state = .inSync }
        return MirrorStatus(state: state, regionSize: shared.bitmap.regionSize, regionsTotal: shared.bitmap.regionCount,
                            regionsDirty: shared.bitmap.dirtyCount, bytesCopied: shared.bytesCopied, failure: shared.failure)
    }

    /// Attaches a target (like `mdadm --add`) and starts the recovery: every region is copied, or,
    /// with `resume`, only the regions the bitmap marks. A target smaller than the source is
    /// refused; a larger one is fine (the export keeps the source's size).
    public func attach(target: BlockDevice, resume: Bool = false) throws(AttachError) {
        guard target.size >= source.size else {
            throw AttachError(description: "target \(target.path) has \(target.size) bytes, smaller than source \(source.path) (\(source.size) bytes)")
        }
        try shared.withLock { shared throws(AttachError) in
            guard shared.target == nil || shared.failure != nil else {
                throw AttachError(description: "a target is already attached (\(shared.target!.path))")
            }
            shared.target = target
            shared.failure = nil
            if !resume { shared.bitmap.setAll() }
            shared.cursor = 0
        }
        logger.info("target attached, recovery starts", metadata: ["target": "\(target.path)", "regions": "\(status.regionsTotal)"])
        pump()
    }

    /// Returns when the target is in sync, has failed, or the mirror is stopping.
    public func waitUntilSettled() async -> MirrorStatus {
        await withCheckedContinuation { continuation in
            let settled: MirrorStatus? = shared.withLock { shared in
                let status = Self.status(of: shared)
                guard status.state == .recovering else { return status }
                shared.waitersForSync.append(continuation)
                return nil
            }
            if let settled { continuation.resume(returning: settled) }
        }
    }

    // MARK: Target failure

    /// Marks the target failed after an I/O error on it: writes continue on the source alone.
    private func targetFailed(_ error: BlockIOError) {
        let first: Bool = shared.withLock { shared in
            guard shared.failure == nil, shared.target != nil else { return false }
            shared.failure = error.description
            return true
        }
        if first {
            logger.error("target failed, mirror degraded: serving from the source alone", metadata: ["error": "\(error)"])
            settle()
        }
    }

    /// Wakes `waitUntilSettled` callers when the state is no longer `recovering`.
    private func settle() {
        let (waiters, status): ([CheckedContinuation<MirrorStatus, Never>], MirrorStatus) = shared.withLock { shared in
            let status = Self.status(of: shared)
            guard status.state != .recovering else { return ([], status) }
            defer { shared.waitersForSync = [] }
            return (shared.waitersForSync, status)
        }
        for waiter in waiters { waiter.resume(returning: status) }
    }

    // MARK: Background copy

    /// Starts copies up to `copiesInFlight` while dirty regions remain.
    private func pump() {
        while true {
            let next: (region: Int, target: BlockDevice)? = shared.withLock { shared in
                guard !shared.stopping, shared.failure == nil, let target = shared.target,
                      shared.copying < copiesInFlight, shared.bitmap.dirtyCount > shared.copying else { return nil }
                guard let region = shared.bitmap.nextDirty(from: shared.cursor) ?? shared.bitmap.nextDirty(from: 0) else { return nil }
                shared.cursor = region + 1
                shared.copying += 1
                return (region, target)
            }
            guard let next else { return }
            copy(region: next.region, to: next.target)
        }
    }

    /// Copies one region under its exclusive lock; clears its bit only if the copy completed.
    private func copy(region: Int, to target: BlockDevice) {
        locks.lock(region..<(region + 1), .exclusive) { [self] in
            let (stillDirty, range): (Bool, (offset: UInt64, length: UInt64)) = shared.withLock {
                ($0.bitmap.isDirty(region), $0.bitmap.byteRange(of: region))
            }
            guard stillDirty else { return copied(region, bytes: 0, clean: false) }
            if let map = try? source.allocationMap(offset: range.offset, length: range.length, maxExtents: 1),
               map.count == 1, map[0].isHole, map[0].length == range.length {
                // A hole of a sparse source: zero the target's region without reading anything.
                return target.writeZeroes(offset: range.offset, length: range.length, mayDeallocate: true, fastOnly: false) { [self] in
                    targetWritten(region, bytes: range.length, $0)
                }
            }
            let length = Int(range.length)
            let buffer = pool.take(capacity: length)
            source.read(into: buffer.baseAddress, count: length, offset: range.offset) { [self] result in
                if case .failure(let error) = result {
                    pool.recycle(buffer)
                    logger.error("copier cannot read the source; region stays dirty", metadata: ["error": "\(error)"])
                    return copied(region, bytes: 0, clean: false, stall: true)
                }
                let write: (@escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void
                if UnsafeRawBufferPointer(start: buffer.baseAddress, count: length).allSatisfy({ $0 == 0 }) {
                    // An all-zero region: zero the target cheaply instead of writing zeroes.
                    write = { target.writeZeroes(offset: range.offset, length: range.length, mayDeallocate: true, fastOnly: false, completion: $0) }
                } else {
                    write = { target.write(from: buffer.baseAddress, count: length, offset: range.offset, durable: false, completion: $0) }
                }
                write { [self] result in
                    pool.recycle(buffer)
                    targetWritten(region, bytes: range.length, result)
                }
            }
        }
    }

    /// Ends a copy whose target write finished: clean on success, target failed otherwise.
    private func targetWritten(_ region: Int, bytes: UInt64, _ result: Result<Void, BlockIOError>) {
        switch result {
        case .success: copied(region, bytes: bytes, clean: true)
        case .failure(let error):
            targetFailed(error)
            copied(region, bytes: 0, clean: false)
        }
    }

    /// Ends one copy: clears the bit if asked, releases the region, starts the next copies.
    private func copied(_ region: Int, bytes: UInt64, clean: Bool, stall: Bool = false) {
        let (idle, save): (Bool, Bool) = shared.withLock { shared in
            if clean { shared.bitmap.setClean(region) }
            shared.bytesCopied += bytes
            shared.copying -= 1
            shared.copiedSinceSave += clean ? 1 : 0
            let save = shared.copiedSinceSave >= Self.regionsPerSave || (clean && shared.bitmap.dirtyCount == 0)
            if save { shared.copiedSinceSave = 0 }
            return (shared.copying == 0, save)
        }
        if save { intentQueue.async { [self] in try? saveBitmap() } }
        locks.unlock(region..<(region + 1), .exclusive)
        if idle { wakeCopierWaiters() }
        settle()
        if !stall { pump() }
    }

    private func wakeCopierWaiters() {
        let waiters: [CheckedContinuation<Void, Never>] = shared.withLock { shared in
            guard shared.copying == 0 else { return [] }
            defer { shared.waitersForCopier = [] }
            return shared.waitersForCopier
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Export operations

    /// Runs a tracked, range-checked operation with its regions locked shared (unless
    /// `lockingRegions` is false: operations that only read the source need no lock); `body` gets
    /// the target (nil when degraded) and must complete the promise exactly once.
    private func locked<T: Sendable>(
        _ command: ExportCommand?, offset: UInt64, length: UInt64, lockingRegions: Bool = true, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (_ target: BlockDevice?, _ promise: EventLoopPromise<T>) -> Void
    ) -> EventLoopFuture<T> {
        let regions = lockingRegions ? shared.withLock { $0.bitmap.regions(offset: offset, length: length) } : 0..<0
        let modifies = command?.modifies ?? false
        return tracker.run(self, command, offset: offset, length: length, on: eventLoop) { (promise: EventLoopPromise<T>) in
            locks.lock(regions, .shared) { [self] in
                let target = shared.withLock { $0.failure == nil ? $0.target : nil }
                guard modifies, let intentLog else { return body(target, promise) }
                // Write intent before write (invariant 4): while this request is in flight its
                // regions stay set on disk; a clear bit is set durably before any data moves.
                let needsPersist: Bool = shared.withLock { shared in
                    var newBits = false
                    for region in regions {
                        shared.active[region, default: 0] += 1
                        if shared.persisted.setDirty(region) { newBits = true }
                    }
                    return newBits
                }
                promise.futureResult.whenComplete { [self] _ in
                    shared.withLock { shared in
                        for region in regions {
                            shared.active[region]! -= 1
                            if shared.active[region] == 0 { shared.active[region] = nil }
                        }
                    }
                }
                guard needsPersist else { return body(target, promise) }
                intentQueue.async { [self] in
                    do {
                        try intentLog.persist(regions: Array(regions), of: shared.withLock { $0.persisted })
                        body(target, promise)
                    } catch {
                        logger.error("cannot record write intent; request refused", metadata: ["error": "\(error)"])
                        promise.fail(BlockExportError(.io, "\(error)"))
                    }
                }
            }
            promise.futureResult.whenComplete { [locks] _ in locks.unlock(regions, .shared) }
        }
    }

    /// Writes the bitmap file lazily: bits of regions now clean and with no write in flight are
    /// cleared on disk. Runs on `intentQueue` only.
    private func saveBitmap() throws {
        guard let intentLog else { return }
        let snapshot: RegionBitmap = shared.withLock { shared in
            var persisted = shared.bitmap
            for region in shared.active.keys { persisted.setDirty(region) }
            shared.persisted = persisted
            return persisted
        }
        try intentLog.save(snapshot)
    }

    /// Saves the bitmap file now (FLUSH and stop do this).
    private func saveBitmapNow() async throws {
        guard intentLog != nil else { return }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            intentQueue.async { [self] in continuation.resume(with: Result { try saveBitmap() }) }
        }
    }

    /// Runs the same operation on source and target (when there is one) and completes when both
    /// did. A source failure fails the request; a target failure degrades the mirror. When both
    /// succeeded, the regions the range covers whole hold the same bytes on both legs: clean;
    /// without a healthy target, the regions it touched are dirty.
    private func fanOut(offset: UInt64, length: UInt64, target: BlockDevice?, promise: EventLoopPromise<Void>,
                        _ operation: @escaping @Sendable (BlockDevice, @escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) {
        let outcome = Mutex<(pending: Int, source: Result<Void, BlockIOError>?, targetOK: Bool)>((target == nil ? 1 : 2, nil, target != nil))
        let finish: @Sendable () -> Void = { [self] in
            let (sourceResult, targetOK) = outcome.withLock { ($0.source!, $0.targetOK) }
            switch sourceResult {
            case .success:
                shared.withLock { shared in
                    if targetOK {
                        for region in shared.bitmap.regionsFullyCovered(offset: offset, length: length) { shared.bitmap.setClean(region) }
                    } else {
                        // Degraded, or the target failed: the target lacks this write.
                        for region in shared.bitmap.regions(offset: offset, length: length) { shared.bitmap.setDirty(region) }
                    }
                }
                settle()
                promise.succeed(())
            case .failure(let error):
                // The target may now hold bytes the source lacks: copy the regions again.
                shared.withLock { shared in
                    for region in shared.bitmap.regions(offset: offset, length: length) { shared.bitmap.setDirty(region) }
                }
                promise.fail(BlockExportError(error))
            }
        }
        operation(source) { result in
            if outcome.withLock({ $0.source = result; $0.pending -= 1; return $0.pending == 0 }) { finish() }
        }
        if let target {
            operation(target) { [self] result in
                if case .failure(let error) = result { targetFailed(error) }
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
        locked(.read, offset: offset, length: UInt64(length), lockingRegions: false, on: eventLoop) { [self] _, promise in
            source.read(offset: offset, length: length, allocator: allocator, pool: pool, completing: promise)
        }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let length = data.readableBytes
        // Copy the payload now: `data` belongs to the connection's input buffer.
        let buffer = pool.take(capacity: max(length, 1))
        data.withUnsafeReadableBytes { if length > 0 { buffer.baseAddress.copyMemory(from: $0.baseAddress!, byteCount: length) } }
        let future: EventLoopFuture<Void> = locked(.write, offset: offset, length: UInt64(length), on: eventLoop) { [self] target, promise in
            guard length > 0 else { return promise.succeed(()) }
            fanOut(offset: offset, length: UInt64(length), target: target, promise: promise) { device, done in
                device.write(from: buffer.baseAddress, count: length, offset: offset, durable: fua, completion: done)
            }
        }
        return future.always { [pool] _ in pool.recycle(buffer) }
    }

    /// FLUSH: both legs durable, then the bitmap file saved (so a restart recopies little).
    public func flush(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        locked(nil, offset: 0, length: 0, on: eventLoop) { [self] target, promise in
            let legs = eventLoop.makePromise(of: Void.self)
            fanOut(offset: 0, length: 0, target: target, promise: legs) { device, done in device.flush(completion: done) }
            legs.futureResult.whenComplete { [self] result in
                guard case .success = result, intentLog != nil else { return promise.completeWith(result) }
                intentQueue.async { [self] in
                    promise.completeWith(Result { try saveBitmap() }.mapError { BlockExportError(.io, "\($0)") })
                }
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
        locked(command, offset: offset, length: length, on: eventLoop) { [self] target, promise in
            guard length > 0 else { return promise.succeed(()) }
            fanOut(offset: offset, length: length, target: target, promise: promise) { device, done in
                device.writeZeroes(offset: offset, length: length, mayDeallocate: mayTrim, fastOnly: false) { result in
                    guard fua, case .success = result else { return done(result) }
                    device.flush(completion: done)
                }
            }
        }
    }

    public func cache(offset: UInt64, length: UInt64, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        locked(.cache, offset: offset, length: length, lockingRegions: false, on: eventLoop) { [self] _, promise in
            source.prefetch(offset: offset, length: length) { promise.completeWith($0.mapError { BlockExportError($0) }) }
        }
    }

    public func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[BlockExtent]> {
        locked(.blockStatus, offset: offset, length: length, lockingRegions: false, on: eventLoop) { [self] _, promise in
            source.blockStatus(offset: offset, length: length, maxExtents: maxExtents, completing: promise)
        }
    }

    /// Stops the copier, waits for requests in flight, and makes both legs durable.
    public func close() async throws {
        shared.withLock { $0.stopping = true }
        settle()
        await withCheckedContinuation { continuation in
            let idle = shared.withLock { shared -> Bool in
                if shared.copying == 0 { return true }
                shared.waitersForCopier.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
        await tracker.drain()
        let target = shared.withLock { $0.failure == nil ? $0.target : nil }
        try await source.flush()
        try await target?.flush()
        try await saveBitmapNow()
    }
}
