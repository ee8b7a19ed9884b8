/// An option request header from the client; its data follows on the wire.
public struct NBDOptionHeader: Sendable, Equatable {
    public var option: NBDOption
    public var length: UInt32
    public init(option: NBDOption, length: UInt32) { self.option = option; self.length = length }
}

/// The data of NBD_OPT_INFO and NBD_OPT_GO.
public struct NBDExportRequest: Sendable, Equatable {
    public var name: String
    public var requestedInfo: [NBDInfo]
    public init(name: String, requestedInfo: [NBDInfo]) { self.name = name; self.requestedInfo = requestedInfo }
}

/// The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
public struct NBDMetaContextRequest: Sendable, Equatable {
    public var exportName: String
    public var queries: [String]
    public init(exportName: String, queries: [String]) { self.exportName = exportName; self.queries = queries }
}

/// A transmission request header (28 bytes); a WRITE's payload of `length` bytes follows it.
public struct NBDRequest: Sendable, Equatable {
    public var flags: NBDCommandFlags
    public var command: NBDCommand
    /// Opaque value echoed in the reply ("handle" in older texts).
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: NBDCommandFlags = [], command: NBDCommand, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags; self.command = command; self.cookie = cookie; self.offset = offset; self.length = length
    }

    /// Size of the header on the wire.
    public static let wireSize = 28

    /// Whether a payload of `length` bytes follows the header.
    public var hasPayload: Bool { command == .write }
}

/// A protocol violation by the peer; the connection cannot continue.
public enum NBDProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    case badMagic(expected: UInt64, received: UInt64)
    case unknownClientFlags(UInt32)
    case optionTooLong(option: NBDOption, length: UInt32, limit: UInt32)
    case tooManyOptions(limit: Int)
    case malformedOption(NBDOption, String)
    /// A server's greeting without the fixed newstyle flag (an oldstyle or plain newstyle server).
    case notFixedNewstyle
    /// A server's reply or chunk longer than a client takes.
    case replyTooLong(what: String, length: UInt32, limit: UInt32)
    /// A server's reply to a request that is not in flight.
    case unexpectedReply(cookie: UInt64)
    /// A server's reply that does not fit the request it answers.
    case malformedReply(String)

    public var description: String {
        switch self {
        case let .badMagic(expected, received):
            return "bad magic 0x\(String(received, radix: 16)) (expected 0x\(String(expected, radix: 16)))"
        case let .unknownClientFlags(flags):
            return "unknown client flags 0x\(String(flags, radix: 16))"
        case let .optionTooLong(option, length, limit):
            return "\(option) with \(length) bytes of data (limit \(limit))"
        case let .tooManyOptions(limit):
            return "more than \(limit) options in one negotiation"
        case let .malformedOption(option, why):
            return "malformed \(option): \(why)"
        case .notFixedNewstyle:
            return "the server does not speak fixed newstyle negotiation"
        case let .replyTooLong(what, length, limit):
            return "\(what) of \(length) bytes (limit \(limit))"
        case let .unexpectedReply(cookie):
            return "a reply to request 0x\(String(cookie, radix: 16)), which is not in flight"
        case .malformedReply(let what):
            return "a malformed reply: \(what)"
        }
    }
}
