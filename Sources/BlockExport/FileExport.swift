import BlockIO
import Logging
import NIOCore

/// A passthrough export of one file or block device: every request goes straight to the disk
/// through libaio, with `O_DIRECT` where the filesystem allows it.
///
/// Payloads are copied once each way: from the client's buffer into an aligned buffer (writes),
/// from the aligned buffer into the reply (reads).
public final class FileExport: BlockExport {
    public let device: BlockDevice
    public let capabilities: ExportCapabilities
    private let pool: BufferPool
    private let tracker = InFlightTracker()

    public var size: UInt64 { device.size }
    public var exportDescription: String { "\(device.kind.rawValue) \(device.path)\(device.isDirect ? "" : " (buffered)")" }

    /// Exports an opened device.
    public init(device: BlockDevice, pool: BufferPool) {
        self.device = device
        self.pool = pool
        self.capabilities = ExportCapabilities(
            isReadOnly: device.isReadOnly, canTrim: !device.isReadOnly, canWriteZeroes: !device.isReadOnly,
            canFastZero: !device.isReadOnly, canMultiConnect: true,
            blockSizes: BlockSizeConstraints(minimum: 1, preferred: UInt32(max(4096, device.alignment)),
                                             maximum: BlockSizeConstraints.maximumPayload))
    }

    /// Runs `body` as one tracked, range-checked operation (see `InFlightTracker.run`).
    private func operation<T: Sendable>(
        _ command: ExportCommand?, offset: UInt64, length: UInt64, on eventLoop: any EventLoop,
        _ body: (EventLoopPromise<T>) -> Void
    ) -> EventLoopFuture<T> {
        tracker.run(self, command, offset: offset, length: length, on: eventLoop, body)
    }

    public func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        operation(.read, offset: offset, length: UInt64(length), on: eventLoop) { promise in
            device.read(offset: offset, length: length, allocator: allocator, pool: pool, completing: promise)
        }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let length = data.readableBytes
        return operation(.write, offset: offset, length: UInt64(length), on: eventLoop) { promise in
            guard length > 0 else { return promise.succeed(()) }
            let buffer = pool.take(capacity: length)
            data.withUnsafeReadableBytes { buffer.bytes.copyMemory(from: $0) }
            device.write(from: buffer.baseAddress, count: length, offset: offset, durable: fua) { [pool] result in
                pool.recycle(buffer)
                promise.completeWith(result.mapError { BlockExportError($0) })
            }
        }
    }

    public func flush(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        operation(nil, offset: 0, length: 0, on: eventLoop) { promise in
            device.flush { promise.completeWith($0.mapError { BlockExportError($0) }) }
        }
    }

    /// Completes `promise` with `result`, first flushing when `fua` asks for durability.
    private func finish(_ result: Result<Void, BlockIOError>, fua: Bool, _ promise: EventLoopPromise<Void>) {
        if fua, case .success = result {
            device.flush { promise.completeWith($0.mapError { BlockExportError($0) }) }
        } else {
            promise.completeWith(result.mapError { BlockExportError($0) })
        }
    }

    public func trim(offset: UInt64, length: UInt64, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        operation(.trim, offset: offset, length: length, on: eventLoop) { promise in
            guard length > 0 else { return promise.succeed(()) }
            device.discard(offset: offset, length: length) { [self] in finish($0, fua: fua, promise) }
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fastOnly: Bool, fua: Bool,
                            on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        operation(.writeZeroes, offset: offset, length: length, on: eventLoop) { promise in
            guard length > 0 else { return promise.succeed(()) }
            device.writeZeroes(offset: offset, length: length, mayDeallocate: mayTrim, fastOnly: fastOnly) { [self] in
                finish($0, fua: fua, promise)
            }
        }
    }

    public func cache(offset: UInt64, length: UInt64, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        operation(.cache, offset: offset, length: length, on: eventLoop) { promise in
            device.prefetch(offset: offset, length: length) { promise.completeWith($0.mapError { BlockExportError($0) }) }
        }
    }

    public func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[BlockExtent]> {
        operation(.blockStatus, offset: offset, length: length, on: eventLoop) { promise in
            device.blockStatus(offset: offset, length: length, maxExtents: maxExtents, completing: promise)
        }
    }

    public func close() async throws {
        await tracker.drain()
        defer { device.close() }
        if !device.isReadOnly { try await device.flush() }
    }
}
