import BlockIO
import NIOCore

extension BlockDevice {
    /// Reads `length` bytes at `offset` through an aligned buffer from `pool`, copies them into a
    /// buffer from `allocator` (the reply's) and completes `promise` with it, or with the error.
    public func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, pool: BufferPool,
                     completing promise: EventLoopPromise<ByteBuffer>) {
        guard length > 0 else { return promise.succeed(allocator.buffer(capacity: 0)) }
        let buffer = pool.take(capacity: length)
        read(into: buffer.baseAddress, count: length, offset: offset) { result in
            switch result {
            case .success:
                var out = allocator.buffer(capacity: length)
                out.writeBytes(UnsafeRawBufferPointer(start: buffer.baseAddress, count: length))
                pool.recycle(buffer)
                promise.succeed(out)
            case .failure(let error):
                pool.recycle(buffer)
                promise.fail(BlockExportError(error))
            }
        }
    }
}
