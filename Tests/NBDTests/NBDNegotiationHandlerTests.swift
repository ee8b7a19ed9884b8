import NIOCore
import NIOTLS
import Testing
@testable import NBD

/// The negotiation handler on the server's pipeline: every option, and every rule of
/// docs/ARCHITECTURE.md on negotiation (which errors go on, which close).
@Suite struct NBDNegotiationHandlerTests {
    private let export = MemoryExport(size: 1 << 20)

    private func connect() throws -> NBDTestConnection {
        let connection = try NBDTestConnection(exports: [("disk", export)])
        #expect(try connection.readGreeting() == [.fixedNewstyle, .noZeroes])
        try connection.sendFlags()
        return connection
    }

    /// Whether transmission runs: a READ of 4 bytes is answered with the export's data.
    private func served(_ connection: NBDTestConnection) throws -> Bool {
        try connection.sendRequest(.read, cookie: 42, offset: 8, length: 4)
        let reply = try connection.readSimpleReply()
        let data = Array(try connection.bytes(4).readableBytesView)
        return reply == .init(error: .ok, cookie: 42) && data == export.bytes(at: 8, count: 4)
    }

    @Test func exportNameStartsTransmissionWithOrWithoutZeroes() throws {
        for zeroes in [false, true] {
            let connection = try NBDTestConnection(exports: [("disk", export)])
            _ = try connection.readGreeting()
            try connection.sendFlags(zeroes ? .fixedNewstyle : [.fixedNewstyle, .noZeroes])
            try connection.sendOption(.exportName, ByteBuffer(string: "disk"))
            var reply = try connection.bytes(10)
            #expect(reply.readInteger(as: UInt64.self) == 1 << 20)
            let flags = NBDTransmissionFlags(rawValue: reply.readInteger()!)
            #expect(flags.isSuperset(of: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes]) && !flags.contains(.readOnly))
            if zeroes { #expect(Array(try connection.bytes(124).readableBytesView) == [UInt8](repeating: 0, count: 124)) }
            #expect(try served(connection))
        }
    }

    /// EXPORT_NAME has no error reply: an unknown name closes the connection.
    @Test func exportNameOfAnUnknownExportCloses() throws {
        let connection = try connect()
        try connection.sendOption(.exportName, ByteBuffer(string: "nope"))
        #expect(!connection.isOpen)
        #expect(connection.unread == 0)
    }

    @Test func abortIsAcknowledgedAndCloses() throws {
        let connection = try connect()
        try connection.sendOption(.abort)
        let reply = try connection.readOptionReply()
        #expect(reply.option == .abort && reply.type == .ack)
        #expect(!connection.isOpen)
    }

    @Test func listNamesEveryExport() throws {
        let connection = try NBDTestConnection(exports: [("disk", export), ("other", MemoryExport(size: 4096))])
        _ = try connection.readGreeting()
        try connection.sendFlags()
        try connection.sendOption(.list)
        var names: [String] = []
        while true {
            var reply = try connection.readOptionReply()
            if reply.type == .ack { break }
            #expect(reply.type == .server)
            let length = Int(reply.data.readInteger(as: UInt32.self)!)
            names.append(reply.data.readString(length: length)!)
            #expect(reply.data.readString(length: reply.data.readableBytes) == "memory export")
        }
        #expect(names == ["disk", "other"])
        try connection.sendOption(.list, ByteBuffer(bytes: [1]))
        #expect(try connection.readOptionReply().type == .errorInvalid)
        #expect(connection.isOpen)
    }

    /// INFO answers with the size and flags, the block sizes always, name and description when
    /// asked, and negotiation goes on; GO answers the same and starts transmission.
    @Test func infoAndGo() throws {
        let connection = try connect()
        try connection.sendOption(.info, NBDTestConnection.exportRequest("disk", infos: [.name, .description]))
        var infos = try connection.readExportInfo(.info)
        #expect(Set(infos.keys) == [.export, .blockSize, .name, .description])
        #expect(infos[.export]?.readInteger(as: UInt64.self) == 1 << 20)
        var sizes = try #require(infos[.blockSize])
        #expect(sizes.readMultipleIntegers(as: (UInt32, UInt32, UInt32).self)! == (1, 4096, 64 << 10))
        #expect(infos[.name].map { String(buffer: $0) } == "disk")
        #expect(infos[.description].map { String(buffer: $0) } == "memory export")

        try connection.sendOption(.go, NBDTestConnection.exportRequest("disk"))
        infos = try connection.readExportInfo(.go)
        #expect(Set(infos.keys) == [.export, .blockSize])
        #expect(try served(connection))
    }

    /// An unknown export gets ERR_UNKNOWN naming it (escaped), malformed data ERR_INVALID; both
    /// leave the negotiation open.
    @Test func goErrorsLeaveTheNegotiationOpen() throws {
        let connection = try connect()
        try connection.sendOption(.go, NBDTestConnection.exportRequest("no\nsuch"))
        let unknown = try connection.readOptionReply()
        #expect(unknown.type == .errorUnknown && unknown.text == #"no export named "no\nsuch""#)
        try connection.sendOption(.go, ByteBuffer(bytes: [0, 0, 0, 9, 1]))
        #expect(try connection.readOptionReply().type == .errorInvalid)
        try connection.sendOption(.info, ByteBuffer(bytes: [0, 0, 0, 4] + Array("disk".utf8) + [0, 1]))
        #expect(try connection.readOptionReply().type == .errorInvalid, "an information count the data does not hold")
        try connection.sendOption(.go, NBDTestConnection.exportRequest("disk"))
        _ = try connection.readExportInfo(.go)
        #expect(try served(connection))
    }

    @Test func structuredRepliesAndMetaContexts() throws {
        let connection = try connect()
        try connection.sendOption(.setMetaContext, NBDTestConnection.metaContextRequest("disk", queries: [NBDMetaContext.baseAllocation]))
        #expect(try connection.readOptionReply().type == .errorInvalid, "SET_META_CONTEXT before STRUCTURED_REPLY")
        try connection.sendOption(.structuredReply, ByteBuffer(bytes: [0]))
        #expect(try connection.readOptionReply().type == .errorInvalid, "STRUCTURED_REPLY with data")
        try connection.sendOption(.structuredReply)
        #expect(try connection.readOptionReply().type == .ack)

        for queries in [[], ["base:"], [NBDMetaContext.baseAllocation]] {
            try connection.sendOption(.listMetaContext, NBDTestConnection.metaContextRequest("disk", queries: queries))
            var context = try connection.readOptionReply()
            #expect(context.type == .metaContext, "LIST of \(queries)")
            #expect(context.data.readInteger(as: UInt32.self) == 0)
            #expect(String(buffer: context.data) == NBDMetaContext.baseAllocation)
            #expect(try connection.readOptionReply().type == .ack)
        }
        try connection.sendOption(.listMetaContext, NBDTestConnection.metaContextRequest("disk", queries: ["qemu:dirty-bitmap:x"]))
        #expect(try connection.readOptionReply().type == .ack, "no context matches")
        try connection.sendOption(.setMetaContext, NBDTestConnection.metaContextRequest("nope", queries: [NBDMetaContext.baseAllocation]))
        #expect(try connection.readOptionReply().type == .errorUnknown)
        try connection.sendOption(.setMetaContext, ByteBuffer(bytes: [0, 0, 0, 4, 1]))
        #expect(try connection.readOptionReply().type == .errorInvalid)

        try connection.sendOption(.setMetaContext, NBDTestConnection.metaContextRequest("disk", queries: [NBDMetaContext.baseAllocation]))
        var selected = try connection.readOptionReply()
        #expect(selected.type == .metaContext && selected.data.readInteger(as: UInt32.self) == NBDMetaContext.baseAllocationID)
        #expect(try connection.readOptionReply().type == .ack)
        try connection.sendOption(.go, NBDTestConnection.exportRequest("disk"))
        let infos = try connection.readExportInfo(.go)
        var export = try #require(infos[.export])
        export.moveReaderIndex(forwardBy: 8)
        #expect(NBDTransmissionFlags(rawValue: export.readInteger()!).contains(.sendDF), "DF is offered with structured replies")
        try connection.sendRequest(.blockStatus, cookie: 5, offset: 0, length: 4096)
        let chunk = try connection.readChunk()
        #expect(chunk.type == .blockStatus && chunk.cookie == 5 && chunk.done)
    }

    /// STARTTLS and options this server does not know get ERR_UNSUP, and negotiation goes on.
    @Test func unsupportedOptionsGoOn() throws {
        let connection = try connect()
        for option in [NBDOption.startTLS, NBDOption(rawValue: 4), NBDOption(rawValue: 0xDEAD)] {
            try connection.sendOption(option, ByteBuffer(bytes: [1, 2, 3]))
            let reply = try connection.readOptionReply()
            #expect(reply.option == option && reply.type == .errorUnsupported)
        }
        try connection.sendOption(.go, NBDTestConnection.exportRequest("disk"))
        _ = try connection.readExportInfo(.go)
        #expect(try served(connection))
    }

    /// Framing errors close the connection (after the replies to what came before them).
    @Test func protocolErrorsClose() throws {
        var wrongMagic = ByteBuffer()
        NBDCodec.writeOptionRequest(.list, data: ByteBuffer(), into: &wrongMagic)
        wrongMagic.writeBytes([UInt8](repeating: 0x41, count: 16))
        var tooLong = ByteBuffer()
        tooLong.writeInteger(NBDMagic.option)
        tooLong.writeInteger(NBDOption.go.rawValue)
        tooLong.writeInteger(UInt32(1 << 20))
        for (name, stream) in [("bad magic", wrongMagic), ("option data over 64 KiB", tooLong)] {
            let connection = try connect()
            try connection.send(stream)
            #expect(!connection.isOpen, "\(name)")
            if name == "bad magic" {
                let list = try connection.readOptionReply()
                #expect(list.type == .server)
                #expect(try connection.readOptionReply().type == .ack, "the LIST before the garbage is answered")
            }
            #expect(connection.unread == 0)
        }
        let connection = try NBDTestConnection(exports: [("disk", export)])
        _ = try connection.readGreeting()
        try connection.sendFlags(NBDClientFlags(rawValue: 1 << 9))
        #expect(!connection.isOpen, "unknown client flags")
    }

    /// Beyond the connection limit: the greeting, then ERR_POLICY naming the limit to any option
    /// (ACK to ABORT, nothing to EXPORT_NAME), then the connection closes.
    @Test func connectionsBeyondTheLimitAreToldWhy() throws {
        let tracker = NBDConnectionTracker(limit: 1)
        let first = try NBDTestConnection(exports: [("disk", export)], tracker: tracker)
        #expect(try first.readGreeting() == [.fixedNewstyle, .noZeroes])
        for (option, data) in [(NBDOption.go, NBDTestConnection.exportRequest("disk")), (.abort, ByteBuffer()), (.exportName, ByteBuffer(string: "disk"))] {
            let refused = try NBDTestConnection(exports: [("disk", export)], tracker: tracker)
            _ = try refused.readGreeting()
            try refused.sendFlags()
            try refused.sendOption(option, data)
            switch option {
            case .go:
                let reply = try refused.readOptionReply()
                #expect(reply.type == .errorPolicy && reply.text.contains("limit of 1 connections"))
            case .abort:
                #expect(try refused.readOptionReply().type == .ack)
            default:
                #expect(refused.unread == 0)
            }
            #expect(!refused.isOpen, "\(option)")
        }
        #expect(first.isOpen)
    }

    /// A GO and the requests behind it in one read: the requests are framed as requests (a WRITE
    /// with its payload too) and served by the transmission handler, which then frames every
    /// later read itself; a bad magic in that same first read still closes after what came before.
    @Test func requestsPipelinedBehindGoAreServed() throws {
        for garbageInFirstRead in [false, true] {
            let export = MemoryExport(size: 1 << 20)
            let connection = try NBDTestConnection(exports: [("disk", export)])
            _ = try connection.readGreeting()
            var stream = ByteBuffer()
            stream.writeInteger(NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
            NBDCodec.writeOptionRequest(.go, data: NBDTestConnection.exportRequest("disk"), into: &stream)
            NBDCodec.writeRequest(NBDRequest(command: .write, cookie: 2, offset: 4, length: 3), into: &stream)
            stream.writeBytes([7, 8, 9])
            NBDCodec.writeRequest(NBDRequest(command: .read, cookie: 3, offset: 3, length: 5), into: &stream)
            if garbageInFirstRead { stream.writeBytes([UInt8](repeating: 0x41, count: 28)) }
            try connection.send(stream)
            _ = try connection.readExportInfo(.go)
            #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 2))
            #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 3))
            #expect(export.bytes(at: 4, count: 3) == [7, 8, 9])
            #expect(Array(try connection.bytes(5).readableBytesView) == export.bytes(at: 3, count: 5))
            #expect(connection.isOpen == !garbageInFirstRead)
            #expect((try? connection.channel.pipeline.syncOperations.handler(type: NBDNegotiationHandler.self)) == nil)
            guard !garbageInFirstRead else { continue }
            try connection.sendRequest(.read, cookie: 4, offset: 4, length: 1)
            #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 4))
            #expect(Array(try connection.bytes(1).readableBytesView) == [7])
        }
    }

    // MARK: STARTTLS

    /// Stands where the TLS handler goes, for the negotiation's own rules (real TLS, with real
    /// clients, is `ServerTLSTests`): passes bytes through and says the handshake is done on the
    /// event loop's next turn (as a real one is, a round trip later: not within the read that
    /// carried STARTTLS).
    private struct PlaintextStandIn: NBDTLSProvider {
        final class Handler: ChannelInboundHandler {
            typealias InboundIn = ByteBuffer
            func handlerAdded(context: ChannelHandlerContext) {
                context.eventLoop.assumeIsolated().execute {
                    context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
                }
            }
        }
        func makeHandler() throws -> any ChannelHandler { Handler() }
    }

    private func connectTLS(_ mode: NBDServerTLSPolicy.Mode) throws -> NBDTestConnection {
        let connection = try NBDTestConnection(exports: [("disk", export)], tls: NBDServerTLSPolicy(mode: mode, provider: PlaintextStandIn()))
        _ = try connection.readGreeting()
        try connection.sendFlags()
        return connection
    }

    /// With `--tls require`, every option but STARTTLS and ABORT gets ERR_TLS_REQD until TLS; then
    /// the negotiation goes on (and what was said in the clear is forgotten).
    @Test func requireRefusesEveryOptionBeforeTLS() throws {
        let connection = try connectTLS(.require)
        for (option, data) in [(NBDOption.list, ByteBuffer()), (.structuredReply, ByteBuffer()),
                               (.go, NBDTestConnection.exportRequest("disk"))] {
            try connection.sendOption(option, data)
            let reply = try connection.readOptionReply()
            #expect(reply.option == option && reply.type == .errorTLSRequired && reply.text.contains("requires TLS"), "\(option)")
        }
        try connection.sendOption(.startTLS)
        #expect(try connection.readOptionReply().type == .ack)
        try connection.sendOption(.startTLS)
        let again = try connection.readOptionReply()
        #expect(again.type == .errorInvalid && again.text == "TLS is already active")
        try connection.sendOption(.go, NBDTestConnection.exportRequest("disk"))
        _ = try connection.readExportInfo(.go)
        #expect(try served(connection))
    }

    /// EXPORT_NAME has no error reply: before TLS, under `require`, it closes the connection.
    @Test func requireClosesOnExportNameBeforeTLS() throws {
        let connection = try connectTLS(.require)
        try connection.sendOption(.exportName, ByteBuffer(string: "disk"))
        #expect(!connection.isOpen && connection.unread == 0)
    }

    /// With `--tls on` a client may stay in the clear.
    @Test func onLetsAClientStayInTheClear() throws {
        let connection = try connectTLS(.on)
        try connection.sendOption(.go, NBDTestConnection.exportRequest("disk"))
        _ = try connection.readExportInfo(.go)
        #expect(try served(connection))
    }

    /// Bytes sent in the clear behind STARTTLS (in the same read) are not taken as if TLS had
    /// brought them: the ACK goes out, then the connection closes.
    @Test func bytesInTheClearBehindStartTLSClose() throws {
        let connection = try connectTLS(.require)
        var both = ByteBuffer()
        NBDCodec.writeOptionRequest(.startTLS, data: ByteBuffer(), into: &both)
        NBDCodec.writeOptionRequest(.go, data: NBDTestConnection.exportRequest("disk"), into: &both)
        try connection.send(both)
        #expect(try connection.readOptionReply().type == .ack)
        #expect(!connection.isOpen && connection.unread == 0)
    }
}
