#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A POSIX error number, as returned by a failed system call or a libaio completion.
///
/// A thin typed wrapper in the spirit of swift-system's `Errno`: it keeps the raw value for
/// mapping to wire error codes (NBD) and renders the C library's message for people.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    /// The raw `errno` value.
    public let rawValue: Int32

    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    public static var current: Errno { Errno(rawValue: errno) }

    public var description: String { String(cString: strerror(rawValue)) }

    public static let interrupted = Errno(rawValue: EINTR)
    public static let tryAgain = Errno(rawValue: EAGAIN)
    public static let ioError = Errno(rawValue: EIO)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let noSpace = Errno(rawValue: ENOSPC)
    public static let notSupported = Errno(rawValue: EOPNOTSUPP)
    public static let permissionDenied = Errno(rawValue: EPERM)
    public static let accessDenied = Errno(rawValue: EACCES)
    public static let readOnlyFileSystem = Errno(rawValue: EROFS)
    public static let busy = Errno(rawValue: EBUSY)
    public static let noEntry = Errno(rawValue: ENOENT)
    public static let badDescriptor = Errno(rawValue: EBADF)
}

/// Runs a system call, retrying on `EINTR`, and throws the `Errno` when it returns -1.
@inline(__always)
func retryingOnInterrupt<T: FixedWidthInteger>(_ body: () -> T) -> Result<T, Errno> {
    while true {
        let result = body()
        if result != -1 { return .success(result) }
        let error = Errno.current
        if error != .interrupted { return .failure(error) }
    }
}
