import BlockIO
import Control
import Foundation
import Logging
import NIOCore
import NIOPosix
import struct Synchronization.Atomic
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The control server on a real unix socket, with raw clients: pipelined requests, clients that
/// never read their answers (bounded, dropped, never holding the shutdown), bind errors.
@Suite struct ControlServerTests {
    /// A server on a fresh socket whose handler answers every request with `answer`.
    struct Rig {
        let directory: String
        let path: String
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server: ControlServer

        init(limits: ControlServer.Limits = ControlServer.Limits(),
             answer: @escaping ControlServer.Handler = { ControlResponse(ok: true, name: "m0", message: $0.target) }) throws {
            directory = "/var/tmp/bm-ctl-\(UUID().uuidString.prefix(8))"
            mkdir(directory, 0o700)
            path = directory + "/m0.ctl"
            server = ControlServer(path: path, name: "m0", group: group, logger: Logger(label: "test"), limits: limits, handler: answer)
        }

        func connect() throws -> BlockIO.FileDescriptor { try UnixSocket.connect(to: path).get() }

        func tearDown() {
            try? group.syncShutdownGracefully()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Sends all of `text` on `fd`.
    private func send(_ text: String, on fd: BlockIO.FileDescriptor) {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { Glibc.send(fd.rawValue, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { Issue.record("send: \(Errno.current)"); return }
            sent += count
        }
    }

    /// Polls `condition` until it holds or `timeout` seconds passed.
    private func eventually(timeout: TimeInterval = 60, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// Bytes waiting to be read on `fd` (FIONREAD), without reading them.
    private func unread(_ fd: BlockIO.FileDescriptor) -> Int {
        var count: Int32 = 0
        return ioctl(fd.rawValue, UInt(FIONREAD), &count) == 0 ? Int(count) : -1
    }

    /// glibc's POLLRDHUP (a GNU extension Swift does not import).
    private static let pollReadHangUp: Int32 = 0x2000

    /// The server closed its end of `fd` (POLLRDHUP), seen without reading anything.
    private func hungUp(_ fd: BlockIO.FileDescriptor) -> Bool {
        var entry = pollfd(fd: fd.rawValue, events: Int16(Self.pollReadHangUp), revents: 0)
        return poll(&entry, 1, 0) == 1 && entry.revents & Int16(Self.pollReadHangUp | POLLHUP) != 0
    }

    /// Runs `shutdown` and says whether it returned within `timeout` seconds (it is left running if not).
    private func shutdownReturns(_ server: ControlServer, within timeout: TimeInterval) async -> Bool {
        let done = Atomic(false)
        Task { await server.shutdown(); done.store(true, ordering: .sequentiallyConsistent) }
        return await eventually(timeout: timeout) { done.load(ordering: .sequentiallyConsistent) }
    }

    @Test func pipelinedRequestsAreAllAnsweredInOrder() async throws {
        let rig = try Rig()
        defer { rig.tearDown() }
        try await rig.server.start()
        let fd = try rig.connect()
        defer { fd.close() }
        send((0..<1000).map { "{\"verb\":\"add\",\"target\":\"\($0)\"}\n" }.joined(), on: fd)
        var received = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while received.count(where: { $0 == UInt8(ascii: "\n") }) < 1000 {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
            guard count > 0 else { Issue.record("the server closed the connection after \(received.count) bytes"); break }
            received.append(contentsOf: chunk[0..<count])
        }
        let messages = received.split(separator: UInt8(ascii: "\n")).map { try? ControlCodec.decode(ControlResponse.self, from: Data($0)).message }
        #expect(messages == (0..<1000).map { "\($0)" })
        await rig.server.shutdown()
    }

    /// 500 requests with large answers, never read: the server answers until the client is that
    /// far behind, then waits; and its shutdown returns (it used to wait for those writes forever).
    @Test func shutdownDoesNotWaitForAClientThatDoesNotRead() async throws {
        let rig = try Rig { _ in ControlResponse(ok: true, name: "m0", message: String(repeating: "x", count: 16 << 10)) }
        defer { rig.tearDown() }
        try await rig.server.start()
        let hog = try rig.connect()
        defer { hog.close() }
        send(String(repeating: "{\"verb\":\"status\"}\n", count: 500), on: hog)
        #expect(await eventually { unread(hog) > 64 << 10 }, "the server never answered")
        #expect(await shutdownReturns(rig.server, within: 120), "shutdown waited for a client that does not read")
        #expect(await eventually { hungUp(hog) })
    }

    /// A client that leaves more than the limit unread for `stalledClientTimeout` is disconnected,
    /// while one that reads is served.
    @Test func aClientThatStaysBehindIsDropped() async throws {
        var limits = ControlServer.Limits()
        limits.stalledClientTimeout = .seconds(1)
        let rig = try Rig(limits: limits) { _ in ControlResponse(ok: true, name: "m0", message: String(repeating: "x", count: 16 << 10)) }
        defer { rig.tearDown() }
        try await rig.server.start()
        let hog = try rig.connect()
        defer { hog.close() }
        send(String(repeating: "{\"verb\":\"status\"}\n", count: 500), on: hog)
        #expect(await eventually { hungUp(hog) }, "a client that does not read was never dropped")
        let other = try rig.connect()
        defer { other.close() }
        send("{\"verb\":\"status\"}\n", on: other)
        #expect(await eventually { unread(other) > 16 << 10 && !hungUp(other) })
        #expect(await shutdownReturns(rig.server, within: 120))
    }

    /// A request that never ends (wedged in the handler) does not keep the shutdown waiting.
    @Test func aWedgedRequestDoesNotHoldShutdown() async throws {
        let started = Atomic(false)
        let rig = try Rig { _ in
            started.store(true, ordering: .sequentiallyConsistent)
            try? await Task.sleep(for: .seconds(3600))
            return ControlResponse(ok: true, name: "m0")
        }
        defer { rig.tearDown() }
        try await rig.server.start()
        let client = try rig.connect()
        defer { client.close() }
        send("{\"verb\":\"check\"}\n", on: client)
        #expect(await eventually { started.load(ordering: .sequentiallyConsistent) })
        #expect(await shutdownReturns(rig.server, within: 120), "shutdown waited for a request that never ends")
        #expect(await eventually { hungUp(client) })
    }

    @Test func bindFailuresSayWhereAndWhy() async throws {
        let rig = try Rig()
        defer { rig.tearDown() }
        func failure(_ path: String) async -> String {
            let server = ControlServer(path: path, name: "m0", group: rig.group, logger: Logger(label: "test")) { _ in .failure("m0", "") }
            do { try await server.start(); await server.shutdown(); return "" } catch { return error.description }
        }
        let missing = rig.directory + "/absent/m0.ctl"
        #expect(await failure(missing) == "cannot listen on \(missing): no such file or directory")
        let long = rig.directory + "/" + String(repeating: "l", count: 120) + ".ctl"
        #expect(await failure(long) == "cannot listen on \(long): the path is \(long.utf8.count) bytes long, a unix socket's may be 107")
        let file = rig.directory + "/file.ctl"
        _ = FileManager.default.createFile(atPath: file, contents: nil)
        #expect(await failure(file) == "cannot listen on \(file): it exists and is not a socket")
    }
}
