/// What a block I/O operation was doing when it failed.
public enum BlockOperation: String, Sendable {
    case open, stat, read, write, fdatasync, discard, zero, seek, lock, submit
}

/// A failed block I/O operation, naming the device, the operation and the byte range.
///
/// Every error a user or an NBD client sees from the disk layer is one of these, so a log
/// line always says *which* device failed *where*, not just "Input/output error".
public struct BlockIOError: Error, Sendable, CustomStringConvertible {
    /// The path of the file or block device.
    public let path: String
    /// What was being done.
    public let operation: BlockOperation
    /// First byte of the range concerned, when the operation had one.
    public let offset: UInt64?
    /// Length of the range concerned, when the operation had one.
    public let length: UInt64?
    /// The underlying error number.
    public let errno: Errno
    /// Extra context for people (for example "short read at end of device").
    public let detail: String?

    public init(path: String, operation: BlockOperation, offset: UInt64? = nil, length: UInt64? = nil,
                errno: Errno, detail: String? = nil) {
        self.path = path
        self.operation = operation
        self.offset = offset
        self.length = length
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        var text = "\(operation.rawValue) \(path)"
        if let offset {
            text += " at offset \(offset)"
            if let length { text += " length \(length)" }
        }
        text += ": \(errno)"
        if let detail { text += " (\(detail))" }
        return text
    }
}
