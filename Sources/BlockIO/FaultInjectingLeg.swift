import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// A leg filter that fails the way disks fail, on purpose: an error (EIO, ENOSPC, …) on chosen
/// operations at chosen offsets or after so many of them, added latency, or the whole leg
/// vanishing (every call fails from then on, and its path no longer names it). The failure tests
/// use it where a full tmpfs or a torn-down loop device would be less exact, and reliability runs
/// to make a leg misbehave at a known moment.
///
/// Injected failures complete asynchronously, as real I/O does, with a `BlockIOError` naming the
/// leg, the operation and the range, and "injected" as its detail.
public final class FaultInjectingLeg: LegFilter {
    /// The operations a fault can apply to.
    public enum Operation: String, Sendable, Hashable, CaseIterable {
        case read, write, flush, zero, discard
    }

    /// One rule: which operations, where, from when, how often, with which error.
    public struct Fault: Sendable {
        public var operations: Set<Operation>
        /// The bytes a request must overlap to fail; nil: any request (FLUSH, which has no range,
        /// matches only such a fault).
        public var range: Range<UInt64>?
        /// Matching requests let through before the fault fires.
        public var after: Int
        /// How many requests it fails; nil: every matching one from then on.
        public var times: Int?
        public var errno: Errno

        public init(_ operations: Set<Operation>, range: Range<UInt64>? = nil, after: Int = 0, times: Int? = nil,
                    errno: Errno = .ioError) {
            self.operations = operations; self.range = range; self.after = after; self.times = times; self.errno = errno
        }
    }

    public let next: any Leg
    private struct Armed {
        var fault: Fault
        var seen = 0
        var fired = 0
    }
    private struct State {
        var faults: [Armed] = []
        var latencyNanoseconds: UInt64 = 0
        var vanished: String?
        var injected = 0
        /// Completions held back by `holdCompletions`, in the order they came.
        var held: [@Sendable () -> Void]?
    }
    private let state = Mutex(State())

    /// `next`, healthy until told otherwise.
    public init(_ next: any Leg) { self.next = next }

    /// Adds a fault; earlier ones stay armed.
    public func inject(_ fault: Fault) { state.withLock { $0.faults.append(Armed(fault: fault)) } }

    /// Delays every request (failed or not) by this long before it is passed on.
    public func setLatency(nanoseconds: UInt64) { state.withLock { $0.latencyNanoseconds = nanoseconds } }

    /// The leg is gone: every call fails with ENXIO from now on, and `replacement()` says why.
    public func vanish(_ reason: String = "the device vanished") { state.withLock { $0.vanished = reason } }

    /// Disarms every fault and the latency (a vanished leg stays gone).
    public func heal() {
        state.withLock { state in
            state.faults = []
            state.latencyNanoseconds = 0
        }
    }

    /// A stalled leg: from now on requests still complete (or fail) below, but their completions
    /// are held back until `releaseCompletions`, so a test can decide when they arrive.
    public func holdCompletions() { state.withLock { if $0.held == nil { $0.held = [] } } }

    /// Delivers the held completions, in order, and stops holding them.
    public func releaseCompletions() {
        let held = state.withLock { state in
            defer { state.held = nil }
            return state.held ?? []
        }
        for completion in held { completion() }
    }

    /// Requests failed on purpose so far.
    public var injected: Int { state.withLock { $0.injected } }

    /// Completions held back now (see `holdCompletions`): requests done below, unheard of above.
    public var heldCompletions: Int { state.withLock { $0.held?.count ?? 0 } }

    public func replacement() -> String? {
        if let vanished = state.withLock({ $0.vanished }) { return "\(path): \(vanished)" }
        return next.replacement()
    }

    /// The error this request gets, if any, and the delay before it goes on (or fails).
    private func decide(_ operation: Operation, offset: UInt64?, length: UInt64?) -> (BlockIOError?, UInt64) {
        let blockOperation: BlockOperation = switch operation {
        case .read: .read
        case .write: .write
        case .flush: .fdatasync
        case .zero: .zero
        case .discard: .discard
        }
        return state.withLock { state in
            func failure(_ errno: Errno, _ detail: String) -> BlockIOError {
                state.injected += 1
                return BlockIOError(path: path, operation: blockOperation, offset: offset, length: length, errno: errno, detail: detail)
            }
            if let vanished = state.vanished { return (failure(Errno(rawValue: ENXIO), "injected: \(vanished)"), 0) }
            for index in state.faults.indices {
                let fault = state.faults[index].fault
                guard fault.operations.contains(operation) else { continue }
                if let range = fault.range {
                    guard let offset, let length else { continue }
                    let (end, overflow) = offset.addingReportingOverflow(max(length, 1))
                    guard offset < range.upperBound, overflow || end > range.lowerBound else { continue }
                }
                state.faults[index].seen += 1
                guard state.faults[index].seen > fault.after else { continue }
                if let times = fault.times, state.faults[index].fired >= times { continue }
                state.faults[index].fired += 1
                return (failure(fault.errno, "injected"), state.latencyNanoseconds)
            }
            return (nil, state.latencyNanoseconds)
        }
    }

    /// Runs `forward` (or fails `completion` with the injected error) after the latency; the
    /// completion is held back while `holdCompletions` is in force.
    private func run(_ operation: Operation, offset: UInt64?, length: UInt64?,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void,
                     forward: @escaping @Sendable (_ completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) {
        let (error, delay) = decide(operation, offset: offset, length: length)
        let deliver: @Sendable (Result<Void, BlockIOError>) -> Void = { [self] result in
            let held = state.withLock { state -> Bool in
                guard state.held != nil else { return false }
                state.held?.append { completion(result) }
                return true
            }
            if !held { completion(result) }
        }
        let go: @Sendable () -> Void = { if let error { deliver(.failure(error)) } else { forward(deliver) } }
        if delay > 0 {
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(clamping: delay)), execute: go)
        } else if error != nil {
            DispatchQueue.global().async(execute: go)
        } else {
            forward(deliver)
        }
    }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let address = UInt(bitPattern: buffer)
        run(.read, offset: offset, length: UInt64(count), completion: completion) { [next] done in
            next.read(into: UnsafeMutableRawPointer(bitPattern: address)!, count: count, offset: offset, completion: done)
        }
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool,
                      completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let address = UInt(bitPattern: buffer)
        run(.write, offset: offset, length: UInt64(count), completion: completion) { [next] done in
            next.write(from: UnsafeRawPointer(bitPattern: address)!, count: count, offset: offset, durable: durable, completion: done)
        }
    }

    public func flush(completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        run(.flush, offset: nil, length: nil, completion: completion) { [next] done in next.flush(completion: done) }
    }

    public func flushNow() throws(BlockIOError) {
        let (error, delay) = decide(.flush, offset: nil, length: nil)
        if delay > 0 { usleep(useconds_t(clamping: delay / 1000)) }
        if let error { throw error }
        try next.flushNow()
    }

    public func discard(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        run(.discard, offset: offset, length: length, completion: completion) { [next] done in
            next.discard(offset: offset, length: length, completion: done)
        }
    }

    /// A read fault covers CACHE too (it reads ahead).
    public func prefetch(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        run(.read, offset: offset, length: length, completion: completion) { [next] done in
            next.prefetch(offset: offset, length: length, completion: done)
        }
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [BlockDevice.Extent] {
        if let vanished = vanishedSeek(offset) { throw vanished }
        return try next.allocationMap(offset: offset, length: length, maxExtents: maxExtents)
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                              completion: @escaping @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void) {
        if let vanished = vanishedSeek(offset) { return completion(.failure(vanished)) }
        next.allocationMap(offset: offset, length: length, maxExtents: maxExtents, completion: completion)
    }

    /// The error of an allocation map asked after the leg vanished, if it did.
    private func vanishedSeek(_ offset: UInt64) -> BlockIOError? {
        state.withLock { $0.vanished }.map {
            BlockIOError(path: path, operation: .seek, offset: offset, errno: Errno(rawValue: ENXIO), detail: "injected: \($0)")
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                            completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        run(.zero, offset: offset, length: length, completion: completion) { [next] done in
            next.writeZeroes(offset: offset, length: length, mayDeallocate: mayDeallocate, fastOnly: fastOnly, completion: done)
        }
    }
}
