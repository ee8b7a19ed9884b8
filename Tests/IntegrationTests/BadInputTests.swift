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

    /// Starts `serve`, runs `body`, checks it still serves a fresh client, stops it (exit 0).
    func withServer(_ label: String = #function, _ body: (Fixture) throws -> Void) throws {
        try withExport(label, body) { image, dir in try ServerProcess(image: image, in: dir) }
    }

    /// The same with a mirror daemon (`build … --target missing`), for the tests that must hold for both exports.
    func withMirror(_ label: String = #function, _ body: (Fixture) throws -> Void) throws {
        try withExport(label, body) { image, dir in try MirrorDaemon(source: image, target: "missing", in: dir).server }
    }

    /// Serves a fresh 64 MiB image whose first 4 KiB are random with `start`, runs `body`, checks
    /// the server still serves a fresh client, stops it (exit 0).
    private func withExport(_ label: String, _ body: (Fixture) throws -> Void,
                            start: (_ image: String, _ dir: TempDir) throws -> ServerProcess) throws {
        let dir = try TempDir(label)
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: Int(Self.exportSize))
        let head = try randomBytes(4096)
        try writeInPlace(image, offset: 0, head)
        let server = try start(image, dir)
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

    // MARK: Hostile input (issue 9)

    /// The probe's crash: GO, INFO or LIST_META_CONTEXT naming an unknown export of 4096 bytes of
    /// two-byte characters killed the server (SIGILL: the error text was cut inside a character and
    /// force-unwrapped). Each gets NBD_REP_ERR_UNKNOWN with a valid UTF-8 text of at most 4096 bytes.
    static func expectLongMultibyteNamesRefused(_ fixture: Fixture) throws {
        let name = [UInt8](String(repeating: "é", count: 2048).utf8)
        for option in [RawNBDClient.optGo, RawNBDClient.optInfo, RawNBDClient.optListMetaContext] {
            let client = try fixture.client()
            try client.handshake()
            if option == RawNBDClient.optListMetaContext {
                try client.sendOption(RawNBDClient.optStructuredReply)
                _ = try client.readOptionReply()
                try client.sendMetaContextOption(option, name: name, queries: [])
            } else {
                try client.sendExportOption(option, name: name)
            }
            let reply = try client.readOptionReply()
            #expect(reply.type == RawNBDClient.repErrUnknown, "option \(option): reply \(hex32(reply.type))\n\(fixture.log)")
            #expect(reply.data.count <= 4096, "option \(option): error text of \(reply.data.count) bytes")
            #expect(String(validating: reply.data, as: UTF8.self) != nil, "option \(option): error text is not UTF-8: \(hex(reply.data))")
            try client.go()
            if option != RawNBDClient.optListMetaContext {  // (that connection negotiated structured replies)
                fixture.expectHead(try client.read(offset: 0, length: 4096), "READ after the refused option \(option)")
            }
        }
    }

    @Test func longMultibyteExportNameIsRefusedByServe() throws {
        try withServer { try Self.expectLongMultibyteNamesRefused($0) }
    }

    @Test func longMultibyteExportNameIsRefusedByTheMirror() throws {
        try withMirror { try Self.expectLongMultibyteNamesRefused($0) }
    }

    /// Every command with a range whose end overflows 64 bits (offset near 2^64) is refused with the
    /// error the spec gives past the end, and the connection stays in step (READ and BLOCK_STATUS
    /// answer in structured replies, the others in simple ones).
    static func expectOverflowingRangesRefused(_ fixture: Fixture) throws {
        let client = try fixture.client()
        try client.handshake()
        try client.negotiateStructuredRepliesAndAllocation()
        try client.go()
        let commands: [(UInt16, String, UInt32)] = [
            (RawNBDClient.cmdRead, "READ", 22), (RawNBDClient.cmdWrite, "WRITE", 28), (RawNBDClient.cmdTrim, "TRIM", 28),
            (RawNBDClient.cmdWriteZeroes, "WRITE_ZEROES", 28), (RawNBDClient.cmdCache, "CACHE", 22),
            (RawNBDClient.cmdBlockStatus, "BLOCK_STATUS", 22),
        ]
        var cookie: UInt64 = 100
        for (command, name, expected) in commands {
            for (offset, length) in [(UInt64.max - 4095, UInt32(8192)), (UInt64.max, UInt32(1)), (UInt64.max - 511, UInt32(512))] {
                cookie += 1
                let payload = command == RawNBDClient.cmdWrite ? [UInt8](repeating: 0x5a, count: Int(length)) : []
                try client.sendRequest(command, cookie: cookie, offset: offset, length: length, payload: payload)
                let reply = try client.readAnyReply()
                #expect(reply.cookie == cookie, "\(name) at \(offset): reply for cookie \(reply.cookie)\n\(fixture.log)")
                #expect(reply.error == expected, "\(name) at \(offset) length \(length): error \(reply.error), expected \(expected)\n\(fixture.log)")
            }
        }
        try client.sendRequest(RawNBDClient.cmdRead, cookie: 1, offset: 0, length: 4096)
        var header = WireReader(try client.receive(20))
        #expect(header.u32() == RawNBDClient.structuredReplyMagic)
        _ = try client.receive(8)  // the OFFSET_DATA chunk's offset
        #expect(try client.receive(4096) == fixture.head, "READ after the refused ranges\n\(fixture.log)")
    }

    @Test func overflowingRangesAreRefusedByServe() throws {
        try withServer { try Self.expectOverflowingRangesRefused($0) }
    }

    @Test func overflowingRangesAreRefusedByTheMirror() throws {
        try withMirror { try Self.expectOverflowingRangesRefused($0) }
    }

    /// A thousand clients naming an export with a forged log line, an escape sequence and 60 KB of
    /// padding (by EXPORT_NAME, which logs a warning, and by GO): the log stays small, forges no
    /// line, holds no raw ESC byte, and the warnings are cut to a burst and a "suppressed" count.
    /// (Before: 60 MB of log, 1000 forged lines.)
    @Test func hostileExportNamesCannotForgeOrFloodTheLog() throws {
        try withServer { fixture in
            let evil = Array("x\n2099-01-01T00:00:00+0000 critical blockmirror.serve: forged\u{1b}[31m\r".utf8)
            let longName = evil + [UInt8](repeating: UInt8(ascii: "A"), count: 60_000)
            for index in 0..<1000 {
                let client = try fixture.client()
                try client.handshake()
                if index % 2 == 0 {
                    try client.sendOption(RawNBDClient.optExportName, data: longName)
                    _ = client.waitForClose()
                } else {
                    try client.sendExportOption(RawNBDClient.optGo, name: evil + [UInt8](repeating: UInt8(ascii: "B"), count: 4000))
                    let reply = try client.readOptionReply()
                    #expect(reply.type == RawNBDClient.repErrUnknown)
                    #expect(!reply.data.contains(0x1b) && !reply.data.contains(0x0a), "the error text carries raw control bytes")
                }
            }
            let summarized = waitUntil(timeout: 60) { fixture.server.child.stderr.contains("suppressed") }
            let log = Data(fixture.server.child.stderr.utf8)
            #expect(summarized, "no \"suppressed N similar messages\" line\n\(fixture.log)")
            #expect(log.count < 4 << 20, "the log grew to \(log.count) bytes for 1000 clients")
            #expect(!log.contains(0x1b), "a raw ESC byte reached the log")
            let lines = String(decoding: log, as: UTF8.self).split(separator: "\n")
            #expect(!lines.contains { $0.hasPrefix("2099-") }, "a client forged a log line")
            let warnings = lines.filter { $0.contains(" warning ") }.count
            #expect(warnings <= 40, "\(warnings) warning lines for 1000 bad clients")
        }
    }

    /// WRITE_ZEROES with FAST_ZERO: `serve` offers it (the zeroing of a file is fast: success); the
    /// mirror does not advertise it, so the flag is refused with EINVAL rather than ignored.
    static func writeZeroesWithFastZero(_ fixture: Fixture) throws -> (flags: UInt16, error: UInt32) {
        let client = try fixture.client()
        try client.handshake()
        let export = try client.go()
        try client.sendRequest(RawNBDClient.cmdWriteZeroes, flags: 1 << 4, cookie: 9, offset: 1 << 20, length: 1 << 20)
        return (export.flags, try client.readSimpleReply().error)
    }

    @Test func fastZeroIsServedByServe() throws {
        try withServer { fixture in
            let (flags, error) = try Self.writeZeroesWithFastZero(fixture)
            #expect(flags & (1 << 11) != 0, "serve does not advertise SEND_FAST_ZERO (flags \(flags))")
            #expect(error == 0, "FAST_ZERO WRITE_ZEROES on serve: error \(error)\n\(fixture.log)")
        }
    }

    @Test func fastZeroIsRefusedByTheMirror() throws {
        try withMirror { fixture in
            let (flags, error) = try Self.writeZeroesWithFastZero(fixture)
            #expect(flags & (1 << 11) == 0, "the mirror advertises SEND_FAST_ZERO (flags \(flags))")
            #expect(error == 22, "FAST_ZERO WRITE_ZEROES on the mirror: error \(error), expected EINVAL\n\(fixture.log)")
        }
    }
}
