import BlockIO
import NIOCore

extension Leg {
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

    /// Completes `promise` with the allocation map of a range as export extents (holes read as zero).
    public func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, completing promise: EventLoopPromise<[BlockExtent]>) {
        allocationMap(offset: offset, length: length, maxExtents: maxExtents) { result in
            switch result {
            case .success(let extents): promise.succeed(extents.map { BlockExtent(length: $0.length, isHole: $0.isHole, isZero: $0.isHole) })
            case .failure(let error): promise.fail(BlockExportError(error))
            }
        }
    }

    /// Makes every completed write durable; throws a `BlockExportError` naming the device.
    public func flush() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            flush { result in continuation.resume(with: result.mapError { BlockExportError($0) as any Error }) }
        }
    }
}
