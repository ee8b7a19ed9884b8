import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The memory clients can make `blockmirror serve` hold (issue 9, defect 8), read from
/// /proc/PID/status of the real server while raw-socket clients misbehave. Bounds are the documented
/// ones (docs/ARCHITECTURE.md, back-pressure) with generous margins; the figures before the fix are
/// in each test's comment.
@Suite struct ClientMemoryTests {
    static let exportSize = 1 << 30

    /// VmRSS and VmHWM of a process, in bytes.
    static func memory(_ pid: pid_t) throws -> (rss: Int, peak: Int) {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        func field(_ name: String) throws -> Int {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }),
                  let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "") else {
                throw IntegrationFailure("no \(name) in /proc/\(pid)/status")
            }
            return kilobytes << 10
        }
        return (try field("VmRSS"), try field("VmHWM"))
    }

    static func mebibytes(_ bytes: Int) -> String { "\(bytes >> 20) MiB" }

    /// Starts `serve` on a sparse 1 GiB image, runs `body` with the server and its resident size
    /// at the start, stops it.
    func withServer(_ label: String = #function, _ body: (ServerProcess, Int) throws -> Void) throws {
        let dir = try TempDir(label)
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: Self.exportSize)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }
        do {
            try body(server, try Self.memory(server.child.pid).rss)
        } catch {
            Issue.record("\(error)\n\(server.log)")
        }
        #expect(server.isRunning, "the server exited\n\(server.log)")
    }

    /// Watches the server's peak for `seconds` (a measurement window) and records it if it exceeds
    /// `bound` above `baseline`.
    static func expectPeak(of server: ServerProcess, below bound: Int, above baseline: Int, for seconds: TimeInterval,
                           _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let end = Date().addingTimeInterval(seconds)
        var peak = 0
        repeat {
            peak = try memory(server.child.pid).peak
            if peak - baseline > bound { break }
            usleep(100_000)
        } while Date() < end
        #expect(peak - baseline <= bound, "\(what): the server peaked at \(mebibytes(peak)) (\(mebibytes(peak - baseline)) above its start, bound \(mebibytes(bound)))",
                sourceLocation: sourceLocation)
    }

    /// Waits (up to 60 s) until the server's resident size is within `margin` of `baseline`.
    static func expectShrinksBack(_ server: ServerProcess, to baseline: Int, margin: Int, _ what: String,
                                  sourceLocation: SourceLocation = #_sourceLocation) throws {
        var rss = 0
        let shrunk = try waitUntil(timeout: 60) {
            rss = try memory(server.child.pid).rss
            return rss - baseline <= margin
        }
        #expect(shrunk, "\(what): still \(mebibytes(rss)) resident (\(mebibytes(rss - baseline)) above the start) after 60 s",
                sourceLocation: sourceLocation)
    }

    /// One connection pipelines 48 READs of 32 MiB and reads no reply: it may hold 128 MiB of
    /// payload (about twice that in memory: the disk's buffer and the reply's). Before: 2.7 GiB.
    /// Another client is served meanwhile, and the memory goes back once the reader closes.
    @Test func unreadRepliesAreBoundedPerConnection() throws {
        try withServer { server, baseline in
            let greedy = try RawNBDClient(socketPath: server.socketPath)
            try greedy.negotiate()
            for cookie in 0..<48 {
                try greedy.sendRequest(RawNBDClient.cmdRead, cookie: UInt64(cookie), offset: UInt64(cookie) << 25 % UInt64(Self.exportSize),
                                       length: 32 << 20)
            }
            try Self.expectPeak(of: server, below: 400 << 20, above: baseline, for: 10, "48 unread 32 MiB READs")
            let other = try RawNBDClient(socketPath: server.socketPath)
            try other.negotiate()
            #expect(try other.read(offset: 0, length: 4096).error == 0)
            greedy.close()
            try Self.expectShrinksBack(server, to: baseline, margin: 64 << 20, "after the greedy reader left")
        }
    }

    /// 40 connections each send 31 of the 32 MiB of a WRITE's payload and stop: together they may
    /// hold the server-wide 256 MiB budget (plus 1 MiB each that a connection holding nothing may
    /// always use). Before: no cap, 32 MiB each (about 1.3 GiB for 40). A small READ on a new
    /// connection is served meanwhile.
    @Test func partlySentWritesShareTheServerWideBudget() throws {
        try withServer { server, baseline in
            // Each writer is used by one thread only.
            nonisolated(unsafe) let writers = try (0..<40).map { _ in
                let client = try RawNBDClient(socketPath: server.socketPath, timeout: 2)
                try client.negotiate()
                return client
            }
            let chunk = [UInt8](repeating: 0x5a, count: 1 << 20)
            let sent = DispatchGroup()
            for index in writers.indices {
                // One thread each: a writer the server does not admit blocks in send (gives up after 2 s).
                sent.enter()
                Thread.detachNewThread {
                    defer { sent.leave() }
                    let writer = writers[index]
                    try? writer.sendRequest(RawNBDClient.cmdWrite, cookie: 1, offset: UInt64(index) << 25, length: 32 << 20)
                    for _ in 0..<31 { guard (try? writer.send(chunk)) != nil else { return } }
                }
            }
            sent.wait()
            try Self.expectPeak(of: server, below: 448 << 20, above: baseline, for: 5, "40 partly sent 32 MiB WRITEs")
            let other = try RawNBDClient(socketPath: server.socketPath)
            try other.negotiate()
            #expect(try other.read(offset: 0, length: 4096).error == 0, "a small READ is not served while the budget is held")
            writers.forEach { $0.close() }
            try Self.expectShrinksBack(server, to: baseline, margin: 64 << 20, "after the writers left")
        }
    }

    /// After a burst of writes (16 connections, 32 in flight each, 4 MiB to 256 KiB), the server gives
    /// the memory back once idle. Before: 266 MiB above its start stayed resident.
    @Test func memoryGoesBackAfterABurst() throws {
        try withServer { server, baseline in
            let socketPath = server.socketPath
            DispatchQueue.concurrentPerform(iterations: 16) { index in
                do {
                    let client = try RawNBDClient(socketPath: socketPath)
                    try client.negotiate()
                    for size in [4 << 20, 1 << 20, 256 << 10] {
                        let payload = [UInt8](repeating: UInt8(index), count: size)
                        for cookie in 0..<32 {
                            try client.sendRequest(RawNBDClient.cmdWrite, cookie: UInt64(cookie), offset: UInt64(cookie * size),
                                                   length: UInt32(size), payload: payload)
                        }
                        for _ in 0..<32 {
                            let reply = try client.readSimpleReply()
                            if reply.error != 0 { Issue.record("WRITE of \(size) bytes: error \(reply.error)") }
                        }
                    }
                } catch {
                    Issue.record("writer \(index): \(error)")
                }
            }
            try Self.expectShrinksBack(server, to: baseline, margin: 96 << 20, "after a burst of writes")
        }
    }
}
