import NIOCore
import Testing
@testable import NBD

/// Requests in flight and their replies, against the server's real pipeline (our server as the
/// remote), and against hand-made chunks for the promises a server can break.
@Suite struct NBDReplyAssemblerTests {
    /// A client connection negotiated with structured replies and base:allocation.
    final class Client {
        let connection: NBDTestConnection
        var assembler: NBDReplyAssembler
        let decoder: NBDReplyFrameDecoder
        var input = ByteBuffer()
        private let pending: PendingReads

        final class PendingReads: @unchecked Sendable { var lengths: [UInt64: Int] = [:] }

        init(export: MemoryExport) throws {
            connection = try NBDTestConnection(exports: [(name: "disk", export: export)])
            let pending = PendingReads()
            self.pending = pending
            decoder = NBDReplyFrameDecoder(readLength: { pending.lengths[$0] })
            var handshake = NBDClientHandshake(exportName: "disk")
            var negotiated: NBDClientHandshake.Export?
            for _ in 0..<20 where negotiated == nil {
                input.writeImmutableBuffer(try connection.bytes(connection.unread))
                while negotiated == nil, let message = try decoder.next(from: &input) {
                    for action in handshake.receive(message) {
                        switch action {
                        case .send(let bytes): try connection.send(bytes)
                        case .transmit(let export): negotiated = export
                        case .fail(let error): throw error
                        case .startTLS: throw NBDClientHandshakeError.protocolViolation("test: STARTTLS without TLS asked")
                        }
                    }
                }
            }
            let export = try #require(negotiated)
            decoder.startTransmission()
            assembler = NBDReplyAssembler(baseAllocationID: export.baseAllocationID)
        }

        /// Sends one request and returns its outcome.
        func run(_ command: NBDCommand, offset: UInt64, length: UInt32, payload: [UInt8]? = nil) throws -> NBDReplyAssembler.Outcome {
            let request = assembler.register(command, offset: offset, length: payload.map { UInt32($0.count) } ?? length)
            pending.lengths[request.cookie] = assembler.readLength(of: request.cookie)
            var bytes = ByteBuffer()
            NBDCodec.writeRequest(request, into: &bytes)
            if let payload { bytes.writeBytes(payload) }
            try connection.send(bytes)
            input.writeImmutableBuffer(try connection.bytes(connection.unread))
            while let message = try decoder.next(from: &input) {
                if let (cookie, outcome) = try assembler.receive(message), cookie == request.cookie { return outcome }
            }
            throw NBDProtocolError.malformedReply("test: no reply")
        }
    }

    /// The bytes a READ's pieces make.
    func bytes(of outcome: NBDReplyAssembler.Outcome, length: Int) -> [UInt8]? {
        guard case .success(.read(let pieces)) = outcome else { return nil }
        var out = [UInt8](repeating: 0xEE, count: length)
        for piece in pieces {
            switch piece {
            case let .data(at, data): out.replaceSubrange(at..<(at + data.readableBytes), with: data.readableBytesView)
            case let .hole(at, count): out.replaceSubrange(at..<(at + count), with: repeatElement(0, count: count))
            }
        }
        return out
    }

    @Test func writesReadsExtentsAndErrorsThroughTheServer() throws {
        let client = try Client(export: MemoryExport(size: 1 << 20))
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(try client.run(.write, offset: 8192, length: 0, payload: data) == .success(.done))
        #expect(bytes(of: try client.run(.read, offset: 8192, length: 4096), length: 4096) == data)
        #expect(try client.run(.flush, offset: 0, length: 0) == .success(.done))
        guard case .success(.extents(let extents)) = try client.run(.blockStatus, offset: 0, length: 1 << 20) else {
            Issue.record("no extents")
            return
        }
        #expect(!extents.isEmpty && extents.reduce(0) { $0 + UInt64($1.length) } <= 1 << 20)
        let past = try client.run(.read, offset: 1 << 20, length: 512)
        guard case .failure(let failure) = past else {
            Issue.record("a read past the end succeeded")
            return
        }
        #expect(failure.error == .invalid, "\(failure)")
        #expect(client.assembler.count == 0)
    }

    /// Hand-made chunks for a READ of 100 bytes at 1000.
    func read(_ chunks: [(NBDChunkType, done: Bool, payload: ByteBuffer)]) throws -> NBDReplyAssembler.Outcome? {
        var assembler = NBDReplyAssembler(baseAllocationID: 1)
        let request = assembler.register(.read, offset: 1000, length: 100)
        var outcome: NBDReplyAssembler.Outcome?
        for (type, done, payload) in chunks {
            let header = NBDChunkHeader(done: done, flags: done ? 1 : 0, type: type, cookie: request.cookie, length: UInt32(payload.readableBytes))
            outcome = try assembler.receive(.chunk(header, payload: payload))?.outcome
        }
        return outcome
    }

    func data(_ offset: UInt64, _ count: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(offset)
        buffer.writeBytes(repeatElement(UInt8(offset & 0xff), count: count))
        return buffer
    }

    func hole(_ offset: UInt64, _ count: UInt32) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(offset)
        buffer.writeInteger(count)
        return buffer
    }

    /// Data and holes in any order make the READ; an error chunk fails it with the server's message.
    @Test func piecesInAnyOrderMakeTheRead() throws {
        let outcome = try read([(.offsetHole, false, hole(1060, 40)), (.offsetData, true, data(1000, 60))])
        #expect(outcome.map { bytes(of: $0, length: 100) } == [UInt8](repeating: 232, count: 60) + [UInt8](repeating: 0, count: 40))
        var error = ByteBuffer()
        error.writeInteger(UInt32(5))
        error.writeInteger(UInt16(4))
        error.writeString("bad\u{7}")
        let failed = try read([(.offsetData, false, data(1000, 50)), (.error, true, error)])
        #expect(failed == .failure(NBDRequestFailure(error: .io, message: "bad\\x07")), "\(String(describing: failed))")
    }

    /// A server's broken promises are protocol errors, never a success with bytes missing.
    @Test func brokenPromisesAreProtocolErrors() {
        let cases: [([(NBDChunkType, done: Bool, payload: ByteBuffer)], String)] = [
            ([(.offsetData, true, data(1000, 60))], "answered with 60 bytes"),
            ([(.offsetData, false, data(1000, 60)), (.offsetData, true, data(1030, 40))], "overlapping"),
            // More than the READ asked for is refused at once (a server repeating chunks cannot
            // pile them up until the timeout).
            ([(.offsetData, false, data(1000, 60)), (.offsetData, true, data(1050, 50))], "more than the 100 bytes"),
            ([(.offsetHole, false, hole(1000, 100)), (.offsetHole, false, hole(1000, 100))], "more than the 100 bytes"),
            ([(.offsetData, true, data(990, 100))], "outside the READ"),
            ([(.offsetData, true, data(1000, 101))], "outside the READ"),
            ([(.offsetHole, true, hole(1000, 0))], "outside the READ"),
            ([(.none, false, ByteBuffer())], "NONE chunk that is not the last"),
            ([(.blockStatus, true, hole(1, 8))], "extents in a reply to READ"),
            ([(NBDChunkType(rawValue: 77), true, ByteBuffer())], "unknown type 77"),
        ]
        for (chunks, problem) in cases {
            #expect("\(problem)", performing: { try read(chunks) }, throws: { error in
                guard case .malformedReply(let what) = error as? NBDProtocolError else { return false }
                return what.contains(problem)
            })
        }
        var assembler = NBDReplyAssembler(baseAllocationID: 1)
        #expect(throws: NBDProtocolError.unexpectedReply(cookie: 42)) {
            try assembler.receive(.simpleReply(cookie: 42, error: .ok, data: nil))
        }
        let write = assembler.register(.write, offset: 0, length: 512)
        #expect(throws: NBDProtocolError.self) {
            try assembler.receive(.chunk(NBDChunkHeader(done: true, flags: 1, type: .offsetData, cookie: write.cookie, length: 12),
                                         payload: data(0, 4)))
        }
    }
}
