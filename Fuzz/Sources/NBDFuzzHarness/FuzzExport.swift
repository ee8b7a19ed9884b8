import BlockExport
import NIOCore

/// An export that holds no data and answers every request at once on the caller's event loop, so
/// that a connection driven on an `EmbeddedChannel` runs to the end of its input in one call. It is
/// the connection's state machine and reply paths that are fuzzed here, not a disk: reads return
/// zeroes, writes are dropped, block status makes up a few extents, and (when `failing`) requests
/// at some offsets fail with each kind of `BlockExportError`, deterministically, so that a run gives
/// the same bytes whatever the input's chunking.
public final class FuzzExport: BlockExport {
    public let size: UInt64
    public let capabilities: ExportCapabilities
    public let exportDescription = "fuzz export \u{1F4BE}"
    private let failing: Bool

    /// The read data: one buffer of zeroes as large as the largest payload, sliced per read.
    private static let zeroes = ByteBuffer(repeating: 0, count: Int(BlockSizeConstraints.maximumPayload))

    /// An export of `size` bytes taking payloads of up to `maximumPayload` bytes (at most
    /// `BlockSizeConstraints.maximumPayload`). A smaller maximum keeps the fuzzing fast: the
    /// handler buffers a WRITE's payload arriving in pieces in one buffer of its full length, which
    /// under AddressSanitizer costs more the larger it is.
    public init(size: UInt64, readOnly: Bool, failing: Bool, maximumPayload: UInt32) {
        self.size = size
        self.failing = failing
        capabilities = ExportCapabilities(
            isReadOnly: readOnly, canTrim: !readOnly, canWriteZeroes: !readOnly, canFastZero: !readOnly,
            canMultiConnect: true,
            blockSizes: BlockSizeConstraints(minimum: 1, preferred: 4096, maximum: min(maximumPayload, BlockSizeConstraints.maximumPayload)))
    }

    /// The failure of a request at `offset`, if this export fails it.
    private func injectedFailure(_ command: ExportCommand?, offset: UInt64, length: UInt64) -> BlockExportError? {
        guard failing, offset % 5 == 3 else { return nil }
        let kinds: [BlockExportError.Kind] = [.io, .noSpace, .invalid, .notSupported, .readOnly, .overflow, .shuttingDown]
        return BlockExportError(kinds[Int((offset / 5) % UInt64(kinds.count))],
                                "\(command?.rawValue ?? "flush") at offset \(offset) length \(length) failed on the fuzz export")
    }

    /// Runs one request: range check, injected failure, then `body`.
    private func answer<T: Sendable>(_ command: ExportCommand?, offset: UInt64, length: UInt64, on eventLoop: any EventLoop,
                           _ body: () -> T) -> EventLoopFuture<T> {
        do throws(BlockExportError) {
            if let command { try checkRange(offset: offset, length: length, for: command) }
            if let failure = injectedFailure(command, offset: offset, length: length) { throw failure }
            return eventLoop.makeSucceededFuture(body())
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
    }

    public func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        guard length <= Self.zeroes.readableBytes else {
            return eventLoop.makeFailedFuture(BlockExportError(.invalid, "read of \(length) bytes is larger than any payload"))
        }
        return answer(.read, offset: offset, length: UInt64(length), on: eventLoop) { Self.zeroes.getSlice(at: 0, length: length)! }
    }

    public func write(offset: UInt64, data: ByteBuffer, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        answer(.write, offset: offset, length: UInt64(data.readableBytes), on: eventLoop) {}
    }

    public func flush(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        answer(nil, offset: 0, length: 0, on: eventLoop) {}
    }

    public func trim(offset: UInt64, length: UInt64, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        answer(.trim, offset: offset, length: length, on: eventLoop) {}
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fastOnly: Bool, fua: Bool,
                            on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        answer(.writeZeroes, offset: offset, length: length, on: eventLoop) {}
    }

    public func cache(offset: UInt64, length: UInt64, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        answer(.cache, offset: offset, length: length, on: eventLoop) {}
    }

    /// Up to four extents (fewer if `maxExtents` asks), alternating data and holes, covering the
    /// range; their number and sizes depend on the offset only.
    public func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[BlockExtent]> {
        answer(.blockStatus, offset: offset, length: length, on: eventLoop) {
            let count = min(maxExtents, 1 + Int(offset % 4), max(1, Int(min(length, 4))))
            var extents: [BlockExtent] = []
            var left = length
            for index in 0..<count {
                let piece = index == count - 1 ? left : max(1, left / UInt64(count))
                extents.append(BlockExtent(length: piece, isHole: index % 2 == 1, isZero: index % 2 == 1))
                left -= piece
            }
            return extents
        }
    }

    public func close() async throws {}
}
