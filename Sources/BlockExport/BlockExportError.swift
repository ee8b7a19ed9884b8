import BlockIO

/// Why an export operation failed, in terms a block protocol can carry back to a client.
public struct BlockExportError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The device failed (EIO).
        case io
        /// Out of space, or a write past the end (ENOSPC).
        case noSpace
        /// A malformed or out-of-range request (EINVAL).
        case invalid
        /// The operation cannot be done as asked, e.g. a fast zero that would be slow (ENOTSUP).
        case notSupported
        /// A write to a read-only export, or the OS refused access (EPERM).
        case readOnly
        /// A reply would be too large (EOVERFLOW).
        case overflow
        /// The export is closing (ESHUTDOWN).
        case shuttingDown
    }

    public let kind: Kind
    /// For people and logs: names the device and offset where there is one.
    public let message: String
    /// The disk error behind it, if any.
    public let underlying: BlockIOError?

    public init(_ kind: Kind, _ message: String, underlying: BlockIOError? = nil) {
        self.kind = kind
        self.message = message
        self.underlying = underlying
    }

    /// Classifies a disk error by its errno.
    public init(_ error: BlockIOError) {
        let kind: Kind
        switch error.errno {
        case .noSpace: kind = .noSpace
        case .invalidArgument: kind = .invalid
        case .notSupported: kind = .notSupported
        case .permissionDenied, .accessDenied, .readOnlyFileSystem: kind = .readOnly
        case Errno(rawValue: 108): kind = .shuttingDown  // ESHUTDOWN
        default: kind = .io
        }
        self.init(kind, error.description, underlying: error)
    }

    public var description: String { message }
}
