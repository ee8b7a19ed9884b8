import BlockIO
import NIOCore

/// The client side of the fixed-newstyle negotiation (libnbd's and qemu's order), as a pure state
/// machine: fed what the server sends (`NBDReplyFrameDecoder`'s messages), it returns what to send
/// next, and finally the export to transmit with, or why there is none.
///
/// The order: client flags; with TLS, STARTTLS (then the TLS handshake, `tlsEstablished()`);
/// STRUCTURED_REPLY (a server without them is served with simple
/// replies); with structured replies, SET_META_CONTEXT `base:allocation` (so BLOCK_STATUS can
/// tell holes and zeroes); GO for the export, asking for its block sizes (INFO_BLOCK_SIZE). One
/// option at a time: each reply is matched to the option it answers.
public struct NBDClientHandshake: Sendable {
    /// The export negotiated: what transmission needs to know of it.
    public struct Export: Sendable, Equatable {
        public var size: UInt64
        public var flags: NBDTransmissionFlags
        /// The server's minimum, preferred and maximum request sizes (INFO_BLOCK_SIZE), if it sent them.
        public var blockSizes: (minimum: UInt32, preferred: UInt32, maximum: UInt32)?
        public var structuredReplies: Bool
        /// The id of `base:allocation` for BLOCK_STATUS, if the server offers it.
        public var baseAllocationID: UInt32?

        public static func == (a: Export, b: Export) -> Bool {
            a.size == b.size && a.flags == b.flags && a.structuredReplies == b.structuredReplies && a.baseAllocationID == b.baseAllocationID
                && a.blockSizes?.minimum == b.blockSizes?.minimum && a.blockSizes?.preferred == b.blockSizes?.preferred
                && a.blockSizes?.maximum == b.blockSizes?.maximum
        }
    }

    /// What to do next.
    public enum Action: Sendable, Equatable {
        /// Write these bytes to the server.
        case send(ByteBuffer)
        /// STARTTLS was acknowledged: run the TLS handshake, then call `tlsEstablished()`.
        case startTLS
        /// The negotiation is over: transmission starts with this export.
        case transmit(Export)
        /// The negotiation failed; close the connection.
        case fail(NBDClientHandshakeError)
    }

    private enum Step: Sendable {
        case greeting
        case startTLS
        case tlsHandshake
        case structuredReply
        case metaContext
        case go
        case done
    }

    /// The export asked for.
    public let exportName: String
    /// Whether the connection must be TLS (STARTTLS first; a server without it is an error).
    public let tls: Bool
    private var step = Step.greeting
    private var structuredReplies = false
    private var baseAllocationID: UInt32?
    private var info: (size: UInt64, flags: NBDTransmissionFlags)?
    private var blockSizes: (minimum: UInt32, preferred: UInt32, maximum: UInt32)?

    public init(exportName: String, tls: Bool = false) {
        self.exportName = exportName
        self.tls = tls
    }

    /// The TLS handshake after STARTTLS succeeded: the negotiation goes on, encrypted.
    public mutating func tlsEstablished() -> [Action] {
        guard step == .tlsHandshake else { return fail(.protocolViolation("TLS established without STARTTLS")) }
        var buffer = ByteBuffer()
        NBDCodec.writeOptionRequest(.structuredReply, data: ByteBuffer(), into: &buffer)
        step = .structuredReply
        return [.send(buffer)]
    }

    /// Handles one message of the server; returns what to send, or the end of the negotiation.
    public mutating func receive(_ message: NBDServerMessage) -> [Action] {
        switch (step, message) {
        case (.greeting, .greeting(let flags)):
            var buffer = ByteBuffer()
            buffer.writeInteger(flags.contains(.noZeroes) ? NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue
                                                          : NBDClientFlags.fixedNewstyle.rawValue)
            NBDCodec.writeOptionRequest(tls ? .startTLS : .structuredReply, data: ByteBuffer(), into: &buffer)
            step = tls ? .startTLS : .structuredReply
            return [.send(buffer)]
        case (.tlsHandshake, _):
            return fail(.protocolViolation("\(Self.name(message)) while TLS was being set up"))
        case (_, .optionReply(let header, let data)):
            return optionReply(header, data)
        default:
            step = .done
            return [.fail(.protocolViolation("\(Self.name(message)) during the negotiation"))]
        }
    }

    private mutating func optionReply(_ header: NBDOptionReplyHeader, _ data: ByteBuffer) -> [Action] {
        let expected: NBDOption
        switch step {
        case .startTLS: expected = .startTLS
        case .tlsHandshake: return fail(.protocolViolation("a reply to \(header.option) while TLS was being set up"))
        case .structuredReply: expected = .structuredReply
        case .metaContext: expected = .setMetaContext
        case .go: expected = .go
        case .greeting, .done: return fail(.protocolViolation("a reply to \(header.option) before any option was sent"))
        }
        guard header.option == expected else {
            return fail(.protocolViolation("a reply to \(header.option) where one to \(expected) was due"))
        }
        if header.reply.isError { return refused(header, data) }
        switch (step, header.reply) {
        case (.startTLS, .ack):
            step = .tlsHandshake
            return [.startTLS]
        case (.structuredReply, .ack):
            structuredReplies = true
            return sendMetaContext()
        case (.metaContext, .metaContext):
            var data = data
            guard let id = data.readInteger(as: UInt32.self) else { return fail(.protocolViolation("a META_CONTEXT reply without an id")) }
            if data.readString(length: data.readableBytes) == NBDMetaContext.baseAllocation { baseAllocationID = id }
            return []
        case (.metaContext, .ack):
            return sendGo()
        case (.go, .info):
            return goInfo(data)
        case (.go, .ack):
            guard let info else { return fail(.protocolViolation("GO acknowledged without the export's size (INFO_EXPORT)")) }
            step = .done
            return [.transmit(Export(size: info.size, flags: info.flags, blockSizes: blockSizes, structuredReplies: structuredReplies,
                                     baseAllocationID: baseAllocationID))]
        default:
            return fail(.protocolViolation("reply type \(header.reply.rawValue) to \(header.option)"))
        }
    }

    /// An error reply: what a client can do without the option, or the end.
    private mutating func refused(_ header: NBDOptionReplyHeader, _ data: ByteBuffer) -> [Action] {
        let message = data.readableBytes > 0
            ? UntrustedText.escape(bytes: data.readableBytesView, limit: NBDCodec.maximumStringLength) : nil
        switch step {
        case .structuredReply where header.reply != .errorTLSRequired:
            return sendGo()  // simple replies only; no BLOCK_STATUS without structured replies
        case .metaContext where header.reply != .errorTLSRequired:
            return sendGo()  // no base:allocation: every range reads as data
        default:
            return fail(.refused(option: header.option, reply: header.reply, exportName: exportName, message: message))
        }
    }

    private mutating func sendMetaContext() -> [Action] {
        var query = ByteBuffer()
        NBDCodec.writeString(exportName, into: &query)
        query.writeInteger(UInt32(1))
        NBDCodec.writeString(NBDMetaContext.baseAllocation, into: &query)
        var buffer = ByteBuffer()
        NBDCodec.writeOptionRequest(.setMetaContext, data: query, into: &buffer)
        step = .metaContext
        return [.send(buffer)]
    }

    private mutating func sendGo() -> [Action] {
        var request = ByteBuffer()
        NBDCodec.writeString(exportName, into: &request)
        request.writeInteger(UInt16(1))
        request.writeInteger(NBDInfo.blockSize.rawValue)
        var buffer = ByteBuffer()
        NBDCodec.writeOptionRequest(.go, data: request, into: &buffer)
        step = .go
        return [.send(buffer)]
    }

    /// An INFO reply to GO: the export's size and flags, or its block sizes (others are ignored).
    private mutating func goInfo(_ data: ByteBuffer) -> [Action] {
        var data = data
        guard let type = data.readInteger(as: UInt16.self) else { return fail(.protocolViolation("an empty INFO reply")) }
        switch NBDInfo(rawValue: type) {
        case .export:
            guard data.readableBytes == 10, let (size, flags) = data.readMultipleIntegers(as: (UInt64, UInt16).self) else {
                return fail(.protocolViolation("an INFO_EXPORT reply of \(data.readableBytes + 2) bytes (12 expected)"))
            }
            info = (size, NBDTransmissionFlags(rawValue: flags))
        case .blockSize:
            guard data.readableBytes == 12, let (minimum, preferred, maximum) = data.readMultipleIntegers(as: (UInt32, UInt32, UInt32).self)
            else { return fail(.protocolViolation("an INFO_BLOCK_SIZE reply of \(data.readableBytes + 2) bytes (14 expected)")) }
            // A maximum under 4 KiB would cut every copy into thousands of requests in flight: no
            // real server has one, so it is refused as broken.
            guard minimum.nonzeroBitCount == 1, minimum <= 65536, preferred.nonzeroBitCount == 1, preferred >= minimum,
                  maximum >= minimum, maximum >= 4096 else {
                return fail(.protocolViolation("block sizes minimum \(minimum), preferred \(preferred), maximum \(maximum) "
                                               + "break the protocol's rules"))
            }
            blockSizes = (minimum, preferred, maximum)
        default:
            break
        }
        return []
    }

    private mutating func fail(_ error: NBDClientHandshakeError) -> [Action] {
        step = .done
        return [.fail(error)]
    }

    private static func name(_ message: NBDServerMessage) -> String {
        switch message {
        case .greeting: "a second greeting"
        case .optionReply(let header, _): "a reply to \(header.option)"
        case .simpleReply: "a transmission reply"
        case .chunk: "a reply chunk"
        }
    }
}

/// Why a negotiation failed, for a message that names the server's URI around it.
public enum NBDClientHandshakeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server refused an option the client cannot do without.
    case refused(option: NBDOption, reply: NBDOptionReply, exportName: String, message: String?)
    /// The server broke the protocol.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case let .refused(option, reply, exportName, message):
            let why = message.map { ": \($0)" } ?? ""
            let name = UntrustedText.escape(exportName)
            switch reply {
            case .errorUnknown: return "the server has no export '\(name)'\(why)"
            case .errorTLSRequired: return "the server requires TLS (use an nbds:// or nbds+unix:// URI)\(why)"
            case _ where option == .startTLS: return "the server does not offer TLS (reply \(reply.rawValue))\(why)"
            case .errorPolicy: return "the server refuses export '\(name)' by its policy\(why)"
            case .errorShutdown: return "the server is shutting down\(why)"
            default: return "the server refused \(option) for export '\(name)' (reply \(reply.rawValue))\(why)"
            }
        case .protocolViolation(let what):
            return "the server broke the NBD protocol: \(what)"
        }
    }
}
