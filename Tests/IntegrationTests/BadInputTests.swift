import Foundation
import Testing

/// Malformed and hostile input over a raw unix socket: the server answers or drops that one
/// connection as the contract says, and keeps serving everyone else.
@Suite struct BadInputTests {
    static let exportSize: UInt64 = 64 << 20
    static let maxPayload = 32 << 20

    /// A served 64 MiB sparse image whose first 4 KiB are random (`head`), for one test.
    struct Fixture {
        let server: ServerProcess
        let head: [UInt8]
        func client() throws -> RawNBDClient { try RawNBDClient(socketPath: server.socketPath) }
        var log: String { server.log }

        /// Expects a READ of the first 4 KiB that succeeded and returned the file's bytes.
        func expectHead(_ read: (error: UInt32, data: [UInt8]), _ what: String,
                        sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(read.error == 0, "\(what): READ error \(read.error)\n\(log)", sourceLocation: sourceLocation)
            guard read.error == 0 else { return }
            let same = read.data == head
            #expect(same, "\(what): READ returned other bytes than the file's, first at byte \(firstMismatch(Data(read.data), Data(head)))\n\(log)",
                    sourceLocation: sourceLocation)
        }
    }

    /// Starts a server, runs `body`, checks it still serves a fresh client, stops it (exit 0).
    func withServer(_ label: String = #function, _ body: (Fixture) throws -> Void) throws {
        let dir = try TempDir(label)
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: Int(Self.exportSize))
        let head = try randomBytes(4096)
        try writeInPlace(image, offset: 0, head)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }
        let fixture = Fixture(server: server, head: [UInt8](head))
        do {
            try body(fixture)
        } catch {
            Issue.record("\(error)\n\(server.log)")
            return
        }
        #expect(server.isRunning, "the server exited\n\(server.log)")
        expectServesNewClient(fixture)
    }

    /// A new connection negotiates, and READ of the first 4 KiB returns the file's bytes.
    func expectServesNewClient(_ fixture: Fixture, _ what: String = "a new client",
                               sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let client = try fixture.client()
            let export = try client.negotiate()
            #expect(export.size == Self.exportSize, "\(fixture.log)", sourceLocation: sourceLocation)
            let read = try client.read(offset: 0, length: 4096)
            fixture.expectHead(read, what, sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(what) is not served: \(error)\n\(fixture.server.log)", sourceLocation: sourceLocation)
        }
    }

    /// The greeting offers FIXED_NEWSTYLE and NO_ZEROES and GO reports the export size.
    @Test func greetingAndGo() throws {
        try withServer { fixture in
            let client = try fixture.client()
            let flags = try client.handshake()
            #expect(flags & 0b11 == 0b11, "handshake flags \(flags)\n\(fixture.log)")
            let export = try client.go()
            #expect(export.size == Self.exportSize, "\(fixture.log)")
            #expect(export.flags & 1 == 1, "HAS_FLAGS in transmission flags \(export.flags)\n\(fixture.log)")
        }
    }

    /// An option with a wrong IHAVEOPT magic closes that connection only; an open one keeps working.
    @Test func badOptionMagicClosesOnlyThatConnection() throws {
        try withServer { fixture in
            let bystander = try fixture.client()
            try bystander.negotiate()
            let client = try fixture.client()
            try client.handshake()
            try client.sendOption(7, magic: 0x1122_3344_5566_7788)
            let result = client.waitForClose()
            #expect(result.closed, "connection still open after a bad option magic (got \(hex(result.bytes)))\n\(fixture.log)")
            let read = try bystander.read(offset: 0, length: 4096)
            fixture.expectHead(read, "the other connection")
        }
    }

    /// A client that sends 2 of its 4 flag bytes and hangs up does not disturb the server.
    @Test func truncatedHandshake() throws {
        try withServer { fixture in
            let client = try fixture.client()
            _ = try client.readGreeting()
            try client.send([0, 0])
            client.close()
        }
    }

    /// Unknown option 99 gets NBD_REP_ERR_UNSUP and GO still works on the same connection.
    @Test func unknownOptionIsUnsupported() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.handshake()
            try client.sendOption(99, data: [1, 2, 3])
            let reply = try client.readOptionReply()
            #expect(reply.option == 99, "reply names option \(reply.option)\n\(fixture.log)")
            #expect(reply.type == RawNBDClient.repErrUnsup, "reply type \(hex32(reply.type))\n\(fixture.log)")
            try client.go()
            let read = try client.read(offset: 0, length: 4096)
            fixture.expectHead(read, "READ after GO")
        }
    }

    /// GO with an unknown export name gets NBD_REP_ERR_UNKNOWN; GO with "" then works on the same connection.
    @Test func unknownExportNameIsRefused() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.handshake()
            try client.sendGo(name: "no-such-export")
            let reply = try client.readOptionReply()
            #expect(reply.option == RawNBDClient.optGo, "reply names option \(reply.option)\n\(fixture.log)")
            #expect(reply.type == RawNBDClient.repErrUnknown, "reply type \(hex32(reply.type))\n\(fixture.log)")
            try client.go()
            fixture.expectHead(try client.read(offset: 0, length: 4096), "READ after GO")
        }
    }

    /// An option announcing 0x10000001 bytes of data gets the connection closed.
    @Test func oversizedOptionCloses() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.handshake()
            try client.sendOption(7, length: 0x1000_0001)
            let result = client.waitForClose()
            #expect(result.closed, "connection still open after an option of length 0x10000001 (got \(hex(result.bytes)))\n\(fixture.log)")
        }
    }

    /// READ crossing the end of the export fails with EINVAL (22) and the connection stays in sync.
    @Test func readPastEndIsEINVAL() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.negotiate()
            let past = try client.read(offset: Self.exportSize - 512, length: 4096, cookie: 0xdead)
            #expect(past.error == 22, "READ past the end: error \(past.error)\n\(fixture.log)")
            let beyond = try client.read(offset: Self.exportSize, length: 512, cookie: 0xbeef)
            #expect(beyond.error == 22, "READ at the end: error \(beyond.error)\n\(fixture.log)")
            let read = try client.read(offset: 0, length: 4096)
            fixture.expectHead(read, "READ afterwards")
        }
    }

    /// WRITE crossing the end of the export fails with ENOSPC (28) and the connection stays in sync.
    @Test func writePastEndIsENOSPC() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.negotiate()
            let error = try client.write(offset: Self.exportSize - 512, payload: [UInt8](repeating: 0x77, count: 4096))
            #expect(error == 28, "WRITE past the end: error \(error)\n\(fixture.log)")
            let read = try client.read(offset: 0, length: 4096)
            fixture.expectHead(read, "READ afterwards")
        }
    }

    /// WRITE of 32 MiB + 4 KiB: the payload is drained, the reply is EINVAL (22), nothing is written,
    /// and a READ on the same connection works.
    @Test func oversizedWriteIsDrainedAndEINVAL() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.negotiate()
            let error = try client.write(offset: 0, payload: [UInt8](repeating: 0x5a, count: Self.maxPayload + 4096))
            #expect(error == 22, "WRITE of 32 MiB + 4 KiB: error \(error)\n\(fixture.log)")
            fixture.expectHead(try client.read(offset: 0, length: 4096), "READ after the oversized WRITE (must not have written)")
        }
    }

    /// After NBD_CMD_DISC the server closes the connection (a following READ gets no reply).
    @Test func requestAfterDisconnectClosed() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.negotiate()
            try client.sendRequest(RawNBDClient.cmdDisc, cookie: 1, offset: 0, length: 0)
            try? client.sendRequest(RawNBDClient.cmdRead, cookie: 2, offset: 0, length: 4096)
            let result = client.waitForClose()
            #expect(result.closed, "connection still open after NBD_CMD_DISC (got \(hex(result.bytes)))\n\(fixture.log)")
            #expect(result.bytes.isEmpty, "the server answered after NBD_CMD_DISC: \(hex(result.bytes))\n\(fixture.log)")
        }
    }

    /// A client that hangs up in the middle of a WRITE payload does not disturb the server.
    @Test func disconnectMidWritePayload() throws {
        try withServer { fixture in
            let client = try fixture.client()
            try client.negotiate()
            try client.sendRequest(RawNBDClient.cmdWrite, cookie: 3, offset: 1 << 20, length: 1 << 20,
                                   payload: [UInt8](repeating: 0x33, count: 64 << 10))
            client.close()
        }
    }
}
