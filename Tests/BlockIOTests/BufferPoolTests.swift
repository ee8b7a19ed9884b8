import Foundation
import Testing
@testable import BlockIO

/// The aligned-buffer pool: reuse, its bounds, and giving idle memory back.
@Suite struct BufferPoolTests {
    /// A recycled buffer is reused for the same size class; beyond the idle-bytes bound buffers are freed.
    @Test func reuseWithinBounds() {
        let pool = BufferPool(buffersPerClass: 64, maximumIdleBytes: 8 << 20, trimInterval: .seconds(3600))
        let first = pool.take(capacity: 5000)
        #expect(first.capacity == 8192)
        let address = first.baseAddress
        pool.recycle(first)
        #expect(pool.idleBytes == 8192)
        #expect(pool.take(capacity: 8000).baseAddress == address)
        let big = (0..<4).map { _ in pool.take(capacity: 4 << 20) }
        big.forEach(pool.recycle)
        #expect(pool.idleBytes == 8 << 20, "two 4 MiB buffers fit under the 8 MiB bound, two are freed")
    }

    /// Buffers nobody takes for a whole trim interval are freed (a burst's memory goes back).
    @Test func idleBuffersAreFreed() throws {
        let pool = BufferPool(trimInterval: .milliseconds(50))
        let buffers = (0..<16).map { _ in pool.take(capacity: 1 << 20) }
        buffers.forEach(pool.recycle)
        #expect(pool.idleBytes == 16 << 20)
        let deadline = Date().addingTimeInterval(60)
        while pool.idleBytes > 0 && Date() < deadline { usleep(10_000) }
        #expect(pool.idleBytes == 0)
    }
}
