#if canImport(Glibc)
import Glibc
#endif

/// A heap buffer aligned for `O_DIRECT` I/O (start address and capacity are multiples of
/// `alignment`). Owned by reference so an in-flight libaio request can keep it alive.
public final class AlignedBuffer: @unchecked Sendable {
    /// Alignment every buffer honours: 4096 covers every logical block size in use.
    public static let alignment = 4096

    /// The buffer's memory. Valid until the buffer is deinitialised.
    public let bytes: UnsafeMutableRawBufferPointer

    /// Allocates at least `capacity` bytes, rounded up to the alignment.
    public init(capacity: Int) {
        let rounded = max(Self.alignment, (capacity + Self.alignment - 1) / Self.alignment * Self.alignment)
        var pointer: UnsafeMutableRawPointer?
        let rc = posix_memalign(&pointer, Self.alignment, rounded)
        precondition(rc == 0 && pointer != nil, "posix_memalign(\(rounded)) failed: \(rc)")
        bytes = UnsafeMutableRawBufferPointer(start: pointer, count: rounded)
    }

    deinit { free(bytes.baseAddress) }

    /// Capacity in bytes.
    public var capacity: Int { bytes.count }

    /// Start address.
    public var baseAddress: UnsafeMutableRawPointer { bytes.baseAddress! }
}
