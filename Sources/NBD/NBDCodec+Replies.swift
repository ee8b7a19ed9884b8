import NIOCore

/// The client side of the codec: what a server sends, read back. The server writes these with the
/// functions of `NBDCodec`; an NBD client leg reads them here. Each reader consumes a whole header
/// or nothing (nil: not all of it has arrived), and throws on a bad magic without consuming.
extension NBDCodec {
    /// The server's greeting (18 bytes): "NBDMAGIC", "IHAVEOPT" and the handshake flags. A server
    /// that is not fixed newstyle (an oldstyle one sends its export's size here) is refused.
    public static func readGreeting(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDHandshakeFlags? {
        guard let (magic, option, flags) = buffer.peekMultipleIntegers(as: (UInt64, UInt64, UInt16).self) else { return nil }
        guard magic == NBDMagic.greeting else { throw .badMagic(expected: NBDMagic.greeting, received: magic) }
        guard option == NBDMagic.option else { throw .badMagic(expected: NBDMagic.option, received: option) }
        let handshake = NBDHandshakeFlags(rawValue: flags)
        guard handshake.contains(.fixedNewstyle) else { throw .notFixedNewstyle }
        buffer.moveReaderIndex(forwardBy: 18)
        return handshake
    }

    /// An option reply header (20 bytes); its `length` bytes of data follow.
    public static func readOptionReplyHeader(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDOptionReplyHeader? {
        guard let (magic, option, reply, length) = buffer.peekMultipleIntegers(as: (UInt64, UInt32, UInt32, UInt32).self) else {
            return nil
        }
        guard magic == NBDMagic.optionReply else { throw .badMagic(expected: NBDMagic.optionReply, received: magic) }
        buffer.moveReaderIndex(forwardBy: NBDOptionReplyHeader.wireSize)
        return NBDOptionReplyHeader(option: NBDOption(rawValue: option), reply: NBDOptionReply(rawValue: reply), length: length)
    }

    /// A transmission reply header: a simple reply (16 bytes; a successful READ's data follows) or
    /// a structured reply chunk header (20 bytes; its payload follows).
    public static func readReplyHeader(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDReplyHeader? {
        guard let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        switch magic {
        case NBDMagic.simpleReply:
            guard let (_, error, cookie) = buffer.peekMultipleIntegers(as: (UInt32, UInt32, UInt64).self) else { return nil }
            buffer.moveReaderIndex(forwardBy: 16)
            return .simple(cookie: cookie, error: NBDErrorCode(rawValue: error))
        case NBDMagic.structuredReply:
            guard let (_, flags, type, cookie, length) = buffer.peekMultipleIntegers(as: (UInt32, UInt16, UInt16, UInt64, UInt32).self) else {
                return nil
            }
            buffer.moveReaderIndex(forwardBy: 20)
            return .chunk(NBDChunkHeader(done: flags & NBDChunkType.flagDone != 0, flags: flags, type: NBDChunkType(rawValue: type),
                                         cookie: cookie, length: length))
        default:
            throw .badMagic(expected: UInt64(NBDMagic.simpleReply), received: UInt64(magic))
        }
    }
}

/// The header of a server's reply to an option.
public struct NBDOptionReplyHeader: Sendable, Equatable {
    public static let wireSize = 20
    public var option: NBDOption
    public var reply: NBDOptionReply
    public var length: UInt32
}

/// The header of a structured reply chunk.
public struct NBDChunkHeader: Sendable, Equatable {
    /// The last chunk of its reply (NBD_REPLY_FLAG_DONE).
    public var done: Bool
    /// Every flag as sent (unknown ones included).
    public var flags: UInt16
    public var type: NBDChunkType
    public var cookie: UInt64
    public var length: UInt32
}

/// A transmission reply header.
public enum NBDReplyHeader: Sendable, Equatable {
    case simple(cookie: UInt64, error: NBDErrorCode)
    case chunk(NBDChunkHeader)
}
