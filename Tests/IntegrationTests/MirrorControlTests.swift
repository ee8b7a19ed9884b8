import Foundation
import Mirror
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
        #expect(all.succeeded && all.stdout.hasPrefix("[{") && all.stdout.contains("\"name\":\"m0\""), "\(all)")

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
}

/// Flips `count` bytes of a file in place, durably (a corruption of one leg behind the mirror).
func flipBytes(_ path: String, offset: UInt64, count: Int) throws {
    var data = try readBytes(path, offset: offset, length: count)
    for index in data.indices { data[index] ^= 0xA5 }
    try writeInPlace(path, offset: offset, data)
}
