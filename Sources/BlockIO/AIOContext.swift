import CLibAIO
import Foundation

/// One asynchronous disk operation for `AIOContext`. The memory a read or write points at must
/// stay valid until the operation's completion runs.
public enum AIOOperation: @unchecked Sendable {
    case read(FileDescriptor, buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64)
    /// `durable` asks for `RWF_DSYNC`: the data is on stable storage when the write completes (FUA).
    case write(FileDescriptor, buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool)
    case fdatasync(FileDescriptor)
}

/// A libaio context with many requests in flight.
///
/// `submit` never blocks on the disk: it hands the request to the kernel (`io_submit`) and returns.
/// Requests beyond `depth` wait in a queue and are submitted as completions free slots, so callers
/// never see `EAGAIN`. Completions are delivered one of two ways:
/// - `.reaperThread`: one thread sits in `io_getevents` and runs them (no thread per request);
/// - `.eventFD`: the kernel signals `eventFD`, and whoever watches it (an event loop) calls
///   `reapCompleted()`, so completions run on that watcher's thread without a hop.
///
/// Completions must be short: fulfil a promise, start the next I/O.
public final class AIOContext: @unchecked Sendable {
    /// Called with the byte count transferred, or the error.
    public typealias Completion = @Sendable (Result<Int, Errno>) -> Void

    /// How completions reach their callbacks.
    public enum Delivery: Sendable { case reaperThread, eventFD }

    private struct Request {
        var operation: AIOOperation
        var completion: Completion
    }

    private struct State {
        var slots: [Completion?]
        var freeSlots: [Int]
        var waiting: [Request] = []
        var waitingHead = 0
        var stopping = false
        var inFlight: Int { slots.count - freeSlots.count }
        var idle: Bool { inFlight == 0 && waitingHead == waiting.count }
    }

    /// Maximum number of requests handed to the kernel at once.
    public let depth: Int
    public let delivery: Delivery
    /// With `.eventFD` delivery: readable (a nonzero counter) when completions are ready. -1 otherwise.
    public let eventFD: Int32
    private let context: io_context_t
    private let state: Mutex<State>
    /// Signalled once when `stopping` and nothing is left in flight.
    private let drained = DispatchSemaphore(value: 0)
    private static let batch = 256

    /// Creates the kernel context (`io_setup`) and, for `.reaperThread`, starts the reaper.
    public init(depth: Int = 256, delivery: Delivery = .reaperThread) throws(Errno) {
        var ctx: io_context_t? = nil
        let rc = io_setup(Int32(depth), &ctx)
        guard rc == 0, let ctx else { throw Errno(rawValue: -rc) }
        var fd: Int32 = -1
        if delivery == .eventFD {
            fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
            guard fd >= 0 else {
                let error = Errno.current
                io_destroy(ctx)
                throw error
            }
        }
        self.depth = depth
        self.delivery = delivery
        self.eventFD = fd
        self.context = ctx
        self.state = Mutex(State(slots: Array(repeating: nil, count: depth), freeSlots: Array((0..<depth).reversed())))
        if delivery == .reaperThread {
            let thread = Thread { self.reap() }  // keeps self alive until shutdown() ends the loop
            thread.name = "blockmirror-aio"
            thread.start()
        }
    }

    deinit {
        io_destroy(context)
        if eventFD >= 0 { close(eventFD) }
    }

    /// With `.eventFD` delivery: called on the submitting thread each time requests were submitted,
    /// so that the thread's event loop hands the gathered ones to the kernel once it is done with
    /// what it is doing (`submitGathered`) and busy-polls for their completions (`LoopPoller`).
    /// Set before the first submission; nil: nothing is told.
    public var onSubmit: (() -> Void)?

    /// With `.eventFD` delivery: writes and syncs are not handed to the kernel one `io_submit` each,
    /// but gathered until `submitGathered()`, which the event loop owning the context runs once per
    /// turn. One `io_submit` of many requests plugs the block layer once: on a virtual disk that is
    /// one notification of the device (an exit to the hypervisor) instead of one per request —
    /// 4k random writes at QD32 through the export went from 59-72k to 71-82k IOPS here (3 pairs,
    /// alternated). Reads go at once: gathered, they reached this machine's disk in bursts and came
    /// back in bursts, 40k IOPS against 60k (4k randread QD32, 4 pairs; batches capped at 8: 48-54k).
    /// Set before the first submission; only the owning thread submits to such a context.
    public var gathersSubmissions = false
    /// The requests submitted since the last `submitGathered()` (owning thread only).
    private var gathered: [(slot: Int, request: Request)] = []

    /// Whether completions are ready to reap, read from the ring libaio shares with the kernel
    /// (its head and tail, no system call): what a busy-polling loop checks between socket polls.
    @inline(__always)
    public var hasCompletions: Bool { bm_aio_ring_has_events(context) != 0 }

    /// Submits one operation; `completion` runs when it finishes.
    public func submit(_ operation: AIOOperation, completion: @escaping Completion) {
        submit([Request(operation: operation, completion: completion)])
    }

    /// Submits several operations with one `io_submit` where slots allow.
    public func submit(batch: [(AIOOperation, Completion)]) {
        submit(batch.map { Request(operation: $0.0, completion: $0.1) })
    }

    private func submit(_ requests: [Request]) {
        // Reserve slots; what does not fit waits for completions.
        var ready: [(slot: Int, request: Request)] = []
        ready.reserveCapacity(requests.count)
        let refused: Bool = state.withLock { state in
            if state.stopping { return true }
            for request in requests {
                if state.waitingHead == state.waiting.count, let slot = state.freeSlots.popLast() {
                    state.slots[slot] = request.completion
                    ready.append((slot, request))
                } else {
                    state.waiting.append(request)
                }
            }
            return false
        }
        if refused {
            for request in requests { request.completion(.failure(Errno(rawValue: ESHUTDOWN))) }
            return
        }
        if !ready.isEmpty {
            if gathersSubmissions {
                var reads: [(slot: Int, request: Request)] = []
                for entry in ready {
                    if case .read = entry.request.operation { reads.append(entry) } else { gathered.append(entry) }
                }
                if !reads.isEmpty { hand(reads) }
            } else {
                hand(ready)
            }
            onSubmit?()
        }
    }

    /// Hands the requests gathered since the last call to the kernel, in one `io_submit` where the
    /// depth allows (see `gathersSubmissions`).
    public func submitGathered() {
        guard !gathered.isEmpty else { return }
        let batch = gathered
        gathered.removeAll(keepingCapacity: true)
        hand(batch)
    }

    /// Gives reserved requests to the kernel; any it refuses complete with the error.
    private func hand(_ ready: [(slot: Int, request: Request)]) {
        withUnsafeTemporaryAllocation(of: iocb.self, capacity: ready.count) { iocbs in
            withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<iocb>?.self, capacity: ready.count) { pointers in
                for (index, entry) in ready.enumerated() {
                    let cb = iocbs.baseAddress! + index
                    let tag = UInt64(entry.slot)
                    switch entry.request.operation {
                    case let .read(fd, buffer, count, offset):
                        bm_prep_read(cb, fd.rawValue, buffer, count, Int64(offset), tag)
                    case let .write(fd, buffer, count, offset, durable):
                        bm_prep_write(cb, fd.rawValue, UnsafeMutableRawPointer(mutating: buffer), count, Int64(offset),
                                      durable ? bm_rwf_dsync() : 0, tag)
                    case let .fdatasync(fd):
                        bm_prep_fdsync(cb, fd.rawValue, tag)
                    }
                    bm_set_eventfd(cb, eventFD)
                    pointers[index] = cb
                }
                var submitted = 0
                while submitted < ready.count {
                    let rc = io_submit(context, ready.count - submitted, pointers.baseAddress! + submitted)
                    if rc > 0 { submitted += Int(rc); continue }
                    if rc == -EINTR { continue }
                    // The kernel refused the first remaining request: fail it and go on with the rest.
                    let error = Errno(rawValue: rc == 0 ? EIO : -Int32(rc))
                    let failed = ready[submitted]
                    release(slot: failed.slot)
                    failed.request.completion(.failure(error))
                    submitted += 1
                }
            }
        }
    }

    /// Frees a slot after a refused submission and submits waiting work into it.
    private func release(slot: Int) {
        let (next, drainedNow): ([(slot: Int, request: Request)], Bool) = state.withLock { state in
            state.slots[slot] = nil
            state.freeSlots.append(slot)
            let next = Self.admitWaiting(&state)
            return (next, state.stopping && state.idle)
        }
        if !next.isEmpty { hand(next) }
        if drainedNow { drained.signal() }
    }

    /// Moves waiting requests into free slots (called with the lock held).
    private static func admitWaiting(_ state: inout State) -> [(slot: Int, request: Request)] {
        var admitted: [(slot: Int, request: Request)] = []
        while state.waitingHead < state.waiting.count, let slot = state.freeSlots.popLast() {
            let request = state.waiting[state.waitingHead]
            state.waitingHead += 1
            state.slots[slot] = request.completion
            admitted.append((slot, request))
        }
        if state.waitingHead == state.waiting.count, state.waitingHead > 0 {
            state.waiting.removeAll(keepingCapacity: true)
            state.waitingHead = 0
        }
        return admitted
    }

    /// Runs the completions of `count` events, submits waiting work, and reports whether the context
    /// is stopping with nothing left in flight.
    private func complete(_ events: UnsafeMutablePointer<io_event>, count: Int) -> Bool {
        var finished: [(Completion, Result<Int, Errno>)] = []
        finished.reserveCapacity(count)
        let (admitted, drainedNow) = state.withLock { state -> ([(slot: Int, request: Request)], Bool) in
            for index in 0..<count {
                let slot = Int(bm_event_tag(events + index))
                let result = bm_event_result(events + index)
                if let completion = state.slots[slot] {
                    finished.append((completion, result < 0 ? .failure(Errno(rawValue: Int32(-result))) : .success(Int(result))))
                }
                state.slots[slot] = nil
                state.freeSlots.append(slot)
            }
            let admitted = Self.admitWaiting(&state)
            return (admitted, state.stopping && state.idle && count > 0)
        }
        for (completion, result) in finished { completion(result) }
        if !admitted.isEmpty { hand(admitted) }
        return drainedNow
    }

    private func reap() {
        let events = UnsafeMutablePointer<io_event>.allocate(capacity: Self.batch)
        defer { events.deallocate() }
        var timeout = timespec(tv_sec: 0, tv_nsec: 200_000_000)
        while true {
            let count = io_getevents(context, 1, Self.batch, events, &timeout)
            if count < 0 && count != -EINTR { fatalError("io_getevents failed: \(Errno(rawValue: -count))") }
            if complete(events, count: max(0, Int(count))) { drained.signal() }
            if state.withLock({ $0.stopping && $0.idle }) { break }
        }
    }

    /// With `.eventFD` delivery: runs every completion that is ready, without blocking, and returns
    /// how many ran. Call it when `eventFD` becomes readable, after reading (clearing) its counter,
    /// or when `hasCompletions` says so.
    @discardableResult
    public func reapCompleted() -> Int {
        precondition(delivery == .eventFD, "reapCompleted() is for .eventFD delivery")
        return withUnsafeTemporaryAllocation(of: io_event.self, capacity: Self.batch) { events in
            var zero = timespec(tv_sec: 0, tv_nsec: 0)
            var reaped = 0
            while true {
                let count = io_getevents(context, 0, Self.batch, events.baseAddress!, &zero)
                if count == -EINTR { continue }
                guard count > 0 else { break }
                reaped += Int(count)
                if complete(events.baseAddress!, count: Int(count)) { drained.signal() }
                if count < Self.batch { break }
            }
            return reaped
        }
    }

    /// Waits until every submitted request has completed (with `.eventFD`, whoever watches the fd
    /// must keep reaping meanwhile), then stops. Requests submitted afterwards fail with `ESHUTDOWN`.
    public func shutdown() {
        let idle = state.withLock { state -> Bool in
            state.stopping = true
            return state.idle
        }
        // The reaper thread, if any, notices `stopping` within its timeout and exits.
        if !idle { drained.wait() }
    }

    /// Number of requests in the kernel now (for status and tests).
    public var inFlight: Int { state.withLock { $0.inFlight } }
}
