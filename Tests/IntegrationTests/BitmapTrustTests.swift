import Foundation
import Mirror
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Invariant 8 through the real binary: a mirror resumed from a bitmap file never reports "in
/// sync" while OLD and NEW differ — not after the file was damaged or swapped for an older one,
/// not after NEW was replaced, not after OLD or NEW was written outside the mirror, not when NEW
/// changes under a running mirror, and not after a check found differences. Each case ends with
/// the mirror's own verdict checked against `cmp OLD NEW`.
@Suite(.serialized) struct BitmapTrustTests {
    static let size = 32 << 20

    /// OLD (random), NEW (sparse), the bitmap's path, and a runtime directory.
    struct Pair {
        let dir: TempDir
        let old: String, new: String, bitmap: String
        init(_ label: String = #function) throws {
            try Tools.require("qemu-io", "cmp")
            dir = try TempDir(label)
            old = dir.file("old.img"); new = dir.file("new.img"); bitmap = dir.file("bitmap")
            try makeRandomFile(old, size: BitmapTrustTests.size)
            try makeSparseFile(new, size: BitmapTrustTests.size)
        }

        func mirror(target: String? = nil, _ extra: [String] = []) throws -> MirrorDaemon {
            try MirrorDaemon(source: old, target: target ?? new, in: dir, ["--bitmap", bitmap] + extra)
        }

        /// A mirror that copies, then is killed with SIGKILL while still recovering.
        func crashMidRecovery() throws {
            // 1 KiB/s: one region is copied, then the copy waits minutes.
            let mirror = try self.mirror(target: nil, ["--speed-min", "1", "--speed-max", "1"])
            try mirror.waitForStatus { $0.state == .recovering && $0.regionsDirty < $0.regionsTotal }
            try write(mirror.uri, pattern: 0x11, offset: 5 << 20)
            mirror.server.child.send(SIGKILL)
            #expect(mirror.server.child.waitForExit(timeout: 60))
        }

        /// A mirror run to in sync and stopped cleanly; returns its stop line.
        @discardableResult
        func syncAndStop(_ extra: [String] = []) throws -> String {
            let mirror = try self.mirror(target: nil, extra)
            try mirror.waitForStatus { $0.state == .inSync }
            return try mirror.stop().stdout
        }

        /// Restarts the mirror with the bitmap, lets it finish, stops it: the stop must say in
        /// sync, and OLD must equal NEW. Returns the daemon's log.
        @discardableResult
        func resumeAndCompare(_ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
            let mirror = try self.mirror(target: nil, extra)
            try mirror.waitForStatus(sourceLocation: sourceLocation) { $0.state == .inSync }
            let stop = try mirror.stop(sourceLocation: sourceLocation)
            #expect(stop.stdout.contains("in sync: \(new) is a complete copy"), "\(stop)\n\(mirror.log)", sourceLocation: sourceLocation)
            let compare = try run("cmp", old, new, in: dir)
            #expect(compare.succeeded, "the mirror said in sync, but OLD and NEW differ\n\(compare)\n\(mirror.log)",
                    sourceLocation: sourceLocation)
            return mirror.log
        }

        /// qemu-io writes 64 KiB of `pattern` at `offset` through `uri`.
        func write(_ uri: String, pattern: UInt8, offset: Int) throws {
            let io = try run("qemu-io", "-f", "raw", "-c", "write -P \(pattern) \(offset) 64k", uri, in: dir)
            #expect(io.succeeded && io.stdout.contains("wrote 65536"), "\(io)")
        }
    }

    /// kill -9 mid-recovery, then the bitmap's bit area is zeroed or flipped: its pages fail their
    /// checks and their regions are copied (before: "in sync" at once, dozens of regions differing).
    @Test(arguments: [UInt8(0x00), UInt8(0xff)]) func damagedBitsAfterACrashAreCopiedAgain(fill: UInt8) throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.crashMidRecovery()
        let size = try fileSize(pair.bitmap)
        let pages = BitmapFileFormat.pagesOffset
        try writeInPlace(pair.bitmap, offset: UInt64(pages), Data(repeating: fill, count: size - pages))
        let log = try pair.resumeAndCompare()
        #expect(log.contains("bitmap pages failed their checks"), "\(log)")
    }

    /// An older, all-clear bitmap of the same pair (from a completed run), with NEW re-created
    /// since: NEW is not the target it was written for, so everything is copied.
    @Test func anOlderBitmapOfARecreatedTargetIsNotTrusted() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.syncAndStop()
        try FileManager.default.copyItem(atPath: pair.bitmap, toPath: pair.dir.file("bitmap.old"))
        unlink(pair.new)
        try makeSparseFile(pair.new, size: Self.size)
        try pair.crashMidRecovery()
        unlink(pair.bitmap)
        try FileManager.default.moveItem(atPath: pair.dir.file("bitmap.old"), toPath: pair.bitmap)
        let log = try pair.resumeAndCompare()
        #expect(log.contains("is not the target the bitmap was written for"), "\(log)")
    }

    /// The same bitmap after a crash, with NEW replaced by an empty file of the same size.
    @Test func aTargetReplacedAfterACrashIsCopiedWhole() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.crashMidRecovery()
        unlink(pair.new)
        try makeSparseFile(pair.new, size: Self.size)
        try pair.resumeAndCompare()
    }

    /// NEW emptied in place after a crash (same inode, a sparse file again): the regions the bitmap
    /// calls clean where NEW is a hole but OLD holds data are compared before being trusted.
    @Test func aTargetEmptiedInPlaceAfterACrashIsVerified() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.crashMidRecovery()
        #expect(truncate(pair.new, 0) == 0 && truncate(pair.new, off_t(Self.size)) == 0)
        let log = try pair.resumeAndCompare()
        #expect(log.contains("compared before they are trusted"), "\(log)")
    }

    /// NEW rewritten in place after a crash (same inode, not sparse: nothing the kernel keeps can
    /// tell): the default trusts the bits, as docs/INVARIANTS.md says; --verify-clean compares the
    /// regions they call clean and copies what differs.
    @Test func verifyCleanFindsWhatNoTraceShows() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.syncAndStop()
        let crashed = try pair.mirror()
        try crashed.waitForStatus { $0.state == .inSync }
        crashed.server.child.send(SIGKILL)
        #expect(crashed.server.child.waitForExit(timeout: 60))
        try flipBytes(pair.new, offset: 7 << 20, count: 4096)
        try flipBytes(pair.new, offset: 19 << 20, count: 1)
        let log = try pair.resumeAndCompare(["--verify-clean"])
        #expect(log.contains("2 differed and were copied"), "\(log)")
    }

    /// Ordinary admin steps, no tampering: stopped in sync with the bitmap, then OLD written by a
    /// degraded run without the bitmap, or by `blockmirror serve OLD`: the bitmap sees the trace.
    @Test(arguments: ["degraded", "serve"]) func writesToOldOutsideTheMirrorAreSeen(writer: String) throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.syncAndStop()
        let outside = writer == "serve" ? try ServerProcess(image: pair.old, in: pair.dir, socketName: "serve.sock")
                                        : try ServerProcess(["build", "m0", "--source", pair.old, "--target", "missing",
                                                             "--run-dir", pair.dir.file("run2")], in: pair.dir, socketName: "degraded.sock")
        try pair.write(outside.uri, pattern: 0x22, offset: 9 << 20)
        outside.stop()
        let log = try pair.resumeAndCompare()
        #expect(log.contains("the source \(pair.old) was written outside the mirror"), "\(log)")
    }

    /// A degraded run may use the bitmap: it records what NEW will lack, and the restart with NEW
    /// copies only those regions.
    @Test func aDegradedRunWithTheBitmapRecordsWhatNewLacks() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        try pair.syncAndStop()
        let degraded = try pair.mirror(target: "missing")
        try pair.write(degraded.uri, pattern: 0x33, offset: 12 << 20)
        try pair.write(degraded.uri, pattern: 0x34, offset: 20 << 20)
        let stop = try degraded.stop()
        #expect(stop.stdout.contains("degraded"), "\(stop)")
        let examine = try run([try BlockMirrorBinary.path(), "examine", pair.bitmap], in: pair.dir)
        #expect(examine.succeeded && examine.stdout.contains("2 of 32 regions dirty") && examine.stdout.contains("stopped cleanly"),
                "\(examine)")
        let log = try pair.resumeAndCompare()
        #expect(log.contains("resuming from the bitmap") && log.contains("dirty=2"), "\(log)")
    }

    /// NEW changing under an in-sync mirror (deleted, truncated, renamed and re-created) fails the
    /// target: the stop says "not in sync", naming what happened.
    @Test(arguments: ["rm", "truncate", "rename"]) func aTargetChangedUnderTheMirrorFailsIt(change: String) throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        let mirror = try pair.mirror()
        try mirror.waitForStatus { $0.state == .inSync }
        switch change {
        case "rm": unlink(pair.new)
        case "truncate": #expect(truncate(pair.new, 8 << 20) == 0)
        default:
            #expect(rename(pair.new, pair.dir.file("new.moved")) == 0)
            try makeSparseFile(pair.new, size: Self.size)
        }
        try pair.write(mirror.uri, pattern: 0x44, offset: 2 << 20)
        let failed = try mirror.waitForStatus { $0.state == .targetFailed }
        let why = ["rm": "was deleted", "truncate": "shrank", "rename": "now names another file"][change]!
        #expect(failed?.failure?.contains(why) == true, "\(String(describing: failed))")
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("not in sync") && stop.stdout.contains(why), "\(stop)")
    }

    /// A check that finds differences makes the mirror copy those regions again: a stop right
    /// after it says "in sync" only once NEW equals OLD (before: "in sync: NEW is a complete copy"
    /// while the regions found still differed).
    @Test func aCheckThatFindsMismatchesIsNotInSync() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        let mirror = try pair.mirror()
        try mirror.waitForStatus { $0.state == .inSync }
        for region in [3, 11, 27] { try flipBytes(pair.new, offset: UInt64(region) << 20, count: 512) }
        let check = try mirror.cli("check", "m0")
        #expect(check.status == 3 && check.stdout.contains("mismatch_cnt=3"), "\(check)")
        #expect(try mirror.status().lastCheck?.regionsMarkedDirty == 3)
        let stop = try mirror.stop()
        if stop.stdout.contains("in sync: \(pair.new) is a complete copy") {
            let compare = try run("cmp", pair.old, pair.new, in: pair.dir)
            #expect(compare.succeeded, "stop said in sync right after a check found mismatches, but OLD and NEW differ\n\(compare)")
        } else {
            #expect(stop.stdout.contains("not in sync") && stop.stdout.contains("the last check found 3 mismatched sectors"), "\(stop)")
        }
        try pair.resumeAndCompare()
    }

    /// The regions a check finds are dirty on disk as it goes: a kill -9 during the check, then a
    /// restart with the copy held back, still has them to copy.
    @Test func aCheckMarksItsFindingsOnDiskAsItGoes() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        let mirror = try pair.mirror()
        try mirror.waitForStatus { $0.state == .inSync }
        for region in [1, 3] { try flipBytes(pair.new, offset: UInt64(region) << 20, count: 512) }
        // 512 KiB/s: the check of 32 regions would take a minute; it is killed once it reported
        // both (a region found is on disk before the report counts it), some 8 s in.
        #expect(try mirror.cli("speed", "m0", "--min", "1", "--max", "512").succeeded)
        let check = try ChildProcess([try BlockMirrorBinary.path(), "check", "m0", "--run-dir", mirror.runDir], in: pair.dir)
        let found = try mirror.waitForStatus { ($0.check?.mismatchedSectors ?? 0) >= 2 }
        #expect((found?.check?.regionsChecked ?? 32) < 32, "the check ended before the kill: \(String(describing: found))")
        mirror.server.child.send(SIGKILL)
        #expect(mirror.server.child.waitForExit(timeout: 60))
        #expect(check.waitForExit(timeout: 60))

        // 1 KiB/s: one region is copied, then the copy waits minutes.
        let held = try pair.mirror(target: nil, ["--speed-min", "1", "--speed-max", "1"])
        let status = try held.status()
        #expect(status.state == .recovering && status.regionsDirty >= 1, "\(status)\n\(held.log)")
        let stop = try held.stop()
        #expect(stop.stdout.contains("not in sync"), "\(stop)")
        try pair.resumeAndCompare()
    }

    /// A target that is the source by another path (symlink, hard link, /proc/PID/fd, a loop
    /// device over it) is refused as the source, at build and at add.
    @Test func theSourceByAnotherPathIsRefusedAsTheSource() throws {
        let pair = try Pair()
        defer { pair.dir.remove() }
        let link = pair.dir.file("link.img"), hard = pair.dir.file("hard.img")
        #expect(symlink(pair.old, link) == 0 && Glibc.link(pair.old, hard) == 0)
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: pair.old))
        defer { try? handle.close() }
        let procPath = "/proc/\(getpid())/fd/\(handle.fileDescriptor)"
        var aliases = [link, hard, procPath]
        let loop = try run("losetup", "--find", "--show", pair.old, in: pair.dir)
        let device = loop.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        if loop.succeeded { aliases.append(device) } else { Issue.record("losetup failed\n\(loop)") }
        defer { if loop.succeeded { _ = try? run("losetup", "-d", device, in: pair.dir) } }
        for alias in aliases {
            let build = try run([try BlockMirrorBinary.path(), "build", "m0", "--source", pair.old, "--target", alias,
                                 "--run-dir", pair.dir.file("run"), "--listen", "unix:\(pair.dir.file("refused.sock"))"], in: pair.dir)
            #expect(build.status == 1 && build.stderr.contains("\(alias) is the source \(pair.old)"), "\(build)")
        }
        let mirror = try pair.mirror(target: "missing")
        for alias in aliases {
            let add = try mirror.cli("add", "m0", alias)
            #expect(add.status == 1 && add.stderr.contains("is the source \(pair.old)"), "\(add)")
        }
        _ = try mirror.stop()
    }
}
