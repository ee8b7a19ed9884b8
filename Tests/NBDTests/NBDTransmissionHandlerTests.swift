import BlockExport
import NIOCore
import Testing
@testable import NBD

/// The transmission handler on the server's pipeline: every command, the replies in both reply
/// styles, and the error rules of docs/ARCHITECTURE.md that the handler itself applies.
@Suite struct NBDTransmissionHandlerTests {
    private func connect(_ export: MemoryExport = MemoryExport(), structured: Bool = false,
                         blockStatus: Bool = false) throws -> NBDTestConnection {
        let connection = try NBDTestConnection(exports: [("disk", export)])
        try connection.negotiate(structured: structured, blockStatus: blockStatus)
        return connection
    }

    @Test func readWithSimpleAndStructuredReplies() throws {
        let export = MemoryExport()
        let simple = try connect(export)
        try simple.sendRequest(.read, cookie: 11, offset: 1000, length: 300)
        #expect(try simple.readSimpleReply() == .init(error: .ok, cookie: 11))
        #expect(Array(try simple.bytes(300).readableBytesView) == export.bytes(at: 1000, count: 300))

        let structured = try connect(export, structured: true)
        try structured.sendRequest(.read, cookie: 12, offset: 1000, length: 300)
        var chunk = try structured.readChunk()
        #expect(chunk.type == .offsetData && chunk.done && chunk.cookie == 12)
        #expect(chunk.data.readInteger(as: UInt64.self) == 1000)
        #expect(Array(chunk.data.readableBytesView) == export.bytes(at: 1000, count: 300))
        try structured.sendRequest(.read, cookie: 13, offset: 0, length: 0)
        let empty = try structured.readChunk()
        #expect(empty.type == .none && empty.done && empty.data.readableBytes == 0, "an empty read is one NONE chunk")
        #expect(export.calls.contains(.read(offset: 1000, length: 300)))
    }

    /// A WRITE's payload reaches the export whole, however the reads split it; FUA is passed on.
    @Test func writeWholeOrInPieces() throws {
        let export = MemoryExport()
        let connection = try connect(export)
        let payload = (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        for (cookie, chunk) in [(UInt64(1), nil), (2, 100), (3, 1)] as [(UInt64, Int?)] {
            try connection.sendRequest(.write, flags: cookie == 3 ? .fua : [], cookie: cookie, offset: 4096 * cookie, payload: payload, chunk: chunk)
            #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: cookie))
            #expect(export.bytes(at: 4096 * Int(cookie), count: payload.count) == payload)
        }
        #expect(export.calls.last == .write(offset: 3 * 4096, bytes: payload, fua: true))
    }

    @Test func flushTrimZeroesAndCachePassTheirFlags() throws {
        let export = MemoryExport()
        let connection = try connect(export)
        try connection.sendRequest(.flush, cookie: 1)
        try connection.sendRequest(.trim, flags: .fua, cookie: 2, offset: 512, length: 1024)
        try connection.sendRequest(.writeZeroes, cookie: 3, offset: 0, length: 100)
        try connection.sendRequest(.writeZeroes, flags: [.noHole, .fastZero, .fua], cookie: 4, offset: 100, length: 100)
        try connection.sendRequest(.cache, cookie: 5, offset: 4096, length: 4096)
        for cookie in UInt64(1)...5 { #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: cookie)) }
        #expect(export.calls == [
            .flush, .trim(offset: 512, length: 1024, fua: true),
            .writeZeroes(offset: 0, length: 100, mayTrim: true, fastOnly: false, fua: false),
            .writeZeroes(offset: 100, length: 100, mayTrim: false, fastOnly: true, fua: true),
            .cache(offset: 4096, length: 4096),
        ])
        #expect(export.bytes(at: 0, count: 200) == [UInt8](repeating: 0, count: 200))
    }

    /// BLOCK_STATUS: one chunk of base:allocation extents (hole and zero bits set), one extent
    /// with REQ_ONE.
    @Test func blockStatusExtents() throws {
        let export = MemoryExport()
        let connection = try connect(export, blockStatus: true)
        for (cookie, flags) in [(UInt64(1), NBDCommandFlags()), (2, .requestOne)] {
            try connection.sendRequest(.blockStatus, flags: flags, cookie: cookie, offset: 0, length: 8192)
            var chunk = try connection.readChunk()
            #expect(chunk.type == .blockStatus && chunk.done && chunk.cookie == cookie)
            #expect(chunk.data.readInteger(as: UInt32.self) == NBDMetaContext.baseAllocationID)
            var extents: [[UInt32]] = []
            while let (length, status) = chunk.data.readMultipleIntegers(as: (UInt32, UInt32).self) { extents.append([length, status]) }
            #expect(extents == (flags.isEmpty ? [[4096, 0], [4096, NBDMetaContext.stateHole | NBDMetaContext.stateZero]] : [[4096, 0]]))
        }
        #expect(export.calls == [.blockStatus(offset: 0, length: 8192, maxExtents: NBDTransmissionHandler.maximumExtents),
                                 .blockStatus(offset: 0, length: 8192, maxExtents: 1)])
    }

    /// The export's errors map to their codes; READ and BLOCK_STATUS errors under structured
    /// replies are error chunks with the message.
    @Test func exportErrorsMapToTheirCodes() throws {
        let kinds: [(BlockExportError.Kind, NBDErrorCode)] = [
            (.io, .io), (.noSpace, .noSpace), (.invalid, .invalid), (.notSupported, .notSupported), (.readOnly, .permission),
            (.overflow, .overflow),
        ]
        let export = MemoryExport(failures: Dictionary(uniqueKeysWithValues: kinds.enumerated().map { (UInt64($0.offset) * 512, $0.element.0) }))
        let simple = try connect(export)
        for (index, (_, code)) in kinds.enumerated() {
            try simple.sendRequest(.write, cookie: UInt64(index), offset: UInt64(index) * 512, payload: [1, 2, 3])
            #expect(try simple.readSimpleReply() == .init(error: code, cookie: UInt64(index)))
        }
        let structured = try connect(export, structured: true)
        try structured.sendRequest(.read, cookie: 9, offset: 0, length: 10)
        var chunk = try structured.readChunk()
        #expect(chunk.type == .error && chunk.done && chunk.cookie == 9)
        #expect(chunk.data.readInteger(as: UInt32.self) == NBDErrorCode.io.rawValue)
        let length = Int(chunk.data.readInteger(as: UInt16.self)!)
        #expect(chunk.data.readString(length: length) == "injected at offset 0")
        try structured.sendRequest(.flush, cookie: 10)
        #expect(try structured.readSimpleReply() == .init(error: .ok, cookie: 10), "other commands keep simple replies")
    }

    /// Requests the validation refuses never reach the export; a WRITE refused for its length has
    /// its payload read and dropped, and the connection stays usable.
    @Test func refusedRequestsStayInStep() throws {
        let export = MemoryExport(maximumPayload: 4096)
        let connection = try connect(export)
        try connection.sendRequest(.write, cookie: 1, offset: 0, payload: [UInt8](repeating: 9, count: 5000), chunk: 333)
        #expect(try connection.readSimpleReply() == .init(error: .invalid, cookie: 1))
        try connection.sendRequest(.read, cookie: 2, offset: 1 << 20, length: 1)
        #expect(try connection.readSimpleReply() == .init(error: .invalid, cookie: 2))
        try connection.sendRequest(.trim, cookie: 3, offset: 1 << 20, length: 1)
        #expect(try connection.readSimpleReply() == .init(error: .noSpace, cookie: 3))
        try connection.sendRequest(.blockStatus, cookie: 4, offset: 0, length: 512)
        #expect(try connection.readSimpleReply() == .init(error: .invalid, cookie: 4), "BLOCK_STATUS without a context")
        #expect(export.calls.isEmpty)
        try connection.sendRequest(.read, cookie: 5, offset: 0, length: 1)
        #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 5))
        #expect(connection.isOpen)
    }

    /// DISC closes the connection once the requests in flight are answered, and nothing after it
    /// is read.
    @Test func disconnectWaitsForRequestsInFlight() throws {
        let export = MemoryExport(holdFlushes: true)
        let connection = try connect(export)
        var stream = ByteBuffer()
        NBDCodec.writeRequest(NBDRequest(command: .flush, cookie: 1, offset: 0, length: 0), into: &stream)
        NBDCodec.writeRequest(NBDRequest(command: .disconnect, cookie: 2, offset: 0, length: 0), into: &stream)
        NBDCodec.writeRequest(NBDRequest(command: .read, cookie: 3, offset: 0, length: 1), into: &stream)
        try connection.send(stream)
        #expect(connection.isOpen, "the FLUSH is still at the export")
        export.release()
        #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 1))
        #expect(!connection.isOpen)
        #expect(connection.unread == 0)
        #expect(export.calls == [.flush])
    }

    /// The server's shutdown (`NBDConnectionEvent.finish`) does the same for a connection in
    /// transmission, and closes one in negotiation at once.
    @Test func shutdownEventFinishesBothPhases() throws {
        let export = MemoryExport(holdFlushes: true)
        let connection = try connect(export)
        try connection.sendRequest(.flush, cookie: 1)
        connection.channel.pipeline.fireUserInboundEventTriggered(NBDConnectionEvent.finish)
        connection.channel.embeddedEventLoop.run()
        #expect(connection.isOpen)
        export.release()
        #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 1))
        #expect(!connection.isOpen)

        let negotiating = try NBDTestConnection(exports: [("disk", export)])
        negotiating.channel.pipeline.fireUserInboundEventTriggered(NBDConnectionEvent.finish)
        negotiating.channel.embeddedEventLoop.run()
        #expect(!negotiating.isOpen)
    }

    /// A bad request magic closes the connection after the requests before it are answered.
    @Test func badRequestMagicClosesAfterWhatCameBefore() throws {
        let connection = try connect()
        var stream = ByteBuffer()
        NBDCodec.writeRequest(NBDRequest(command: .flush, cookie: 1, offset: 0, length: 0), into: &stream)
        stream.writeBytes([UInt8](repeating: 0x41, count: 28))
        try connection.send(stream)
        #expect(try connection.readSimpleReply() == .init(error: .ok, cookie: 1))
        #expect(!connection.isOpen)
    }
}
