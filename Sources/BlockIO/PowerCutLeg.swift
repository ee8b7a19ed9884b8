import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// A leg filter that can lose power: it remembers what each write not yet durable overwrote, and
/// `cut()` puts those bytes back, newest first, so the leg holds exactly what a disk with a
/// volatile write cache would keep: every write acknowledged with FUA, every write completed
/// before an acknowledged flush, and nothing else. From `cut()` on, every call fails (EIO) and
/// completions that arrive late are reported as failures (their acknowledgement never left);
/// `discardVolatileWrites()` then rewrites what the lost writes had replaced.
///
/// For the power-cut tests of the mirror. Overlapping writes in flight at the same time have no
/// defined order on a disk either; the mirror's region locks keep its own copies apart from
/// client writes, and the tests' writers do not overlap themselves.
public final class PowerCutLeg: LegFilter {
    public let next: any Leg

    /// What one write, zeroing or discard replaced, until a flush makes it durable.
    private struct Undo {
        let id: Int
        var offset: UInt64
        var bytes: [UInt8]
        var completed = false
    }
    private struct State {
        var undo: [Undo] = []
        var nextID = 0
        var inFlight = 0
        var cut = false
        var drained: OneShot<Void>?
    }
    private let state = Mutex(State())

    public init(_ next: any Leg) { self.next = next }

    /// Whether the power is off.
    public var isCut: Bool { state.withLock { $0.cut } }

    /// Turns the power off: no call succeeds from now on (requests already passed on still
    /// complete, as failures). `discardVolatileWrites` then makes the leg what the disk kept.
    public func cut() { state.withLock { $0.cut = true } }

    /// After `cut`: waits for the requests already passed on, then rewrites what every write not
    /// made durable overwrote, newest first.
    public func discardVolatileWrites() async throws(BlockIOError) {
        let drained: OneShot<Void>? = state.withLock { state in
            precondition(state.cut, "discardVolatileWrites before cut")
            guard state.inFlight > 0 else { return nil }
            if state.drained == nil { state.drained = OneShot() }
            return state.drained
        }
        await drained?.wait()
        let undo = state.withLock { state in
            defer { state.undo = [] }
            return state.undo
        }
        for entry in undo.reversed() where !entry.bytes.isEmpty {
            let old = AlignedBuffer(capacity: entry.bytes.count)
            old.bytes.copyBytes(from: entry.bytes)
            try await forward { completion in
                next.write(from: old.baseAddress, count: entry.bytes.count, offset: entry.offset, durable: true, completion: completion)
            }
            withExtendedLifetime(old) {}
        }
    }

    private func forward(_ body: (@escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) async throws(BlockIOError) {
        let result: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            body { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    private func powerCut(_ operation: BlockOperation, _ offset: UInt64?, _ length: UInt64?) -> BlockIOError {
        BlockIOError(path: path, operation: operation, offset: offset, length: length, errno: .ioError, detail: "power cut")
    }

    /// Counts a request passed on, unless the power is off.
    private func enter() -> Bool {
        state.withLock { state in
            guard !state.cut else { return false }
            state.inFlight += 1
            return true
        }
    }

    /// The end of a request passed on: its result, or a failure when the power went meanwhile.
    /// `update` runs (before the cut only) with whether the request succeeded.
    private func leave(_ result: Result<Void, BlockIOError>, _ operation: BlockOperation, _ offset: UInt64?, _ length: UInt64?,
                       update: (inout State, _ succeeded: Bool) -> Void = { _, _ in }) -> Result<Void, BlockIOError> {
        let (cut, drained): (Bool, OneShot<Void>?) = state.withLock { state in
            if !state.cut {
                let succeeded = if case .success = result { true } else { false }
                update(&state, succeeded)
            }
            state.inFlight -= 1
            return (state.cut, state.inFlight == 0 ? state.drained : nil)
        }
        drained?.fulfil()
        return cut ? .failure(powerCut(operation, offset, length)) : result
    }

    /// Saves the bytes `[offset, offset + length)` hold now, then runs `change` (a write, a zeroing
    /// or a discard that is not durable), whose undo stays until a flush.
    private func changing(_ operation: BlockOperation, offset: UInt64, length: UInt64,
                          completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void,
                          change: @escaping @Sendable (@escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) {
        guard enter() else {
            return DispatchQueue.global().async { completion(.failure(self.powerCut(operation, offset, length))) }
        }
        let count = Int(min(length, size > offset ? size - offset : 0))
        let saved = AlignedBuffer(capacity: max(count, 1))
        next.read(into: saved.baseAddress, count: count, offset: offset) { [self] read in
            if case .failure = read {
                return completion(leave(read, operation, offset, length))
            }
            let id: Int = state.withLock { state in
                defer { state.nextID += 1 }
                let bytes = [UInt8](UnsafeRawBufferPointer(start: saved.baseAddress, count: count))
                state.undo.append(Undo(id: state.nextID, offset: offset, bytes: bytes))
                return state.nextID
            }
            change { [self] result in
                // Completed, failed or not: a flush from now on covers it (a failed write leaves its
                // range unspecified, and its undo must not outlive a later durable write there).
                completion(leave(result, operation, offset, length) { state, _ in
                    if let index = state.undo.firstIndex(where: { $0.id == id }) { state.undo[index].completed = true }
                })
            }
        }
    }

    /// Drops the undo of bytes a durable write just made permanent.
    private static func trim(_ undo: inout [Undo], offset: UInt64, length: UInt64) {
        let end = offset + length
        undo = undo.flatMap { entry -> [Undo] in
            let entryEnd = entry.offset + UInt64(entry.bytes.count)
            guard entry.offset < end, entryEnd > offset else { return [entry] }
            var kept: [Undo] = []
            if entry.offset < offset {
                kept.append(Undo(id: entry.id, offset: entry.offset, bytes: Array(entry.bytes[..<Int(offset - entry.offset)]),
                                 completed: entry.completed))
            }
            if entryEnd > end {
                kept.append(Undo(id: entry.id, offset: end, bytes: Array(entry.bytes[Int(end - entry.offset)...]),
                                 completed: entry.completed))
            }
            return kept
        }
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool,
                      completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let address = UInt(bitPattern: buffer)
        guard durable else {
            return changing(.write, offset: offset, length: UInt64(count), completion: completion) { [next] done in
                next.write(from: UnsafeRawPointer(bitPattern: address)!, count: count, offset: offset, durable: false, completion: done)
            }
        }
        guard enter() else { return DispatchQueue.global().async { completion(.failure(self.powerCut(.write, offset, UInt64(count)))) } }
        next.write(from: buffer, count: count, offset: offset, durable: true) { [self] result in
            completion(leave(result, .write, offset, UInt64(count)) { state, succeeded in
                if succeeded { Self.trim(&state.undo, offset: offset, length: UInt64(count)) }
            })
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                            completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        changing(.zero, offset: offset, length: length, completion: completion) { [next] done in
            next.writeZeroes(offset: offset, length: length, mayDeallocate: mayDeallocate, fastOnly: fastOnly, completion: done)
        }
    }

    public func discard(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        changing(.discard, offset: offset, length: length, completion: completion) { [next] done in
            next.discard(offset: offset, length: length, completion: done)
        }
    }

    public func prefetch(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard enter() else { return DispatchQueue.global().async { completion(.failure(self.powerCut(.read, offset, length))) } }
        next.prefetch(offset: offset, length: length) { [self] result in completion(leave(result, .read, offset, length)) }
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [BlockDevice.Extent] {
        guard !isCut else { throw powerCut(.seek, offset, length) }
        return try next.allocationMap(offset: offset, length: length, maxExtents: maxExtents)
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                              completion: @escaping @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void) {
        guard !isCut else { return completion(.failure(powerCut(.seek, offset, length))) }
        next.allocationMap(offset: offset, length: length, maxExtents: maxExtents, completion: completion)
    }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard enter() else { return DispatchQueue.global().async { completion(.failure(self.powerCut(.read, offset, UInt64(count)))) } }
        next.read(into: buffer, count: count, offset: offset) { [self] result in
            completion(leave(result, .read, offset, UInt64(count)))
        }
    }

    /// The writes completed when the flush started become durable when it succeeds.
    public func flush(completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard enter() else { return DispatchQueue.global().async { completion(.failure(self.powerCut(.fdatasync, nil, nil))) } }
        let covered = state.withLock { Set($0.undo.filter(\.completed).map(\.id)) }
        next.flush { [self] result in
            completion(leave(result, .fdatasync, nil, nil) { state, succeeded in
                if succeeded { state.undo.removeAll { covered.contains($0.id) } }
            })
        }
    }

    public func flushNow() throws(BlockIOError) {
        guard enter() else { throw powerCut(.fdatasync, nil, nil) }
        let covered = state.withLock { Set($0.undo.filter(\.completed).map(\.id)) }
        let result: Result<Void, BlockIOError>
        do throws(BlockIOError) {
            try next.flushNow()
            result = .success(())
        } catch {
            result = .failure(error)
        }
        try leave(result, .fdatasync, nil, nil) { state, succeeded in
            if succeeded { state.undo.removeAll { covered.contains($0.id) } }
        }.get()
    }
}
