import Foundation
import Mirror
import MirrorModel
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The control verbs through the real binary against a live mirror: add, status (text and JSON),
/// speed, check (exact mismatch counts after a deliberate corruption, repair), stop; and their
/// errors (no such mirror, a stale socket of a killed daemon, a second target, a smaller target).
@Suite(.serialized) struct MirrorControlTests {
    static let size = 32 << 20

    @Test func verbsDriveALiveMirror() throws {
        try Tools.require("cmp")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), small = dir.file("small.img")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size + (1 << 20))
        try makeSparseFile(small, size: Self.size - 4096)
        // 1 KiB/s: after one region the copy waits minutes, so the mirror is still recovering when
        // `status` looks, however slow the machine (until `speed --max unlimited` below).
        let mirror = try MirrorDaemon(source: old, target: "missing", in: dir,
                                      ["--speed-min", "1", "--speed-max", "1", "--region-size", "256K"])

        let degraded = try mirror.status()
        #expect(degraded.state == .degraded && degraded.target == nil && degraded.size == UInt64(Self.size))
        let refused = try mirror.cli("add", "m0", small)
        #expect(refused.status == 1 && refused.stderr.contains("smaller than source") && refused.stderr.contains("\(Self.size - 4096)"),
                "\(refused)")
        let check = try mirror.cli("check", "m0")
        #expect(check.status == 1 && check.stderr.contains("no healthy target"), "\(check)")

        let add = try mirror.cli("add", "m0", new)
        #expect(add.succeeded && add.stdout.contains("recovery started"), "\(add)\n\(mirror.log)")
        let second = try mirror.cli("add", "m0", small)
        #expect(second.status == 1 && second.stderr.contains("already attached"), "\(second)")
        let recovering = try #require(try mirror.waitForStatus { $0.state == .recovering && $0.bytesCopied > 0 })
        #expect(recovering.target == new && recovering.speedLimits == SpeedLimits(minimum: 1, maximum: 1))
        let text = try mirror.cli("status", "m0")
        #expect(text.succeeded && text.stdout.contains("recovery =") && text.stdout.contains("[U_]"), "\(text)")
        let all = try mirror.cli("status", "--json")
        #expect(all.succeeded && all.stdout.hasPrefix("{\"mirrors\":[{") && all.stdout.contains("\"name\":\"m0\"") && all.stdout.contains("\"totals\":{"), "\(all)")

        let speed = try mirror.cli("speed", "m0", "--max", "unlimited", "--min", "5000")
        #expect(speed.succeeded && speed.stdout.contains("max unlimited"), "\(speed)")
        let synced = try #require(try mirror.waitForStatus { $0.state == .inSync })
        #expect(synced.speedLimits == SpeedLimits(minimum: 5000, maximum: nil) && synced.regionsDirty == 0)

        let clean = try mirror.cli("check", "m0")
        #expect(clean.succeeded && clean.stdout.contains("mismatch_cnt=0"), "\(clean)")
        // Corrupt NEW behind the mirror's back: 7 sectors, then 1 byte in another region.
        try flipBytes(new, offset: (3 << 20) + 1024, count: 7 * 512)
        try flipBytes(new, offset: (20 << 20) + 100, count: 1)
        let found = try mirror.cli("check", "m0", "--json")
        #expect(found.status == 3, "\(found)")
        let report = try JSONDecoder().decode(CheckReport.self, from: Data(found.stdout.utf8))
        #expect(report.mismatchedSectors == 8 && report.mismatches.count == 2, "\(report)")
        #expect(try mirror.status().lastCheck?.mismatchedSectors == 8)
        // The two regions found are copied again; then the legs agree.
        try mirror.waitForStatus { $0.state == .inSync }
        #expect(try mirror.cli("check", "m0").succeeded)
        try flipBytes(new, offset: (3 << 20) + 1024, count: 7 * 512)
        try flipBytes(new, offset: (20 << 20) + 100, count: 1)
        let repair = try mirror.cli("check", "m0", "--repair")
        #expect(repair.succeeded && repair.stdout.contains("8 sectors repaired"), "\(repair)")
        #expect(try mirror.cli("check", "m0").succeeded)

        let stop = try mirror.stop()
        #expect(stop.stdout.contains("m0: in sync: \(new) is a complete copy of \(old)"), "\(stop)")
        #expect(try run("cmp", "-n", "\(Self.size)", old, new, in: dir).succeeded)
        let gone = try mirror.cli("status", "m0")
        #expect(gone.status == 1 && gone.stderr.contains("no mirror named m0"), "\(gone)")
    }

    /// A daemon killed with SIGKILL leaves its control socket: the next verb says so and removes
    /// it, and a new daemon of the same name starts; a live one of the same name is refused.
    @Test func staleControlSocketIsDetectedAndCleanedUp() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img")
        try makeRandomFile(old, size: 4 << 20)
        let first = try MirrorDaemon(source: old, target: "missing", in: dir)
        let twin = try run([try BlockMirrorBinary.path(), "build", "m0", "--source", dir.file("other.img"), "--target", "missing",
                            "--run-dir", first.runDir, "--listen", "unix:\(dir.file("other.sock"))"], in: dir)
        #expect(twin.status == 1, "\(twin)")
        try makeRandomFile(dir.file("other.img"), size: 4 << 20)
        let live = try run([try BlockMirrorBinary.path(), "build", "m0", "--source", dir.file("other.img"), "--target", "missing",
                            "--run-dir", first.runDir, "--listen", "unix:\(dir.file("other.sock"))"], in: dir)
        #expect(live.status == 1 && live.stderr.contains("mirror m0 is already running"), "\(live)")

        first.server.child.send(SIGKILL)
        #expect(first.server.child.waitForExit(timeout: 60))
        let stale = try first.cli("status", "m0")
        #expect(stale.status == 1 && stale.stderr.contains("stale control socket"), "\(stale)")
        #expect(!FileManager.default.fileExists(atPath: first.runDir + "/m0.ctl"))
        let unknown = try first.cli("stop", "nosuch")
        #expect(unknown.status == 1 && unknown.stderr.contains("no mirror named nosuch"), "\(unknown)")

        let again = try MirrorDaemon(source: old, target: "missing", in: dir)
        #expect(try again.status().state == .degraded)
        let stop = try again.stop()
        #expect(stop.stdout.contains("degraded: no target attached"), "\(stop)")
    }

    /// A control client that queues hundreds of requests and never reads the answers cannot keep
    /// the daemon alive: `stop`, and separately SIGTERM, end it, and the devices are free at once.
    @Test func aClientThatNeverReadsCannotHoldTheDaemon() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: 4 << 20)
        try makeSparseFile(new, size: 4 << 20)
        for ending in ["stop", "SIGTERM"] {
            let mirror = try MirrorDaemon(source: old, target: new, in: dir)
            let hog = try RawNBDClient(socketPath: mirror.runDir + "/m0.ctl")
            defer { hog.close() }
            try hog.send(Array(String(repeating: "{\"verb\":\"status\"}\n", count: 500).utf8))
            // The daemon answers others meanwhile.
            #expect(try mirror.cli("status", "m0").succeeded)
            if ending == "stop" {
                let stop = try mirror.cli("stop", "m0")
                #expect(stop.succeeded && stop.stdout.contains("m0: "), "\(stop)\n\(mirror.log)")
                mirror.server.waitForCleanExit()
            } else {
                mirror.server.stop()
            }
            let again = try MirrorDaemon(source: old, target: new, in: dir)
            #expect(try again.status().source == old)
            _ = try again.stop()
        }
    }

    /// `stop` returns once the daemon has released its devices: a `build` of the same devices right
    /// after it succeeds, every time.
    @Test func stopReturnsOnceTheDevicesAreFree() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), runDir = dir.file("run")
        try makeRandomFile(old, size: 4 << 20)
        try makeSparseFile(new, size: 4 << 20)
        defer { killDaemonLeftBehind(in: runDir) }
        for round in 1...15 {
            let build = try MirrorDaemon.cli(["build", "m0", "--source", old, "--target", new, "--bitmap", dir.file("bitmap"), "--daemon",
                                              "--listen", "unix:\(dir.file("nbd.sock"))"], runDir: runDir, in: dir)
            try #require(build.succeeded, "round \(round): \(build)\n\(readText(runDir + "/m0.log").suffix(4000))")
            let pid = try #require(pid_t(readText(runDir + "/m0.pid").trimmingCharacters(in: .whitespacesAndNewlines)))
            let stop = try MirrorDaemon.cli(["stop", "m0"], runDir: runDir, in: dir)
            try #require(stop.succeeded, "round \(round): \(stop)")
            // Exited at once (a zombie until its new parent reaps it: the --daemon child was reparented).
            #expect(kill(pid, 0) != 0 || readText("/proc/\(pid)/stat").split(separator: ")").last?.split(separator: " ").first == "Z",
                    "round \(round): stop returned while the daemon (pid \(pid)) still ran")
        }
    }

    /// Requests with numbers out of range or of the wrong kind, and unknown verbs, are answered
    /// with what is wrong in which field; the connection stays usable.
    @Test func malformedRequestsAreAnsweredWithTheFieldAndWhatItExpects() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img")
        try makeRandomFile(old, size: 4 << 20)
        let mirror = try MirrorDaemon(source: old, target: "missing", in: dir)
        let client = try RawNBDClient(socketPath: mirror.runDir + "/m0.ctl")
        defer { client.close() }
        /// The answer's `error` (nil if it has none), and whether it says `ok`.
        func answer(_ line: String) throws -> (ok: Bool, error: String?) {
            try client.send(Array((line + "\n").utf8))
            var bytes: [UInt8] = []
            while bytes.last != UInt8(ascii: "\n") { bytes += try client.receive(1) }
            let object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
            return (object?["ok"] as? Bool == true, object?["error"] as? String)
        }
        let range = "must be a whole number of KiB/s from 0 to 18446744073709551615"
        for (value, got) in [("1e999", "a number out of any range"), ("-1", "-1"), ("1.5", "1.5"), ("18446744073709551616", "1.8446744073709552e+19"),
                             ("\"fast\"", "a string")] {
            let reply = try answer("{\"verb\":\"speed\",\"speedMin\":\(value)}")
            #expect(!reply.ok && reply.error == "malformed request: \"speedMin\" \(range) (got \(got))", "\(value): \(reply)")
        }
        let unknown = try answer("{\"verb\":\"format\\u001b[2J\"}")
        #expect(unknown.error == "malformed request: unknown verb \"format\\x1b[2J\"; expected one of status, add, speed, check, fail, remove, complete, reverse, stop",
                "\(unknown)")
        #expect(!mirror.log.contains("\u{1B}[2J"), "an escape sequence from a request reached the log")
        #expect(try answer("{\"verb\":\"status\"}").ok)
        _ = try mirror.stop()
    }
}

/// Flips `count` bytes of a file in place, durably (a corruption of one leg behind the mirror).
func flipBytes(_ path: String, offset: UInt64, count: Int) throws {
    var data = try readBytes(path, offset: offset, length: count)
    for index in data.indices { data[index] ^= 0xA5 }
    try writeInPlace(path, offset: offset, data)
}
