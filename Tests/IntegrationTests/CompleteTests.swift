import Foundation
import Mirror
import MirrorModel
import Testing

/// `complete` and `reverse` through the real binary and real clients: the export switches onto NEW
/// with the filesystem on it still mounted, OLD keeps exactly what it held at the switch, a kill -9
/// right after the switch comes back serving NEW, and the way back copies only what changed.
@Suite(.serialized) struct CompleteTests {
    static let size = 64 << 20

    /// md5 of a whole file.
    private func md5(_ path: String, in dir: TempDir) throws -> String {
        let result = try run("md5sum", path, in: dir)
        guard result.succeeded else { throw IntegrationFailure("\(result)") }
        return String(result.stdout.prefix(32))
    }

    /// build → in sync → mounted → complete (a copy running into the filesystem across it) → more
    /// writes → stop: NEW mounts alone with every file; OLD is byte for byte what it was at the
    /// switch and lacks the file written after it.
    @Test func filesystemCompletesOntoNewWithoutARemount() throws {
        try Tools.require("mkfs.ext4", "md5sum", "mount", "umount", "cp")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), mnt = dir.file("direct")
        try makeSparseFile(old, size: 128 << 20)
        try makeSparseFile(new, size: 128 << 20)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try #require(try run("mkfs.ext4", "-q", "-F", old, in: dir).succeeded)

        let mirror = try MirrorDaemon(source: old, target: new, in: dir, ["--bitmap", dir.file("m0.bitmap")])
        try mirror.waitForStatus { $0.state == .inSync }
        let fs = try NBDFilesystem(uri: mirror.uri, in: dir, log: mirror.log)
        defer { fs.tearDown() }
        try fs.mount()
        let before = "before.bin", during = "during.bin", after = "after.bin"
        try randomBytes(8 << 20).write(to: URL(fileURLWithPath: fs.mountDir + "/" + before))
        try #require(try run("sync", "-f", fs.mountDir + "/" + before, in: dir).succeeded)
        let beforeSum = try md5sums([before], in: fs.mountDir, dir: dir)

        // A copy into the filesystem runs while the export switches: its requests wait, none fails.
        let payload = dir.file("payload.bin")
        try randomBytes(48 << 20).write(to: URL(fileURLWithPath: payload))
        let copying = try ChildProcess(["sh", "-c", "cp \(payload) \(fs.mountDir)/\(during) && sync -f \(fs.mountDir)/\(during)"], in: dir)
        let complete = try mirror.cli("complete", "m0")
        #expect(complete.succeeded && complete.stdout.contains("\(new) serves alone"), "\(complete)\n\(mirror.log)")
        #expect(copying.waitForExit(timeout: 240) && copying.exitCode == 0, "the copy across the switch failed\n\(copying.stderr)")
        let status = try mirror.status()
        #expect(status.source == new && status.target == nil && status.retired == old && status.switched != nil, "\(status)")
        let shown = try mirror.cli("status", "m0")
        #expect(shown.stdout.contains("m0 : degraded \(new)[0]") && shown.stdout.contains("\(old) retired, holding what it held then"),
                "\(shown)")
        let detail = try mirror.cli("detail", "m0")
        #expect(detail.stdout.contains("Roles Switched :") && detail.stdout.contains("Retired : \(old)"), "\(detail)")
        // What OLD holds from the switch on: nothing may change it any more.
        let oldAtSwitch = try md5(old, in: dir)

        try randomBytes(4 << 20).write(to: URL(fileURLWithPath: fs.mountDir + "/" + after))
        let sums = try md5sums([before, during, after], in: fs.mountDir, dir: dir)
        try fs.unmount()
        fs.tearDown()
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("completed at") && stop.stdout.contains("\(new) holds every write"), "\(stop)")
        #expect(try md5(old, in: dir) == oldAtSwitch, "OLD changed after complete")

        defer { if isMountPoint(mnt) { _ = try? run("umount", mnt, in: dir) } }
        try #require(try run("mount", "-o", "loop,ro", new, mnt, in: dir).succeeded)
        #expect(try md5sums([before, during, after], in: mnt, dir: dir) == sums, "NEW alone lacks what was written")
        #expect(try run("umount", mnt, in: dir).succeeded)
        // OLD is the disk of the moment of the switch, like a crash image: a copy of it mounts (its
        // journal replayed on the copy, not on OLD) with the file synced before complete, and
        // without the one written after it.
        let oldCopy = dir.file("old-copy.img")
        try #require(try run("cp", "--sparse=always", old, oldCopy, in: dir).succeeded)
        try #require(try run("mount", "-o", "loop", oldCopy, mnt, in: dir).succeeded)
        #expect(try md5sums([before], in: mnt, dir: dir) == beforeSum, "OLD lacks the file synced before complete")
        #expect(!FileManager.default.fileExists(atPath: mnt + "/" + after), "a file written after complete reached OLD")
        #expect(try run("umount", mnt, in: dir).succeeded)
    }

    /// Refused with the reason while the target is not in sync, and without a bitmap file.
    @Test func completeIsRefusedUnlessInSyncWithABitmap() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        let held = try MirrorDaemon(source: old, target: new, in: dir,
                                    ["--bitmap", dir.file("m0.bitmap"), "--speed-min", "1", "--speed-max", "1"])
        let early = try held.cli("complete", "m0")
        #expect(!early.succeeded && early.stderr.contains("needs a target in sync") && early.stderr.contains("regions"), "\(early)")
        #expect(try held.status().source == old)
        _ = try held.stop()

        let plain = try MirrorDaemon("m1", source: old, target: new, in: dir)
        try plain.waitForStatus { $0.state == .inSync }
        let unrecorded = try plain.cli("complete", "m1")
        #expect(!unrecorded.succeeded && unrecorded.stderr.contains("needs a bitmap file"), "\(unrecorded)")
        _ = try plain.stop()
    }

    /// kill -9 right after `complete` and a write on NEW: the same command line comes back serving
    /// NEW (the write is there), never OLD (which lacks it).
    @Test func restartAfterKillServesNew() throws {
        try Tools.require("qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), bitmap = dir.file("m0.bitmap")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        let arguments = ["--bitmap", bitmap]
        let mirror = try MirrorDaemon(source: old, target: new, in: dir, arguments)
        try mirror.waitForStatus { $0.state == .inSync }
        let complete = try mirror.cli("complete", "m0")
        try #require(complete.succeeded, "\(complete)\n\(mirror.log)")
        let write = try run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 1M", mirror.uri, in: dir)
        try #require(write.succeeded, "\(write)")
        mirror.server.child.send(SIGKILL)
        #expect(mirror.server.child.waitForExit(timeout: 60))

        let examine = try run([try BlockMirrorBinary.path(), "examine", bitmap], in: dir)
        #expect(examine.succeeded && examine.stdout.contains("Roles switched : ") && examine.stdout.contains("Retired : \(old) (inode")
                && examine.stdout.contains("Source : \(new) (inode"), "\(examine)")
        let restarted = try MirrorDaemon(source: old, target: new, in: dir, arguments)
        let status = try restarted.status()
        #expect(status.source == new && status.target == nil && status.retired == old, "\(status)\n\(restarted.log)")
        #expect(restarted.log.contains("the roles switched"), "\(restarted.log)")
        let read = try run("qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 1M", restarted.uri, in: dir)
        #expect(read.succeeded && !read.stdout.contains("Pattern verification failed"), "\(read)")
        #expect(try readBytes(old, offset: 1 << 20, length: 1 << 20) != Data(repeating: 0x5a, count: 1 << 20), "OLD got a write after complete")
        _ = try restarted.stop()
    }

    /// The way back: complete, writes on NEW alone, OLD added back copies only the regions written
    /// since, reverse makes OLD the source again, stop: OLD and NEW are identical. And with
    /// --keep-old, OLD is written on every write: a reverse right away copies nothing.
    @Test func theWayBackCopiesOnlyWhatChanged() throws {
        try Tools.require("qemu-io", "cmp")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        let mirror = try MirrorDaemon(source: old, target: new, in: dir, ["--bitmap", dir.file("m0.bitmap")])
        try mirror.waitForStatus { $0.state == .inSync }
        try #require(try mirror.cli("complete", "m0").succeeded)
        // Three 1 MiB regions written on NEW alone.
        for offset in [0, 10 << 20, 40 << 20] {
            #expect(try run("qemu-io", "-f", "raw", "-c", "write -P 0x3c \(offset) 4k", mirror.uri, in: dir).succeeded)
        }
        let copiedBefore = try mirror.status().bytesCopied
        let add = try mirror.cli("add", "m0", old)
        #expect(add.succeeded && add.stdout.contains("(3 of 64 regions to copy)"), "\(add)\n\(mirror.log)")
        let synced = try mirror.waitForStatus { $0.state == .inSync }
        #expect(synced.map { $0.bytesCopied - copiedBefore } == 3 << 20, "\(String(describing: synced))")
        let reverse = try mirror.cli("reverse", "m0")
        #expect(reverse.succeeded && reverse.stdout.contains("\(old) serves, \(new) is its target"), "\(reverse)")
        #expect(try run("qemu-io", "-f", "raw", "-c", "write -P 0x7e 20M 64k", mirror.uri, in: dir).succeeded)
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync: \(new) is a complete copy of \(old)"), "\(stop)")
        #expect(try run("cmp", old, new, in: dir).succeeded)

        let kept = try MirrorDaemon("m1", source: old, target: new, in: dir, ["--bitmap", dir.file("m1.bitmap")])
        try kept.waitForStatus { $0.state == .inSync }
        let keptCopied = try kept.status().bytesCopied
        let keepOld = try kept.cli("complete", "m1", "--keep-old")
        #expect(keepOld.succeeded && keepOld.stdout.contains("\(new) serves, \(old) is its target"), "\(keepOld)")
        #expect(try run("qemu-io", "-f", "raw", "-c", "write -P 0x11 30M 64k", kept.uri, in: dir).succeeded)
        #expect(try kept.cli("reverse", "m1").succeeded)
        let back = try kept.status()
        #expect(back.source == old && back.target == new && back.state == .inSync && back.bytesCopied == keptCopied, "\(back)")
        _ = try kept.stop()
        #expect(try run("cmp", old, new, in: dir).succeeded)
    }
}
