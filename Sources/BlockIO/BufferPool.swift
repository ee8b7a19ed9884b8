import Synchronization

/// A bounded pool of aligned buffers, reused across requests so the data path does not call
/// `posix_memalign` per I/O.
///
/// Buffers come in power-of-two size classes from 4 KiB to `largestPooledSize`; each class keeps at
/// most `buffersPerClass` idle buffers. Larger requests get a one-off buffer. Memory held idle is
/// therefore bounded by the sum over classes, whatever the workload.
public final class BufferPool: Sendable {
    private let free: Mutex<[[AlignedBuffer]]>
    private let smallestShift = 12
    /// Largest size kept for reuse.
    public let largestPooledSize: Int
    /// Idle buffers kept per size class.
    public let buffersPerClass: Int

    public init(largestPooledSize: Int = 4 << 20, buffersPerClass: Int = 64) {
        self.largestPooledSize = largestPooledSize
        self.buffersPerClass = buffersPerClass
        let classes = (largestPooledSize.trailingZeroBitCount - smallestShift) + 1
        free = Mutex(Array(repeating: [], count: max(1, classes)))
    }

    private func sizeClass(for capacity: Int) -> (index: Int, size: Int)? {
        guard capacity <= largestPooledSize else { return nil }
        let size = max(1 << smallestShift, capacity.nextPowerOfTwo)
        return (size.trailingZeroBitCount - smallestShift, size)
    }

    /// A buffer of at least `capacity` bytes; give it back with `recycle` when the I/O is done.
    public func take(capacity: Int) -> AlignedBuffer {
        guard let sizeClass = sizeClass(for: capacity) else { return AlignedBuffer(capacity: capacity) }
        if let buffer = free.withLock({ $0[sizeClass.index].popLast() }) { return buffer }
        return AlignedBuffer(capacity: sizeClass.size)
    }

    /// Returns a buffer for reuse. Buffers not from a size class, or beyond the bound, are freed.
    public func recycle(_ buffer: AlignedBuffer) {
        guard let sizeClass = sizeClass(for: buffer.capacity), sizeClass.size == buffer.capacity else { return }
        free.withLock { lists in
            if lists[sizeClass.index].count < buffersPerClass { lists[sizeClass.index].append(buffer) }
        }
    }
}

extension Int {
    /// The smallest power of two not below `self` (self must be positive).
    var nextPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}
