import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What `blockmirror serve` does when clients hold what they should not: descriptors, connection
/// slots, time (issue 9, defect 7). Raw sockets against the real binary; limits lowered by options
/// (or by `prlimit` on the running process) so each test reaches them quickly.
@Suite struct ServerLimitsTests {
    static let exportSize = 64 << 20

    /// Starts `serve` on a fresh sparse image with `arguments`, runs `body`, stops it (exit 0).
    func withServer(_ arguments: [String], _ label: String = #function, _ body: (ServerProcess) throws -> Void) throws {
        let dir = try TempDir(label)
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: Self.exportSize)
        let server = try ServerProcess(image: image, in: dir, extraArguments: arguments)
        defer { server.stop() }
        do {
            try body(server)
        } catch {
            Issue.record("\(error)\n\(server.log)")
        }
        #expect(server.isRunning, "the server exited\n\(server.log)")
    }

    /// Polls (up to `timeout` s) until a new client negotiates and reads 4 KiB.
    static func servesNewClient(_ server: ServerProcess, timeout: TimeInterval = 60) -> Bool {
        waitUntil(timeout: timeout) {
            guard let client = try? RawNBDClient(socketPath: server.socketPath, timeout: 5) else { return false }
            return (try? client.negotiate()) != nil && (try? client.read(offset: 0, length: 4096))?.error == 0
        }
    }

    /// Seconds of CPU (user + system) the process has used, from /proc/PID/stat.
    static func cpuSeconds(_ pid: pid_t) throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        guard let end = stat.lastIndex(of: ")") else { throw IntegrationFailure("cannot parse /proc/\(pid)/stat") }
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw IntegrationFailure("cannot parse /proc/\(pid)/stat: \(stat)")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// At the descriptor limit (the running server's RLIMIT_NOFILE lowered to 64, then 150 silent
    /// connections), the server does not spin (before: 85-92% of a core, 400 000 failed accepts in
    /// 10 s), says so in one warning, and serves a new client once the handshake timeout has closed
    /// the silent connections.
    @Test func silentConnectionsAtTheDescriptorLimitNeitherSpinNorBlock() throws {
        try Tools.require("prlimit")
        try withServer(["--handshake-timeout", "5"]) { server in
            let dir = try TempDir()
            defer { dir.remove() }
            let limited = try run("prlimit", "--pid", "\(server.child.pid)", "--nofile=64:64", in: dir)
            guard limited.succeeded else { throw IntegrationFailure("\(limited)") }
            let silent = try (0..<150).map { _ in try RawNBDClient(socketPath: server.socketPath) }
            let pid = server.child.pid
            let atLimit = waitUntil(timeout: 60) { ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count ?? 0) >= 64 }
            #expect(atLimit, "the server never reached its 64 descriptors\n\(server.log)")
            // A measurement window, not a synchronisation: at the limit, CPU time must not grow.
            let before = try Self.cpuSeconds(pid)
            let window = Date().addingTimeInterval(3)
            while Date() < window { usleep(100_000) }
            let used = try Self.cpuSeconds(pid) - before
            #expect(used < 1.0, "the server used \(used) s of CPU in 3 s at the descriptor limit\n\(server.log)")
            #expect(server.child.stderr.contains("cannot accept connections"), "no warning about failed accepts\n\(server.log)")
            let warnings = server.child.stderr.components(separatedBy: "cannot accept connections").count - 1
            #expect(warnings == 1, "\(warnings) warnings about failed accepts\n\(server.log)")
            #expect(Self.servesNewClient(server), "no new client served after the handshake timeout\n\(server.log)")
            withExtendedLifetime(silent) {}
        }
    }

    /// Beyond --max-connections a client gets the greeting, then NBD_REP_ERR_POLICY with a text
    /// naming the limit, then the connection closes; once a slot frees, a new client is served.
    @Test func connectionsBeyondTheLimitAreRefusedPolitely() throws {
        try withServer(["--max-connections", "2"]) { server in
            let first = try RawNBDClient(socketPath: server.socketPath)
            try first.negotiate()
            let second = try RawNBDClient(socketPath: server.socketPath)
            try second.negotiate()
            let third = try RawNBDClient(socketPath: server.socketPath)
            try third.handshake()
            try third.sendGo(name: "")
            let reply = try third.readOptionReply()
            let text = String(decoding: reply.data, as: UTF8.self)
            #expect(reply.type == RawNBDClient.repErrPolicy, "reply \(hex32(reply.type)): \(text)\n\(server.log)")
            #expect(text.contains("limit of 2 connections"), "refusal text: \(text)")
            #expect(third.waitForClose().closed, "the refused connection stayed open\n\(server.log)")
            #expect(server.child.stderr.contains("refused a connection"), "no log line about the refusal\n\(server.log)")
            #expect(try second.read(offset: 0, length: 4096).error == 0)
            first.close()
            #expect(Self.servesNewClient(server), "no new client served after a slot freed\n\(server.log)")
        }
    }

    /// A client that connects and says nothing is closed after --handshake-timeout (before: never).
    @Test func silentClientsAreClosedAfterTheHandshakeTimeout() throws {
        try withServer(["--handshake-timeout", "2"]) { server in
            let client = try RawNBDClient(socketPath: server.socketPath, timeout: 60)
            _ = try client.readGreeting()
            #expect(client.waitForClose().closed, "a silent client was not closed\n\(server.log)")
            let logged = waitUntil(timeout: 30) { server.child.stderr.contains("did not finish the handshake within 2 s") }
            #expect(logged, "no log line about the handshake timeout\n\(server.log)")
        }
    }

    /// A client that stops in the middle of a WRITE's payload, or stops reading the replies of the
    /// reads it pipelined, is disconnected after --stall-timeout; the memory it held goes back, and
    /// other clients are served meanwhile.
    @Test func stalledClientsAreDisconnected() throws {
        try withServer(["--stall-timeout", "2"]) { server in
            let writer = try RawNBDClient(socketPath: server.socketPath)
            try writer.negotiate()
            try writer.sendRequest(RawNBDClient.cmdWrite, cookie: 1, offset: 0, length: 1 << 20,
                                   payload: [UInt8](repeating: 0x11, count: 64 << 10))
            let reader = try RawNBDClient(socketPath: server.socketPath)
            try reader.negotiate()
            for cookie in 0..<48 {
                try reader.sendRequest(RawNBDClient.cmdRead, cookie: UInt64(cookie), offset: 0, length: 32 << 20)
            }
            #expect(Self.servesNewClient(server), "no client served beside the stalled ones\n\(server.log)")
            #expect(writer.peerClosed(within: 60), "a client stalled in a WRITE payload was not disconnected\n\(server.log)")
            #expect(reader.peerClosed(within: 60), "a client that does not read its replies was not disconnected\n\(server.log)")
            #expect(server.child.stderr.contains("stopped sending its request or reading its replies"), "\(server.log)")
        }
    }

    /// With --idle-timeout (off by default) a negotiated client that sends nothing is closed; one
    /// that keeps sending requests is not.
    @Test func idleClientsAreClosedOnlyWhenAsked() throws {
        try withServer(["--idle-timeout", "2"]) { server in
            let idle = try RawNBDClient(socketPath: server.socketPath, timeout: 60)
            try idle.negotiate()
            let busy = try RawNBDClient(socketPath: server.socketPath)
            try busy.negotiate()
            let closed = waitUntil(timeout: 60) {
                (try? busy.read(offset: 0, length: 4096))?.error == 0 && idle.peerClosed(within: 0.2)
            }
            #expect(closed, "an idle client was not closed\n\(server.log)")
            #expect(try busy.read(offset: 0, length: 4096).error == 0, "a busy client was closed\n\(server.log)")
        }
    }
}
