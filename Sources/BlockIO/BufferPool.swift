import Dispatch

/// A bounded pool of aligned buffers, reused across requests so the data path does not call
/// `posix_memalign` per I/O, and which gives memory back once a burst is over.
///
/// Buffers come in power-of-two size classes from 4 KiB to `largestPooledSize`; each class keeps at
/// most `buffersPerClass` idle buffers and all classes together at most `maximumIdleBytes`. Larger
/// requests get a one-off buffer. A buffer that stayed idle through a whole `trimInterval` (the
/// workload did not need it) is freed, and the heap's free pages are then returned to the system
/// (`FreeMemory.release`), so an idle daemon shrinks back within about two intervals.
public final class BufferPool: Sendable {
    private struct State {
        /// Idle buffers per size class.
        var free: [[AlignedBuffer]]
        /// Per class, the fewest idle buffers seen since the last trim: that many were not needed.
        var unneeded: [Int]
        var idleBytes = 0
        var trimScheduled = false
    }
    private let state: Mutex<State>
    private let smallestShift = 12
    /// Largest size kept for reuse.
    public let largestPooledSize: Int
    /// Idle buffers kept per size class.
    public let buffersPerClass: Int
    /// Idle bytes kept over all classes.
    public let maximumIdleBytes: Int
    /// How long a buffer may stay idle before it is freed.
    public let trimInterval: DispatchTimeInterval

    public init(largestPooledSize: Int = 4 << 20, buffersPerClass: Int = 64, maximumIdleBytes: Int = 64 << 20,
                trimInterval: DispatchTimeInterval = .seconds(1)) {
        self.largestPooledSize = largestPooledSize
        self.buffersPerClass = buffersPerClass
        self.maximumIdleBytes = maximumIdleBytes
        self.trimInterval = trimInterval
        let classes = max(1, (largestPooledSize.trailingZeroBitCount - smallestShift) + 1)
        state = Mutex(State(free: Array(repeating: [], count: classes), unneeded: Array(repeating: 0, count: classes)))
    }

    private func sizeClass(for capacity: Int) -> (index: Int, size: Int)? {
        guard capacity <= largestPooledSize else { return nil }
        let size = max(1 << smallestShift, capacity.nextPowerOfTwo)
        return (size.trailingZeroBitCount - smallestShift, size)
    }

    /// A buffer of at least `capacity` bytes; give it back with `recycle` when the I/O is done.
    public func take(capacity: Int) -> AlignedBuffer {
        guard let sizeClass = sizeClass(for: capacity) else { return AlignedBuffer(capacity: capacity) }
        let reused: AlignedBuffer? = state.withLock { state in
            guard let buffer = state.free[sizeClass.index].popLast() else { return nil }
            state.idleBytes -= buffer.capacity
            state.unneeded[sizeClass.index] = min(state.unneeded[sizeClass.index], state.free[sizeClass.index].count)
            return buffer
        }
        return reused ?? AlignedBuffer(capacity: sizeClass.size)
    }

    /// Returns a buffer for reuse. Buffers not from a size class, or beyond the bounds, are freed.
    public func recycle(_ buffer: AlignedBuffer) {
        guard let sizeClass = sizeClass(for: buffer.capacity), sizeClass.size == buffer.capacity else { return }
        let scheduleTrim: Bool = state.withLock { state in
            guard state.free[sizeClass.index].count < buffersPerClass, state.idleBytes + buffer.capacity <= maximumIdleBytes else {
                return false
            }
            state.free[sizeClass.index].append(buffer)
            state.idleBytes += buffer.capacity
            defer { state.trimScheduled = true }
            return !state.trimScheduled
        }
        if scheduleTrim { scheduleTrimming() }
    }

    /// Idle bytes held now.
    public var idleBytes: Int { state.withLock { $0.idleBytes } }

    private func scheduleTrimming() {
        DispatchQueue.global().asyncAfter(deadline: .now() + trimInterval) { [weak self] in self?.trim() }
    }

    /// Frees the buffers no request needed since the last trim; runs again while any stay idle.
    private func trim() {
        var (unneeded, again): ([AlignedBuffer], Bool) = state.withLock { state in
            var unneeded: [AlignedBuffer] = []
            for index in state.free.indices {
                let count = min(state.unneeded[index], state.free[index].count)
                unneeded += state.free[index].suffix(count)
                state.free[index].removeLast(count)
                state.unneeded[index] = state.free[index].count
            }
            state.idleBytes -= unneeded.reduce(0) { $0 + $1.capacity }
            state.trimScheduled = state.idleBytes > 0
            return (unneeded, state.trimScheduled)
        }
        if !unneeded.isEmpty {
            unneeded.removeAll()  // frees them, before the heap is trimmed
            FreeMemory.release()
        }
        if again { scheduleTrimming() }
    }
}

extension Int {
    /// The smallest power of two not below `self` (self must be positive).
    var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
