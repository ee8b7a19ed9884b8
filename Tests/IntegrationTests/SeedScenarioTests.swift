import Foundation
import Mirror
import Testing

/// The migration of ../shared/seed end to end, with the engine in md's place: a filesystem on OLD
/// with a file; a degraded mirror exported over NBD and mounted (nbdfuse + loop); NEW added; 100 MiB
/// more written while the (throttled) recovery runs; in sync; check; stop; NEW mounts alone with
/// both files intact, and OLD still does too (invariants 1-3 and 6 through a real filesystem).
@Suite(.serialized) struct SeedScenarioTests {
    @Test func filesystemMigratesWhileWrittenAndBothLegsMountAlone() throws {
        try Tools.require("mkfs.ext4", "md5sum", "mount", "umount", "cmp")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), mnt = dir.file("direct")
        try makeSparseFile(old, size: 256 << 20)
        try makeSparseFile(new, size: 256 << 20)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        let first = "before.bin", second = "during.bin"

        // OLD: ext4 with a file, made directly on the image.
        try #require(try run("mkfs.ext4", "-q", "-F", old, in: dir).succeeded)
        defer { if isMountPoint(mnt) { _ = try? run("umount", mnt, in: dir) } }
        try #require(try run("mount", "-o", "loop", old, mnt, in: dir).succeeded)
        try randomBytes(20 << 20).write(to: URL(fileURLWithPath: mnt + "/" + first))
        let firstSum = try md5sums([first], in: mnt, dir: dir)
        try #require(try run("umount", mnt, in: dir).succeeded)

        // Degraded mirror on OLD, exported and mounted; NEW added with the copy held to 1 MB/s so
        // that the writes below really overlap the recovery.
        let mirror = try MirrorDaemon(source: old, target: "missing", in: dir, ["--speed-max", "1000"])
        let fs = try NBDFilesystem(uri: mirror.uri, in: dir, log: mirror.log)
        defer { fs.tearDown() }
        try fs.mount()
        #expect(try md5sums([first], in: fs.mountDir, dir: dir) == firstSum)
        let add = try mirror.cli("add", "m0", new)
        try #require(add.succeeded, "\(add)\n\(mirror.log)")

        let payload = dir.file("payload.bin")
        try randomBytes(100 << 20).write(to: URL(fileURLWithPath: payload))
        let copy = try run("cp", payload, fs.mountDir + "/" + second, in: dir)
        try #require(copy.succeeded, "\(copy)")
        try #require(try run("sync", "-f", fs.mountDir + "/" + second, in: dir).succeeded)
        let sums = try md5sums([first, second], in: fs.mountDir, dir: dir)
        let overlapping = try mirror.status()
        #expect(overlapping.state == .recovering && overlapping.regionsDirty > 0,
                "the writes did not overlap the recovery: \(overlapping)")

        // Let the copy run at full speed, wait for in-sync, check, and take everything down.
        try #require(try mirror.cli("speed", "m0", "--max", "unlimited").succeeded)
        try mirror.waitForStatus { $0.state == .inSync }
        let check = try mirror.cli("check", "m0")
        #expect(check.succeeded && check.stdout.contains("mismatch_cnt=0"), "\(check)")
        try fs.unmount()
        fs.tearDown()
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("m0: in sync: \(new) is a complete copy of \(old)"), "\(stop)")

        // NEW alone, then OLD alone: both mount and hold both files.
        for leg in [new, old] {
            try #require(try run("mount", "-o", "loop,ro", leg, mnt, in: dir).succeeded, "mount \(leg)")
            let legSums = try md5sums([first, second], in: mnt, dir: dir)
            #expect(legSums == sums, "\(leg) after the migration:\n\(legSums)\nexpected:\n\(sums)")
            #expect(try run("umount", mnt, in: dir).succeeded)
        }
        let compare = try run("cmp", old, new, in: dir)
        #expect(compare.succeeded, "\(compare)")
    }
}
