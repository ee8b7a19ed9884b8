import NIOCore

/// Something that can be served as a block device: a file (`FileExport`) or the mirror.
///
/// The NBD server serves any conforming type. Every operation is asynchronous and completes its
/// future on any thread; callers hop where they need to. (The devices under an export stack like
/// nbdkit's filters: see `Leg` and `LegFilter`, with the fault injector and the power cut.)
///
/// Implementations check ranges with `checkRange(offset:length:for:)` and fail with
/// `BlockExportError`, whose kind the NBD server maps to the wire's error numbers.
public protocol BlockExport: AnyObject, Sendable {
    /// Size in bytes; constant for the export's lifetime.
    var size: UInt64 { get }
    /// What the export supports; constant for its lifetime.
    var capabilities: ExportCapabilities { get }
    /// One line for people, sent as NBD_INFO_DESCRIPTION (for example the backing path).
    var exportDescription: String { get }

    /// Reads `length` bytes at `offset` into a buffer from `allocator`.
    func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer>
    /// Writes `data` at `offset`; with `fua`, durable before the future succeeds.
    func write(offset: UInt64, data: ByteBuffer, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Makes every write completed before the call durable.
    func flush(on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Discards a range (its content becomes unspecified, zeroes on files).
    func trim(offset: UInt64, length: UInt64, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Writes zeroes; `mayTrim` allows a hole, `fastOnly` asks to fail with `.notSupported`
    /// rather than write zero buffers.
    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fastOnly: Bool, fua: Bool,
                     on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Hints that a range will be read soon.
    func cache(offset: UInt64, length: UInt64, on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Allocation status of a range: extents starting at `offset`, covering at most `length`
    /// bytes, at most `maxExtents` of them (at least one when the range is non-empty).
    func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[BlockExtent]>
    /// Waits for in-flight operations, makes writes durable and releases the backing storage.
    func close() async throws
}

/// What an export can do; the NBD server derives its transmission flags from it.
public struct ExportCapabilities: Sendable, Equatable {
    public var isReadOnly: Bool
    public var canTrim: Bool
    public var canWriteZeroes: Bool
    /// Zeroing can be refused quickly when it would not be faster than writing.
    public var canFastZero: Bool
    /// A flush on one connection covers writes completed on every connection.
    public var canMultiConnect: Bool
    public var isRotational: Bool
    public var blockSizes: BlockSizeConstraints

    public init(isReadOnly: Bool, canTrim: Bool, canWriteZeroes: Bool, canFastZero: Bool,
                canMultiConnect: Bool, isRotational: Bool = false, blockSizes: BlockSizeConstraints) {
        self.isReadOnly = isReadOnly
        self.canTrim = canTrim
        self.canWriteZeroes = canWriteZeroes
        self.canFastZero = canFastZero
        self.canMultiConnect = canMultiConnect
        self.isRotational = isRotational
        self.blockSizes = blockSizes
    }
}

/// Block sizes an export advertises (NBD_INFO_BLOCK_SIZE).
public struct BlockSizeConstraints: Sendable, Equatable {
    /// Every request's offset and length are multiples of this (a power of two, 1 to 64 KiB).
    public var minimum: UInt32
    /// Requests this size and aligned to it are efficient.
    public var preferred: UInt32
    /// Largest payload of one request.
    public var maximum: UInt32

    public init(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximum = maximum
    }

    /// 32 MiB: the largest payload NBD clients send by convention (qemu, libnbd).
    public static let maximumPayload: UInt32 = 32 << 20
}

/// A stretch of an export with one allocation status.
public struct BlockExtent: Sendable, Equatable {
    public var length: UInt64
    /// Not allocated: a hole.
    public var isHole: Bool
    /// Reads as zeroes.
    public var isZero: Bool

    public init(length: UInt64, isHole: Bool, isZero: Bool) {
        self.length = length
        self.isHole = isHole
        self.isZero = isZero
    }
}

/// The kinds of request, for range checks (reads and writes fail differently out of range).
public enum ExportCommand: String, Sendable, CaseIterable {
    case read, write, trim, writeZeroes = "write zeroes", cache, blockStatus = "block status"

    /// The name in metrics labels (no spaces).
    public var metricName: String {
        switch self {
        case .writeZeroes: "write_zeroes"
        case .blockStatus: "block_status"
        default: rawValue
        }
    }

    /// Whether the command changes data.
    public var modifies: Bool { self == .write || self == .trim || self == .writeZeroes }
}

extension BlockExport {
    /// Checks a request against the export: past the end is `.invalid` for reads and `.noSpace` for
    /// writes (as the NBD spec asks), any modification of a read-only export is `.readOnly`, and a
    /// range off the minimum block size is `.invalid` (the spec lets a server refuse it; the export
    /// asks for it because a leg behind it needs it).
    public func checkRange(offset: UInt64, length: UInt64, for command: ExportCommand) throws(BlockExportError) {
        if command.modifies && capabilities.isReadOnly {
            throw BlockExportError(.readOnly, "\(command.rawValue) on a read-only export")
        }
        let (end, overflow) = offset.addingReportingOverflow(length)
        if overflow || end > size {
            throw BlockExportError(command.modifies ? .noSpace : .invalid,
                                   "\(command.rawValue) at offset \(offset) length \(length) is beyond the end of the export (\(size) bytes)")
        }
        let unit = UInt64(capabilities.blockSizes.minimum)
        if unit > 1, offset % unit != 0 || length % unit != 0 {
            throw BlockExportError(.invalid, "\(command.rawValue) at offset \(offset) length \(length) is not a multiple of the export's "
                                   + "\(unit)-byte minimum block size")
        }
    }
}
