import BlockExport
import BlockIO
import Dispatch
import Logging
import MirrorModel
import NIOCore
import struct Synchronization.Atomic

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
    /// Why a target cannot be attached, failed or removed.
    public struct TargetError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public let source: any Leg
    public let capabilities: ExportCapabilities
    public var size: UInt64 { source.size }
    public var exportDescription: String { "mirror of \(source.path)" }

    /// Copies in flight at once, each one region.
    public let copiesInFlight: Int
    let pool: BufferPool
    let logger: Logger
    let locks = RegionLocks()
    private let tracker = InFlightTracker()
    /// Paces the copy and the check (speed limits, speed shown, yield to foreground I/O).
    let throttle: CopyThrottle
    /// When the last client request arrived (monotonic nanoseconds): the copier yields while
    /// clients are active.
    private let lastForeground = Atomic<UInt64>(0)
    /// Client activity this recent counts as "busy".
    private static let busyWindowNanos: UInt64 = 200_000_000
    /// Every second: checks that the legs are still the files or devices opened (a replaced target
    /// fails), then saves the bitmap file, clearing the bits of regions no write touched lately.
    private var housekeepingTimer: (any DispatchSourceTimer)?
    /// A region written this recently keeps its bit on disk (md's bitmap daemon waits a few idle
    /// seconds too): random writes then do not set and clear the same bits over and over.
    public let writeHoldNanos: UInt64
    /// The persisted write-intent bitmap, if any (invariant 4).
    public let intentLog: WriteIntentLog?
    /// Serialises every write of the bitmap file, each from a snapshot taken when it runs, so a
    /// later write of a page never carries fewer set bits than an earlier one did for a writer.
    private let intentQueue = DispatchQueue(label: "blockmirror.write-intent")

    struct Shared {
        /// The target and its lifecycle.
        var target = TargetSlot()
        var bitmap: RegionBitmap
        var stopping = false
        /// The copier's cursor, copies running, delays and lazy saves.
        var copier = CopierState()
        /// Awaited by `waitUntilSettled` while recovering (made by the first waiter, fulfilled
        /// and cleared by `settle`).
        var settled: OneShot<MirrorStatus>?
        /// Awaited by `close` until neither copies nor check workers run.
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
        /// A region now holds the same bytes on both legs.
        mutating func markClean(_ region: Int) {
            bitmap.setClean(region)
            verifying?.setClean(region)
        }
    }
    let shared: Mutex<Shared>

    /// A mirror over `source`, degraded until `attach` gives it a target. With `intentLog`, the
    /// bitmap is persisted there; `resuming` is the bitmap read back from it after a crash or stop
    /// (otherwise every region starts dirty).
    public init(source: any Leg, regionSize: UInt64 = 1 << 20, copiesInFlight: Int = 8, limits: SpeedLimits = SpeedLimits(),
                pool: BufferPool, logger: Logger, intentLog: WriteIntentLog? = nil, resuming: RegionBitmap? = nil,
                writeHoldNanos: UInt64 = 2_000_000_000) {
        self.source = source
        self.writeHoldNanos = writeHoldNanos
        self.throttle = CopyThrottle(limits: limits)
        self.intentLog = intentLog
        self.pool = pool
        self.logger = logger
        self.copiesInFlight = copiesInFlight
        self.capabilities = ExportCapabilities(
            isReadOnly: false, canTrim: true, canWriteZeroes: true, canFastZero: false, canMultiConnect: true,
            blockSizes: BlockSizeConstraints(minimum: 1, preferred: UInt32(max(4096, source.alignment)),
                                             maximum: BlockSizeConstraints.maximumPayload))
        let bitmap = resuming ?? RegionBitmap(deviceSize: source.size, regionSize: regionSize, allDirty: true)
        shared = Mutex(Shared(bitmap: bitmap, intent: WriteIntentState(persisted: bitmap)))
        let timer = DispatchSource.makeTimerSource(queue: intentQueue)
        timer.schedule(deadline: .now() + 1, repeating: 1)
        timer.setEventHandler { [weak self] in
            guard let self else { return }
            do { try saveBitmap() } catch { logger.error("cannot save the bitmap", metadata: ["error": "\(error)"]) }
        }
        timer.resume()
        housekeepingTimer = timer
    }

    deinit { housekeepingTimer?.cancel() }

    /// Monotonic nanoseconds.
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    // MARK: Status and control

    public var status: MirrorStatus {
        let now = Self.now()
        var status = shared.withLock { Self.status(of: $0) }
        status.source = source.path
        status.bitmap = intentLog?.path
        let speed = throttle.bytesPerSecond(now: now)
        status.speedBytesPerSecond = UInt64(speed)
        if status.state == .recovering, speed >= 1 { status.etaSeconds = Double(status.bytesDirty) / speed }
        status.speedLimits = throttle.limits
        status.foregroundInFlight = tracker.count
        return status
    }

    /// The state and counters (speed, limits and requests in flight are filled in by `status`).
    static func status(of shared: Shared) -> MirrorStatus {
        let state: MirrorState
        if shared.stopping { state = .stopping }
        else if shared.target.failure != nil { state = .targetFailed }
        else if shared.target.leg == nil { state = .degraded }
        else if shared.bitmap.dirtyCount > 0 { state = .recovering }
        else { state = .inSync }
        return MirrorStatus(state: state, source: "", target: shared.target.leg?.path, size: shared.bitmap.deviceSize,
                            regionSize: shared.bitmap.regionSize, regionsTotal: shared.bitmap.regionCount,
                            regionsDirty: shared.bitmap.dirtyCount, bytesCopied: shared.copier.bytesCopied, speedBytesPerSecond: 0,
                            speedLimits: SpeedLimits(), foregroundInFlight: 0, check: shared.check.running, lastCheck: shared.check.last,
                            failure: shared.target.failure, sourceProblem: shared.sourceProblem,
                            regionsVerifying: shared.verifying?.dirtyCount,
                            verifiedDiffering: shared.verifying == nil ? nil : shared.verifiedDiffering)
    }

    /// Changes the copy's speed limits while it runs (like writing md's sync_speed_min/max).
    public func setSpeedLimits(_ limits: SpeedLimits) {
        throttle.limits = limits
        logger.info("speed limits changed", metadata: ["min": "\(limits.minimum)K/s", "max": "\(limits.maximum.map { "\($0)K/s" } ?? "none")"])
        pump()
    }

    /// Attaches a target (like `mdadm --add`) and starts the recovery. Without a bitmap file every
    /// region is copied; with one, only the regions it marks when its bits can be trusted for this
    /// target (`BitmapTrust`: the target it was written for, not written outside the mirror since)
    /// — and the regions it calls clean where a target file has a hole over the source's data are
    /// compared before being trusted, as every clean region is with `verifyClean`. The source
    /// itself (by any path: symlink, hard link, loop device) and a target smaller than the source
    /// are refused; a larger one is fine (the export keeps the source's size). Returns the number of
    /// regions to copy.
    @discardableResult
    public func attach(target: any Leg, verifyClean: Bool = false) async throws(TargetError) -> Int {
        try Self.refuse(target.identity, asTargetOf: source)
        var verdict: BitmapTrust.Verdict?
        if let intentLog {
            verdict = await on(intentQueue) { intentLog.verdict(forTarget: target.identity, trace: target.writeTrace()) }
        }
        // Clean regions in doubt: all of them if asked, else those a sparse target lacks outright.
        let resumed = shared.withLock { $0.bitmap }
        var doubtful = RegionBitmap(deviceSize: resumed.deviceSize, regionSize: resumed.regionSize, allDirty: verifyClean)
        if !verifyClean, target.identity.kind == .file, case .trust = verdict {
            // SEEK_DATA/SEEK_HOLE over both legs can take a while: not on a cooperative thread.
            doubtful = await on(.global()) { [source] in resumed.holes(of: target).subtracting(resumed.holes(of: source)) }
        }
        let bitmap: RegionBitmap = try shared.withLock { shared throws(TargetError) in
            guard !shared.stopping else { throw TargetError(description: "the mirror is stopping") }
            try shared.target.checkAttach(target, sourcePath: source.path, sourceSize: source.size)
            guard shared.check.running == nil else { throw TargetError(description: "a check is running") }
            shared.target.attach(target)
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
            shared.withLock { $0.target.attached() }
            pump()
        }
        if let intentLog {
            // The bitmap file names the new target and marks everything to copy before any copy.
            let result = await on(intentQueue) { [self] () -> Result<Void, WriteIntentLog.Failure> in
                let (queued, persisted) = shared.withLock { ($0.intent.queue(bitmap), $0.intent.persisted) }
                return Result { () throws(WriteIntentLog.Failure) in
                    try intentLog.attach(target: target.identity, bitmap: persisted)
                    shared.withLock { $0.intent.written(queued) }
                }
            }
            if case .failure(let failure) = result {
                _ = markFailed("\(failure)", on: target)
                throw TargetError(description: "\(failure)")
            }
        }
        let (dirty, verifying) = shared.withLock { ($0.bitmap.dirtyCount, $0.verifying?.dirtyCount ?? 0) }
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

    /// Refuses a would-be target that is the source itself, by whatever path (symlink, hard link,
    /// `/proc/PID/fd`, a loop device over the source file): before it is opened, which would
    /// otherwise fail as "in use" by this very mirror.
    public static func refuseSource(_ path: String, of source: any Leg) throws(TargetError) {
        if case .success(let identity) = LegIdentity.probe(path) { try refuse(identity, asTargetOf: source) }
    }

    private static func refuse(_ identity: LegIdentity, asTargetOf source: any Leg) throws(TargetError) {
        guard identity.sharesStorage(with: source.identity) else { return }
        throw TargetError(description: "\(identity.path) is the source \(source.path) (the same \(source.identity.kind.name)): "
                          + "a mirror needs a second device")
    }

    /// Returns when the target is in sync, has failed, or the mirror is stopping.
    public func waitUntilSettled() async -> MirrorStatus {
        let (status, settled) = shared.withLock { shared -> (MirrorStatus, OneShot<MirrorStatus>?) in
            let status = Self.status(of: shared)
            guard status.state == .recovering else { return (status, nil) }
            if shared.settled == nil { shared.settled = OneShot() }
            return (status, shared.settled)
        }
        guard let settled else { return status }
        return await settled.wait()
    }

    // MARK: Target failure

    /// Marks the target failed after an I/O error on it: writes continue on the source alone.
    func targetFailed(_ error: BlockIOError, on device: any Leg) {
        if markFailed(error.description, on: device) {
            logger.error("target failed, mirror degraded: serving from the source alone", metadata: ["error": "\(error)"])
        }
    }

    /// Records the target's failure (the first reason wins); true if it was healthy until now.
    private func markFailed(_ reason: String, on device: any Leg) -> Bool {
        let first = shared.withLock { $0.target.fail(reason, on: device) }
        if first { settle() }
        return first
    }

    /// Marks a healthy target faulty on the administrator's word (`mdadm --fail`): writes go to the
    /// source alone from now on and the copy stops; the target keeps what it had.
    public func failTarget() throws(TargetError) {
        guard let target = shared.withLock({ $0.target.healthy }) else {
            throw TargetError(description: "no healthy target to fail (state \(status.state.rawValue))")
        }
        if markFailed("\(target.path) marked faulty by the administrator", on: target) {
            logger.notice("target marked faulty, mirror degraded: serving from the source alone", metadata: ["target": "\(target.path)"])
        }
    }

    /// Detaches a failed target (`mdadm --remove`): the mirror is degraded and a new target can be
    /// added. An active target must be failed first, as md requires. Returns the removed path.
    @discardableResult
    public func removeTarget() async throws(TargetError) -> String {
        let (removed, leg): (String, (any Leg)?) = try shared.withLock { shared throws(TargetError) in
            let path = try shared.target.checkRemove()
            guard shared.check.running == nil else { throw TargetError(description: "a check is running") }
            let leg = shared.target.leg
            shared.target.remove()
            shared.verifying = nil
            return (path, leg)
        }
        // Closed once the writes still in flight on it end: it can be added again at once.
        leg?.close()
        if let intentLog {
            // Never trusted again by these bits: what it holds from now on is unknown.
            let result = await on(intentQueue) { [self] () -> Result<Void, WriteIntentLog.Failure> in
                Result { () throws(WriteIntentLog.Failure) in try intentLog.detachTarget(bitmap: shared.withLock { $0.intent.persisted }) }
            }
            if case .failure(let failure) = result { logger.error("cannot record the removal in the bitmap", metadata: ["error": "\(failure)"]) }
        }
        logger.notice("target removed, mirror degraded", metadata: ["target": "\(removed)"])
        return removed
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

    // MARK: Background copy

    /// Starts copies up to the throttle's depth while dirty regions remain; when the speed limit
    /// holds the copy back, schedules itself for when it may go on.
    func pump() {
        while true {
            let now = Self.now()
            let last = lastForeground.load(ordering: .relaxed)
            let busy = tracker.count > 0 || last > now || now - last < Self.busyWindowNanos
            let depth = throttle.depth(full: copiesInFlight, foregroundBusy: busy, now: now)
            let next: (step: CopierState.Step, target: any Leg)? = shared.withLock { shared in
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

    /// Runs `body` on `queue` and returns its result, suspending the caller instead of blocking its
    /// thread: on the bitmap's serial queue (`intentQueue`, behind the saves and intent writes queued
    /// there), or on a global queue for system calls that may wait.
    private func on<T: Sendable>(_ queue: DispatchQueue, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in queue.async { continuation.resume(returning: body()) } }
    }

    /// Runs `pump` again after a delay; the copier was `delayed` by the caller. The retry holds the
    /// mirror weakly: a mirror closed and let go meanwhile frees its devices (and their locks) at
    /// once, not when the retry was due.
    private func pumpLater(afterNanoseconds nanos: UInt64) {
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanos))) { [weak self] in
            guard let self else { return }
            shared.withLock { $0.copier.resume() }
            pump()
        }
    }

    /// How long the copier waits before trying again after it could not read the source.
    private static let readRetryNanos: UInt64 = 5_000_000_000

    /// Copies one region under its exclusive lock; clears its bit only if the copy completed.
    private func copy(region: Int, to target: any Leg) {
        locks.lock(region..<(region + 1), .exclusive) { [self] in
            let (stillDirty, range): (Bool, (offset: UInt64, length: UInt64)) = shared.withLock {
                ($0.bitmap.isDirty(region), $0.bitmap.byteRange(of: region))
            }
            guard stillDirty else { return copied(region, target: target, bytes: 0, clean: false) }
            // The lock may have been granted on an event loop; SEEK_DATA/SEEK_HOLE can wait on the
            // filesystem, so a file source is asked from another thread.
            guard source.identity.kind == .file else { return copyData(region, range: range, to: target) }
            DispatchQueue.global().async { [self] in
                if let map = try? source.allocationMap(offset: range.offset, length: range.length, maxExtents: 1),
                   map.count == 1, map[0].isHole, map[0].length == range.length {
                    // A hole of a sparse source: zero the target's region without reading anything.
                    return target.writeZeroes(offset: range.offset, length: range.length, mayDeallocate: true, fastOnly: false) { [self] in
                        targetWritten(region, target: target, bytes: range.length, $0)
                    }
                }
                copyData(region, range: range, to: target)
            }
        }
    }

    /// Copies a region that holds data, under its exclusive lock (taken by `copy(region:to:)`):
    /// verified first when it is in doubt, else read from the source and written to the target.
    private func copyData(_ region: Int, range: (offset: UInt64, length: UInt64), to target: any Leg) {
        let length = Int(range.length)
        let buffer = pool.take(capacity: length)
        if shared.withLock({ $0.verifying?.isDirty(region) ?? false }) {
            return verifyThenCopy(region, range: range, buffer: buffer, to: target)
        }
        source.read(into: buffer.baseAddress, count: length, offset: range.offset) { [self] result in
            if case .failure(let error) = result {
                pool.recycle(buffer)
                logger.error("copier cannot read the source; region stays dirty", metadata: ["error": "\(error)"])
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
            let outcome = await LegComparison.compare(source, target, offset: range.offset, length: Int(range.length),
                                                      into: (buffer, targetBuffer))
            pool.recycle(targetBuffer)
            switch outcome {
            case .compared(let mismatches) where mismatches.isEmpty:
                pool.recycle(buffer)
                copied(region, target: target, bytes: 0, clean: true)
            case .compared:
                shared.withLock { $0.verifiedDiffering += 1 }
                write(region, range: range, from: buffer, to: target)
            case .firstFailed(let error):
                pool.recycle(buffer)
                logger.error("copier cannot read the source; region stays dirty", metadata: ["error": "\(error)"])
                copied(region, target: target, bytes: 0, clean: false, stall: true)
            case .secondFailed(let error):
                pool.recycle(buffer)
                targetFailed(error, on: target)
                copied(region, target: target, bytes: 0, clean: false)
            }
        }
    }

    /// Ends a copy whose target write finished: clean on success, target failed otherwise.
    private func targetWritten(_ region: Int, target: any Leg, bytes: UInt64, _ result: Result<Void, BlockIOError>) {
        switch result {
        case .success: copied(region, target: target, bytes: bytes, clean: true)
        case .failure(let error):
            targetFailed(error, on: target)
            copied(region, target: target, bytes: 0, clean: false)
        }
    }

    /// Ends one copy: clears the bit if asked, releases the region, starts the next copies.
    private func copied(_ region: Int, target: any Leg, bytes: UInt64, clean: Bool, stall: Bool = false) {
        var verified: Int?
        let (idle, save): (Bool, Bool) = shared.withLock { shared in
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
            logger.notice("the regions in doubt were compared: \(verified) differed and were copied, the others were clean")
        }
        if bytes > 0 { throttle.completed(bytes, now: Self.now()) }
        if save {
            intentQueue.async { [self] in
                do { try saveBitmap() } catch { logger.error("cannot save the bitmap", metadata: ["error": "\(error)"]) }
            }
        }
        locks.unlock(region..<(region + 1), .exclusive)
        if idle { wakeBackgroundWaiters() }
        settle()
        if !stall {
            pump()
        } else if shared.withLock({ $0.copier.delay() }) {
            // A source read failed: try the region again later (the error may be transient), not in a loop.
            pumpLater(afterNanoseconds: Self.readRetryNanos)
        }
    }

    /// Wakes `close` when neither copies nor check workers run.
    func wakeBackgroundWaiters() {
        let idle: OneShot<Void>? = shared.withLock { shared in
            guard shared.copier.copying == 0, shared.check.workers == 0 else { return nil }
            defer { shared.backgroundIdle = nil }
            return shared.backgroundIdle
        }
        idle?.fulfil()
    }

    // MARK: Export operations

    /// Runs a tracked, range-checked operation with its regions locked shared (unless
    /// `lockingRegions` is false: operations that only read the source need no lock); `body` gets
    /// the target (nil when degraded) and must complete the promise exactly once.
    private func locked<T: Sendable>(
        _ command: ExportCommand?, offset: UInt64, length: UInt64, lockingRegions: Bool = true, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (_ target: (any Leg)?, _ promise: EventLoopPromise<T>) -> Void
    ) -> EventLoopFuture<T> {
        let regions = lockingRegions ? shared.withLock { $0.bitmap.regions(offset: offset, length: length) } : 0..<0
        let modifies = command?.modifies ?? false
        lastForeground.store(Self.now(), ordering: .relaxed)
        return tracker.run(self, command, offset: offset, length: length, on: eventLoop) { (promise: EventLoopPromise<T>) in
            locks.lock(regions, .shared) { [self] in
                let target = shared.withLock { $0.target.healthy }
                // Write intent before write (invariant 4): while this request is in flight its
                // regions stay set on disk; a clear bit is set durably before any data moves — also
                // when another request set it a moment ago and its page write is still queued.
                let intentLog = modifies ? self.intentLog : nil
                let waitsForIntent = intentLog != nil && shared.withLock { $0.intent.begin(regions) }
                // What the request holds (its regions' lock and, if it modifies, their write
                // intent) is given back once, when it completes.
                promise.futureResult.whenComplete { [self] _ in
                    if intentLog != nil {
                        let now = Self.now()
                        shared.withLock { $0.intent.end(regions, at: now) }
                    }
                    locks.unlock(regions, .shared)
                }
                guard let intentLog, waitsForIntent else { return body(target, promise) }
                // Behind every page write queued before it: a region still marked queued here had
                // its write fail (or none yet), so this request writes it.
                intentQueue.async { [self] in
                    let (needed, persisted) = shared.withLock { $0.intent.owed(regions) }
                    do {
                        if !needed.isEmpty {
                            try intentLog.persist(regions: needed, of: persisted)
                            shared.withLock { $0.intent.written(needed) }
                        }
                        eventLoop.execute { body(target, promise) }
                    } catch {
                        logger.error("cannot record write intent; request refused", metadata: ["error": "\(error)"])
                        promise.fail(BlockExportError(.io, "\(error)"))
                    }
                }
            }
        }
    }

    /// Writes the bitmap file lazily: bits of regions now clean, with no write in flight and (unless
    /// `final`) none lately, are cleared on disk. Before a bit is cleared, both legs are made
    /// durable, so a power loss cannot leave a clear bit over a region whose copies differ; with no
    /// target, or one that cannot flush (failed), nothing is cleared. If the save fails, the bits
    /// the file may still hold are remembered, so later page writes keep them. The `final` save of
    /// a clean stop also records the legs' write traces. Every save first checks that the legs are
    /// still what was opened. Runs on `intentQueue` only.
    private func saveBitmap(final: Bool = false) throws {
        watchLegs()
        guard let intentLog else { return }
        let now = Self.now()
        let (started, target, healthy) = shared.withLock { shared in
            (shared.intent.beginSave(dirty: shared.bitmap, now: now, holdNanos: writeHoldNanos, final: final), shared.target.leg,
             shared.target.failure == nil)
        }
        guard var save = started else { return }
        do {
            if save.clears {
                do { try source.flushNow() } catch {
                    shared.withLock { $0.unreportedSourceError = error }
                    throw error
                }
                var targetDurable = false
                if let target {
                    do {
                        try target.flushNow()
                        targetDurable = true
                    } catch {
                        if healthy { targetFailed(error, on: target) }
                    }
                }
                if !targetDurable { shared.withLock { $0.intent.clearNothing(&save) } }
            }
            if final {
                try intentLog.saveStopped(save.bits, sourceTrace: source.writeTrace(), targetTrace: target?.writeTrace())
            } else {
                try intentLog.save(save.bits)
            }
            shared.withLock { $0.intent.saved(save) }
        } catch {
            shared.withLock { $0.intent.failed(save) }
            throw error
        }
    }

    /// Fails the target when its path no longer names the file or device in use (deleted,
    /// truncated, renamed and re-created), and records it when the source's path does not: NEW
    /// changing under the mirror is never called a complete copy (invariant 8).
    private func watchLegs() {
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

    /// Marks a region the legs are known to differ in (a check found it): dirty, and in the bitmap
    /// file before this returns, so neither a save nor a restart can call it clean.
    func markDiffering(_ region: Int) async {
        guard let intentLog else { return shared.withLock { _ = $0.bitmap.setDirty(region) } }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            intentQueue.async { [self] in
                let persisted = shared.withLock { shared -> RegionBitmap? in
                    shared.bitmap.setDirty(region)
                    return shared.intent.set(region)
                }
                if let persisted {
                    do {
                        try intentLog.persist(regions: [region], of: persisted)
                        shared.withLock { $0.intent.written([region]) }
                    } catch {
                        logger.error("cannot record a mismatching region in the bitmap", metadata: ["error": "\(error)"])
                    }
                }
                continuation.resume()
            }
        }
    }

    /// Saves the bitmap file now, clearing every clean bit (stop does this).
    private func saveFinalBitmap() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            intentQueue.async { [self] in continuation.resume(with: Result { try saveBitmap(final: true) }) }
        }
    }

    /// Runs the same operation on source and target (when there is one) and completes when both
    /// did. A source failure fails the request; a target failure degrades the mirror. When both
    /// succeeded, the regions the range covers whole hold the same bytes on both legs: clean;
    /// without a healthy target, the regions it touched are dirty.
    private func fanOut(offset: UInt64, length: UInt64, target: (any Leg)?, promise: EventLoopPromise<Void>,
                        _ operation: @escaping @Sendable (any Leg, @escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) {
        let outcome = Mutex<(pending: Int, source: Result<Void, BlockIOError>?, targetOK: Bool)>((target == nil ? 1 : 2, nil, target != nil))
        let finish: @Sendable () -> Void = { [self] in
            let (sourceResult, targetOK) = outcome.withLock { ($0.source!, $0.targetOK) }
            switch sourceResult {
            case .success:
                shared.withLock { shared in
                    if targetOK, let target, shared.target.isHealthy(target) {
                        for region in shared.bitmap.regionsFullyCovered(offset: offset, length: length) { shared.markClean(region) }
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
                pump()
            }
        }
        operation(source) { result in
            if outcome.withLock({ $0.source = result; $0.pending -= 1; return $0.pending == 0 }) { finish() }
        }
        if let target {
            operation(target) { [self] result in
                if case .failure(let error) = result { targetFailed(error, on: target) }
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
                guard case .success = result else { return promise.completeWith(result) }
                // A writeback error a bitmap save's fdatasync took from the source is this FLUSH's.
                if let error = shared.withLock({ shared -> BlockIOError? in
                    defer { shared.unreportedSourceError = nil }
                    return shared.unreportedSourceError
                }) {
                    return promise.fail(BlockExportError(error))
                }
                guard intentLog != nil else { return promise.succeed(()) }
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

    /// Stops the copier, waits for requests in flight, makes both legs durable, saves the bitmap
    /// and closes the legs (also when a step failed).
    public func close() async throws {
        defer {
            source.close()
            shared.withLock { $0.target.leg }?.close()
        }
        shared.withLock { $0.stopping = true }
        housekeepingTimer?.cancel()
        settle()
        let busy: OneShot<Void>? = shared.withLock { shared in
            guard shared.copier.copying > 0 || shared.check.workers > 0 else { return nil }
            if shared.backgroundIdle == nil { shared.backgroundIdle = OneShot() }
            return shared.backgroundIdle
        }
        await busy?.wait()
        await tracker.drain()
        let target = shared.withLock { $0.target.healthy }
        try await source.flush()
        try await target?.flush()
        try await saveFinalBitmap()
    }
}
