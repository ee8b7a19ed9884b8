import NIOCore
import Testing
@testable import NBD

/// The client's negotiation against the server's real pipeline (both ends of this code base), and
/// against hand-written servers for what ours never does: no structured replies, refusals, broken
/// replies.
@Suite struct NBDClientHandshakeTests {
    enum Outcome: Equatable {
        case transmit(NBDClientHandshake.Export)
        case fail(NBDClientHandshakeError)
    }

    /// Runs the negotiation for `name` with the server on `connection` until it ends.
    func negotiate(_ connection: NBDTestConnection, _ name: String) throws -> Outcome {
        var handshake = NBDClientHandshake(exportName: name)
        let decoder = NBDReplyFrameDecoder(readLength: { _ in nil })
        var input = ByteBuffer()
        for _ in 0..<20 {
            input.writeImmutableBuffer(try connection.bytes(connection.unread))
            while let message = try decoder.next(from: &input) {
                for action in handshake.receive(message) {
                    switch action {
                    case .send(let bytes): try connection.send(bytes)
                    case .transmit(let export): return .transmit(export)
                    case .fail(let error): return .fail(error)
                    case .startTLS: return .fail(.protocolViolation("test: STARTTLS without TLS asked"))
                    }
                }
            }
        }
        Issue.record("the negotiation did not end")
        return .fail(.protocolViolation("test: no end"))
    }

    /// Runs the negotiation against a server that sends `replies` (after its greeting) whatever
    /// the client sends.
    func negotiate(scripted replies: [(NBDOption, NBDOptionReply, ByteBuffer)], noZeroes: Bool = true,
                   tls: Bool = false) -> (Outcome?, sent: Int) {
        var handshake = NBDClientHandshake(exportName: "disk", tls: tls)
        var sent = 0
        var messages: [NBDServerMessage] = [.greeting(noZeroes ? [.fixedNewstyle, .noZeroes] : .fixedNewstyle)]
        messages += replies.map { .optionReply(NBDOptionReplyHeader(option: $0.0, reply: $0.1, length: UInt32($0.2.readableBytes)), data: $0.2) }
        for message in messages {
            for action in handshake.receive(message) {
                switch action {
                case .send: sent += 1
                case .transmit(let export): return (.transmit(export), sent)
                case .fail(let error): return (.fail(error), sent)
                case .startTLS:
                    for next in handshake.tlsEstablished() { if case .send = next { sent += 1 } }
                }
            }
        }
        return (nil, sent)
    }

    func info(_ write: (inout ByteBuffer) -> Void) -> ByteBuffer {
        var buffer = ByteBuffer()
        write(&buffer)
        return buffer
    }

    /// Against our server: structured replies, base:allocation, the export's size, flags and block
    /// sizes.
    @Test func negotiatesWithTheServerItsExportAndItsBlockSizes() throws {
        let connection = try NBDTestConnection(exports: [(name: "disk", export: MemoryExport(size: 3 << 20))])
        guard case .transmit(let export) = try negotiate(connection, "disk") else {
            Issue.record("no export")
            return
        }
        #expect(export.size == 3 << 20 && export.structuredReplies && export.baseAllocationID == NBDMetaContext.baseAllocationID)
        #expect(export.flags.contains(.hasFlags) && export.flags.contains(.sendFlush) && !export.flags.contains(.readOnly))
        #expect(export.blockSizes?.minimum == 1 && export.blockSizes?.maximum == 64 << 10)
        #expect(connection.isOpen)
    }

    /// A missing export is the server's refusal of GO, named.
    @Test func aMissingExportIsNamed() throws {
        let connection = try NBDTestConnection(exports: [(name: "disk", export: MemoryExport())])
        let outcome = try negotiate(connection, "nope")
        guard case .fail(let error) = outcome else {
            Issue.record("negotiated \(outcome)")
            return
        }
        #expect(error.description.hasPrefix("the server has no export 'nope'"), "\(error)")
    }

    /// A server without structured replies (or without base:allocation) is still used: GO follows.
    @Test func aServerWithoutStructuredRepliesIsServedSimply() {
        let export = info { NBDCodec.writeInfoExport(size: 4096, flags: [.hasFlags], into: &$0) }
        let (outcome, sent) = negotiate(scripted: [(.structuredReply, .errorUnsupported, ByteBuffer()), (.go, .info, export),
                                                   (.go, .ack, ByteBuffer())])
        #expect(outcome == .transmit(.init(size: 4096, flags: [.hasFlags], blockSizes: nil, structuredReplies: false, baseAllocationID: nil)))
        #expect(sent == 2)  // flags + STRUCTURED_REPLY, then GO
        let (withoutContext, _) = negotiate(scripted: [(.structuredReply, .ack, ByteBuffer()), (.setMetaContext, .ack, ByteBuffer()),
                                                       (.go, .info, export), (.go, .ack, ByteBuffer())])
        #expect(withoutContext == .transmit(.init(size: 4096, flags: [.hasFlags], blockSizes: nil, structuredReplies: true,
                                                  baseAllocationID: nil)))
    }

    /// Refusals that end the negotiation say why, with the server's message (escaped).
    @Test func refusalsSayWhy() {
        let (tls, _) = negotiate(scripted: [(.structuredReply, .errorTLSRequired, ByteBuffer(string: "TLS\u{1B}[2J only"))])
        guard case .fail(let error)? = tls else {
            Issue.record("\(String(describing: tls))")
            return
        }
        #expect(error.description.contains("requires TLS (use an nbds:// or nbds+unix:// URI)") && !error.description.contains("\u{1B}"))
        let (policy, _) = negotiate(scripted: [(.structuredReply, .ack, ByteBuffer()), (.setMetaContext, .ack, ByteBuffer()),
                                               (.go, .errorPolicy, ByteBuffer())])
        #expect(policy == .fail(.refused(option: .go, reply: .errorPolicy, exportName: "disk", message: nil)))
    }

    /// Replies that break the protocol end the negotiation.
    @Test func brokenRepliesEndIt() {
        let export = info { NBDCodec.writeInfoExport(size: 4096, flags: [.hasFlags], into: &$0) }
        let badSizes = info { NBDCodec.writeInfoBlockSize(minimum: 3, preferred: 4096, maximum: 1 << 20, into: &$0) }
        // A maximum of 1 byte would cut a 32 MiB read into 32 Mi requests in flight.
        let tinyMaximum = info { NBDCodec.writeInfoBlockSize(minimum: 1, preferred: 1, maximum: 1, into: &$0) }
        let cases: [([(NBDOption, NBDOptionReply, ByteBuffer)], String)] = [
            ([(.go, .ack, ByteBuffer())], "a reply to GO where one to STRUCTURED_REPLY was due"),
            ([(.structuredReply, .errorUnsupported, ByteBuffer()), (.go, .ack, ByteBuffer())], "without the export's size"),
            ([(.structuredReply, .errorUnsupported, ByteBuffer()), (.go, .info, ByteBuffer(bytes: [0, 0, 1]))], "INFO_EXPORT reply of 3 bytes"),
            ([(.structuredReply, .errorUnsupported, ByteBuffer()), (.go, .info, export), (.go, .info, badSizes)], "block sizes minimum 3"),
            ([(.structuredReply, .errorUnsupported, ByteBuffer()), (.go, .info, export), (.go, .info, tinyMaximum)], "maximum 1 break"),
            ([(.structuredReply, .metaContext, ByteBuffer())], "reply type 4 to STRUCTURED_REPLY"),
        ]
        for (replies, problem) in cases {
            let (outcome, _) = negotiate(scripted: replies)
            guard case .fail(.protocolViolation(let what))? = outcome else {
                Issue.record("\(problem): \(String(describing: outcome))")
                continue
            }
            #expect(what.contains(problem), "\(what)")
        }
    }

    /// With TLS the first option is STARTTLS; after its ACK and the TLS handshake the negotiation
    /// goes on as without (structured replies, meta context, GO).
    @Test func withTLSStartTLSComesFirst() {
        var handshake = NBDClientHandshake(exportName: "disk", tls: true)
        guard case .send(var first)? = handshake.receive(.greeting([.fixedNewstyle, .noZeroes])).first else {
            Issue.record("nothing sent after the greeting")
            return
        }
        first.moveReaderIndex(forwardBy: 4 + 8)
        #expect(first.readInteger(as: UInt32.self) == NBDOption.startTLS.rawValue)
        let ack = NBDServerMessage.optionReply(NBDOptionReplyHeader(option: .startTLS, reply: .ack, length: 0), data: ByteBuffer())
        #expect(handshake.receive(ack) == [.startTLS])
        // Anything the server sends before TLS carries the stream is a violation.
        var early = handshake
        guard case .fail(.protocolViolation(let why))? = early.receive(ack).first else {
            Issue.record("not refused")
            return
        }
        #expect(why.contains("while TLS was being set up"))
        guard case .send(var next)? = handshake.tlsEstablished().first else {
            Issue.record("nothing sent after TLS")
            return
        }
        next.moveReaderIndex(forwardBy: 8)
        #expect(next.readInteger(as: UInt32.self) == NBDOption.structuredReply.rawValue)
    }

    /// A server without TLS refuses STARTTLS: the end, saying so.
    @Test func aServerWithoutTLSIsAnError() {
        let (outcome, _) = negotiate(scripted: [(.startTLS, .errorUnsupported, ByteBuffer())], tls: true)
        guard case .fail(let error)? = outcome else {
            Issue.record("\(String(describing: outcome))")
            return
        }
        #expect(error.description == "the server does not offer TLS (reply \(NBDOptionReply.errorUnsupported.rawValue))")
    }

    /// Bytes that came in the clear behind STARTTLS's ACK are refused, not taken as if TLS had
    /// brought them.
    @Test func bytesInTheClearAfterStartTLSAreRefused() throws {
        let tlsDecoder = NBDReplyFrameDecoder(readLength: { _ in nil })
        var input = ByteBuffer()
        NBDCodec.writeGreeting([.fixedNewstyle, .noZeroes], into: &input)
        NBDCodec.writeOptionReply(.startTLS, .ack, into: &input)
        input.writeBytes([1, 2, 3])
        _ = try tlsDecoder.next(from: &input)
        guard case .optionReply? = try tlsDecoder.next(from: &input) else {
            Issue.record("no ACK")
            return
        }
        #expect(throws: NBDProtocolError.malformedReply("3 bytes sent in the clear after STARTTLS was acknowledged")) {
            _ = try tlsDecoder.next(from: &input)
        }
        var none = ByteBuffer()
        #expect(try tlsDecoder.next(from: &none) == nil, "nothing in the clear: it waits for TLS")
        tlsDecoder.tlsStarted()
        NBDCodec.writeOptionReply(.structuredReply, .ack, into: &none)
        guard case .optionReply? = try tlsDecoder.next(from: &none) else {
            Issue.record("no reply after TLS")
            return
        }
    }
}
