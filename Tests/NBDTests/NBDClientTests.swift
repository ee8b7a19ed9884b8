import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import NBD

/// The client over real sockets: against this code base's server, and against nbdkit (a real
/// remote, with its memory plugin); a server that goes away fails what is in flight and what comes
/// after, naming the URI; one that stops answering is given up on after the request timeout.
@Suite(.serialized, .timeLimit(.minutes(2))) struct NBDClientTests {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// Writes, reads back, flushes and asks for extents.
    func exercise(_ client: NBDClient) async throws {
        let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let written = try await client.request(.write, offset: 65536, length: 8192, payload: ByteBuffer(bytes: data)).get()
        #expect(written == .done)
        guard case .read(let pieces) = try await client.request(.read, offset: 65536, length: 8192).get() else {
            Issue.record("not a read reply")
            return
        }
        var back = [UInt8](repeating: 0xEE, count: 8192)
        for piece in pieces {
            switch piece {
            case let .data(at, bytes): back.replaceSubrange(at..<(at + bytes.readableBytes), with: bytes.readableBytesView)
            case let .hole(at, length): back.replaceSubrange(at..<(at + length), with: repeatElement(0, count: length))
            }
        }
        #expect(back == data)
        #expect(try await client.request(.flush, offset: 0, length: 0).get() == .done)
        // Many in flight at once, answered in any order.
        let reads = (0..<64).map { client.request(.read, offset: UInt64($0) * 4096, length: 4096) }
        for read in reads { _ = try await read.get() }
        if client.export.baseAllocationID != nil {
            guard case .extents(let extents) = try await client.request(.blockStatus, offset: 0, length: 1 << 20).get() else {
                Issue.record("no extents")
                return
            }
            #expect(!extents.isEmpty)
        }
    }

    @Test func talksToThisServer() async throws {
        let dir = try scratchDirectory("nbd-client-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = NBDServer(registry: NBDExportRegistry([(name: "disk", export: MemoryExport(size: 1 << 20, maximumPayload: 1 << 20))]),
                               group: group, logger: Logger(label: "server"))
        _ = try await server.listen(on: .unix(path: dir + "/nbd.sock"))
        let client = try await NBDClient.connect(to: try NBDURI.parse("nbd+unix:///disk?socket=\(dir)/nbd.sock"), group: group)
        #expect(client.export.size == 1 << 20 && client.export.structuredReplies && client.export.baseAllocationID != nil)
        try await exercise(client)
        await client.close()
        await server.shutdown()
    }

    @Test func talksToNbdkit() async throws {
        let dir = try scratchDirectory("nbd-client-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/nbdkit.sock"
        let nbdkit = Process()
        nbdkit.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        nbdkit.arguments = ["nbdkit", "-f", "-U", socket, "memory", "1M"]
        try nbdkit.run()
        // SIGKILL: the child inherits the test process's blocked signals (SIGTERM among them), and
        // Foundation's Process does not see its exit from a task here, so it is not waited for.
        defer { kill(nbdkit.processIdentifier, SIGKILL) }
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: socket), ContinuousClock.now < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        let client = try await NBDClient.connect(to: try NBDURI.parse("nbd+unix:///?socket=\(socket)"), group: group)
        #expect(client.export.size == 1 << 20 && client.export.structuredReplies)
        try await exercise(client)
        await client.close()
    }

    /// A server that accepts the connection and then says nothing is given up on after the
    /// connect timeout, naming the URI (a listener here that never answers).
    @Test func aSilentServerIsGivenUpOn() async throws {
        let dir = try scratchDirectory("nbd-client-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let silent = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in channel.eventLoop.makeSucceededVoidFuture() }
            .bind(unixDomainSocketPath: dir + "/silent.sock").get()
        let uri = try NBDURI.parse("nbd+unix:///disk?socket=\(dir)/silent.sock")
        let error = await #expect(throws: NBDClientError.self) {
            try await NBDClient.connect(to: uri, group: self.group, connectTimeout: .seconds(1))
        }
        #expect(error?.reason == "no answer to the negotiation within 1 s", "\(String(describing: error))")
        try await silent.close()
    }

    /// The server going away fails the request in flight and every later one, naming the URI; a
    /// missing export and a missing socket are errors naming it too.
    @Test func aServerThatGoesAwayFailsItsRequests() async throws {
        let dir = try scratchDirectory("nbd-client-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let export = MemoryExport(size: 1 << 20, holdFlushes: true)
        let server = NBDServer(registry: NBDExportRegistry([(name: "disk", export: export)]), group: group, logger: Logger(label: "server"))
        _ = try await server.listen(on: .unix(path: dir + "/nbd.sock"))
        let uri = try NBDURI.parse("nbd+unix:///disk?socket=\(dir)/nbd.sock")
        let missing = await #expect(throws: NBDClientError.self) {
            try await NBDClient.connect(to: try NBDURI.parse("nbd+unix:///nope?socket=\(dir)/nbd.sock"), group: self.group)
        }
        #expect(missing?.description.contains("no export 'nope'") == true, "\(String(describing: missing))")
        let client = try await NBDClient.connect(to: uri, group: group, requestTimeout: .seconds(2))
        let stuck = client.request(.flush, offset: 0, length: 0)
        let error = await #expect(throws: NBDClientError.self) { try await stuck.get() }
        #expect(error?.description.hasPrefix(uri.description) == true && error?.reason.contains("no reply to") == true,
                "\(String(describing: error))")
        let later = await #expect(throws: NBDClientError.self) { try await client.request(.read, offset: 0, length: 512).get() }
        #expect(later?.reason == error?.reason)
        export.release()
        await client.close()
        await server.shutdown()
        let gone = await #expect(throws: NBDClientError.self) { try await NBDClient.connect(to: uri, group: self.group) }
        #expect(gone?.reason.hasPrefix("cannot connect") == true, "\(String(describing: gone))")
    }

    /// A server that goes on answering other requests but never one is given up on too, once that
    /// one waited ten times the timeout (here 2 s: the held FLUSH fails after 20 s while reads go on
    /// being answered, so the silence watchdog alone would never fire). Two readers keep a read in
    /// flight nearly all the time, so a stalled machine cannot leave the FLUSH alone in flight for
    /// a whole timeout (which the silence watchdog would rightly call a dead server).
    @Test func aRequestTheServerNeverAnswersFailsWhileOthersAreAnswered() async throws {
        let dir = try scratchDirectory("nbd-client-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let export = MemoryExport(size: 1 << 20, holdFlushes: true)
        let server = NBDServer(registry: NBDExportRegistry([(name: "disk", export: export)]), group: group, logger: Logger(label: "server"))
        _ = try await server.listen(on: .unix(path: dir + "/nbd.sock"))
        let client = try await NBDClient.connect(to: try NBDURI.parse("nbd+unix:///disk?socket=\(dir)/nbd.sock"), group: group,
                                                 requestTimeout: .seconds(2))
        let held = client.request(.flush, offset: 0, length: 0)
        let failed = Task { () -> NBDClientError? in
            do { _ = try await held.get(); return nil } catch { return error as? NBDClientError }
        }
        let answered = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    var answered = 0
                    while !client.isBroken {
                        if (try? await client.request(.read, offset: 0, length: 512).get()) != nil { answered += 1 }
                        try? await Task.sleep(nanoseconds: 10_000_000)
                    }
                    return answered
                }
            }
            return await group.reduce(0, +)
        }
        let error = await failed.value
        #expect(answered > 5 && error?.reason.contains("no reply to FLUSH at offset 0 within 20 s, though the server answered others") == true,
                "\(answered) reads answered; \(String(describing: error))")
        export.release()
        await client.close()
        await server.shutdown()
    }
}
