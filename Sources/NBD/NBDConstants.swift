/// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). Values that arrive
/// from a peer are kept as raw-value structs, so unknown ones stay representable.
public enum NBDMagic {
    /// "NBDMAGIC": first 8 bytes of the server's greeting.
    public static let greeting: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": second 8 bytes of the greeting and start of every option request.
    public static let option: UInt64 = 0x4948_4156_454f_5054
    /// Start of every option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// Start of every transmission request.
    public static let request: UInt32 = 0x2560_9513
    /// Start of a simple reply.
    public static let simpleReply: UInt32 = 0x6744_6698
    /// Start of a structured reply chunk.
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Server handshake flags (u16 in the greeting).
public struct NBDHandshakeFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fixedNewstyle = NBDHandshakeFlags(rawValue: 1 << 0)
    public static let noZeroes = NBDHandshakeFlags(rawValue: 1 << 1)
}

/// Client flags (u32 after the greeting).
public struct NBDClientFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fixedNewstyle = NBDClientFlags(rawValue: 1 << 0)
    public static let noZeroes = NBDClientFlags(rawValue: 1 << 1)
    public static let known: NBDClientFlags = [.fixedNewstyle, .noZeroes]
}

/// Per-export transmission flags (u16).
public struct NBDTransmissionFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
    public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
    public static let sendCache = NBDTransmissionFlags(rawValue: 1 << 10)
    public static let sendFastZero = NBDTransmissionFlags(rawValue: 1 << 11)
}

/// Option request types.
public struct NBDOption: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let exportName = NBDOption(rawValue: 1)
    public static let abort = NBDOption(rawValue: 2)
    public static let list = NBDOption(rawValue: 3)
    public static let startTLS = NBDOption(rawValue: 5)
    public static let info = NBDOption(rawValue: 6)
    public static let go = NBDOption(rawValue: 7)
    public static let structuredReply = NBDOption(rawValue: 8)
    public static let listMetaContext = NBDOption(rawValue: 9)
    public static let setMetaContext = NBDOption(rawValue: 10)

    public var description: String {
        switch rawValue {
        case 1: "EXPORT_NAME"
        case 2: "ABORT"
        case 3: "LIST"
        case 4: "PEEK_EXPORT"
        case 5: "STARTTLS"
        case 6: "INFO"
        case 7: "GO"
        case 8: "STRUCTURED_REPLY"
        case 9: "LIST_META_CONTEXT"
        case 10: "SET_META_CONTEXT"
        case 11: "EXTENDED_HEADERS"
        default: "option \(rawValue)"
        }
    }
}

/// Option reply types (errors have bit 31 set).
public struct NBDOptionReply: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ack = NBDOptionReply(rawValue: 1)
    public static let server = NBDOptionReply(rawValue: 2)
    public static let info = NBDOptionReply(rawValue: 3)
    public static let metaContext = NBDOptionReply(rawValue: 4)
    public static let errorUnsupported = NBDOptionReply(rawValue: 1 << 31 | 1)
    public static let errorPolicy = NBDOptionReply(rawValue: 1 << 31 | 2)
    public static let errorInvalid = NBDOptionReply(rawValue: 1 << 31 | 3)
    public static let errorPlatform = NBDOptionReply(rawValue: 1 << 31 | 4)
    public static let errorTLSRequired = NBDOptionReply(rawValue: 1 << 31 | 5)
    public static let errorUnknown = NBDOptionReply(rawValue: 1 << 31 | 6)
    public static let errorShutdown = NBDOptionReply(rawValue: 1 << 31 | 7)
    public static let errorTooBig = NBDOptionReply(rawValue: 1 << 31 | 9)
    public var isError: Bool { rawValue & (1 << 31) != 0 }
}

/// Information types of NBD_OPT_INFO / NBD_OPT_GO.
public struct NBDInfo: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let export = NBDInfo(rawValue: 0)
    public static let name = NBDInfo(rawValue: 1)
    public static let description = NBDInfo(rawValue: 2)
    public static let blockSize = NBDInfo(rawValue: 3)
}

/// Transmission command types.
public struct NBDCommand: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let read = NBDCommand(rawValue: 0)
    public static let write = NBDCommand(rawValue: 1)
    public static let disconnect = NBDCommand(rawValue: 2)
    public static let flush = NBDCommand(rawValue: 3)
    public static let trim = NBDCommand(rawValue: 4)
    public static let cache = NBDCommand(rawValue: 5)
    public static let writeZeroes = NBDCommand(rawValue: 6)
    public static let blockStatus = NBDCommand(rawValue: 7)

    public var description: String {
        let names = ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"]
        return Int(rawValue) < names.count ? names[Int(rawValue)] : "command \(rawValue)"
    }
}

/// Transmission command flags.
public struct NBDCommandFlags: OptionSet, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = NBDCommandFlags(rawValue: 1 << 0)
    public static let noHole = NBDCommandFlags(rawValue: 1 << 1)
    public static let dontFragment = NBDCommandFlags(rawValue: 1 << 2)
    public static let requestOne = NBDCommandFlags(rawValue: 1 << 3)
    public static let fastZero = NBDCommandFlags(rawValue: 1 << 4)
    public static let known: NBDCommandFlags = [.fua, .noHole, .dontFragment, .requestOne, .fastZero]
}

/// Structured reply chunk types and flags.
public struct NBDChunkType: RawRepresentable, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let none = NBDChunkType(rawValue: 0)
    public static let offsetData = NBDChunkType(rawValue: 1)
    public static let offsetHole = NBDChunkType(rawValue: 2)
    public static let blockStatus = NBDChunkType(rawValue: 5)
    public static let error = NBDChunkType(rawValue: 1 << 15 | 1)
    public static let errorOffset = NBDChunkType(rawValue: 1 << 15 | 2)
    /// Chunk flag: this is the last chunk of the reply.
    public static let flagDone: UInt16 = 1
}

/// Error numbers on the wire (they are Linux errno values, but fixed by the protocol).
public struct NBDErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ok = NBDErrorCode(rawValue: 0)
    public static let permission = NBDErrorCode(rawValue: 1)
    public static let io = NBDErrorCode(rawValue: 5)
    public static let noMemory = NBDErrorCode(rawValue: 12)
    public static let invalid = NBDErrorCode(rawValue: 22)
    public static let noSpace = NBDErrorCode(rawValue: 28)
    public static let overflow = NBDErrorCode(rawValue: 75)
    public static let notSupported = NBDErrorCode(rawValue: 95)
    public static let shutdown = NBDErrorCode(rawValue: 108)

    public var description: String {
        switch rawValue {
        case 0: "OK"
        case 1: "EPERM"
        case 5: "EIO"
        case 12: "ENOMEM"
        case 22: "EINVAL"
        case 28: "ENOSPC"
        case 75: "EOVERFLOW"
        case 95: "ENOTSUP"
        case 108: "ESHUTDOWN"
        default: "error \(rawValue)"
        }
    }
}

/// The one metadata context this server offers.
public enum NBDMetaContext {
    public static let baseAllocation = "base:allocation"
    /// Its id in SET_META_CONTEXT replies and BLOCK_STATUS chunks.
    public static let baseAllocationID: UInt32 = 1
    /// base:allocation status bits.
    public static let stateHole: UInt32 = 1 << 0
    public static let stateZero: UInt32 = 1 << 1
}
