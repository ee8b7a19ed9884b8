import Foundation
import Testing

/// `blockmirror build` through the real binary and real NBD clients: the degraded start, the
/// recovery onto a target, writes verified by fio, a kill -9 and a resume from the bitmap, and a
/// byte-for-byte comparison of OLD and NEW at the end (invariants 2, 3, 4, 6).
@Suite(.serialized) struct MirrorBuildTests {
    static let size = 64 << 20

    /// A temp dir with OLD (random data), NEW (sparse, same size) and the bitmap's path.
    struct Files {
        let dir: TempDir
        let old: String, new: String, bitmap: String
        init(_ label: String = #function) throws {
            try Tools.require("fio", "cmp")
            dir = try TempDir(label)
            old = dir.file("old.img"); new = dir.file("new.img"); bitmap = dir.file("bitmap")
            try makeRandomFile(old, size: MirrorBuildTests.size)
            try makeSparseFile(new, size: MirrorBuildTests.size)
        }
    }

    /// fio writes `size` bytes with crc32c and verifies them, through `uri`.
    func fioWriteVerify(_ uri: String, bs: String, in dir: TempDir, extra: [String] = []) throws -> CommandResult {
        try run(["fio", "--name=mirror", "--ioengine=nbd", "--uri=\(uri)", "--rw=randwrite", "--bs=\(bs)", "--iodepth=16",
                 "--size=32M", "--verify=crc32c", "--verify_state_save=0"] + extra, in: dir)
    }

    /// Waits until the daemon logs that the recovery completed.
    func waitForSync(_ server: ServerProcess) {
        let synced = waitUntil(timeout: 120) { server.log.contains("recovery complete: target in sync") || !server.isRunning }
        #expect(synced && server.isRunning, "no \"recovery complete\" line\n\(server.log)")
    }

    /// Degraded on OLD, written to; restarted with NEW and the bitmap: recovery, more verified
    /// writes during and after it, stop says "in sync", and OLD == NEW byte for byte.
    @Test func degradedThenTargetRecoversAndStaysIdentical() throws {
        let files = try Files()
        defer { files.dir.remove() }
        let (dir, old, new, bitmap) = (files.dir, files.old, files.new, files.bitmap)

        let degraded = try ServerProcess(["build", "m0", "--source", old, "--target", "missing", "--bitmap", bitmap,
                                          "--region-size", "256K"], in: dir)
        let first = try fioWriteVerify(degraded.uri, bs: "64k", in: dir)
        #expect(first.succeeded, "\(first)\n\(degraded.log)")
        degraded.stop()
        #expect(degraded.child.stdout.contains("m0: degraded: no target attached"), "\(degraded.child.stdout)")

        let mirror = try ServerProcess(["build", "m0", "--source", old, "--target", new, "--bitmap", bitmap,
                                        "--region-size", "256K"], in: dir)
        let during = try fioWriteVerify(mirror.uri, bs: "4k", in: dir, extra: ["--offset=32M"])
        #expect(during.succeeded, "\(during)\n\(mirror.log)")
        waitForSync(mirror)
        let after = try fioWriteVerify(mirror.uri, bs: "16k", in: dir)
        #expect(after.succeeded, "\(after)\n\(mirror.log)")
        mirror.stop()
        #expect(mirror.child.stdout.contains("m0: in sync: \(new) is a complete copy of \(old)"), "\(mirror.child.stdout)")
        let compare = try run("cmp", old, new, in: dir)
        #expect(compare.succeeded, "OLD and NEW differ after the mirror stopped in sync\n\(compare)")
    }

    /// kill -9 while fio writes through an in-sync mirror; a restart with the same bitmap recopies
    /// what may differ, and after it OLD == NEW byte for byte.
    @Test func killDashNineThenResumeEndsIdentical() throws {
        let files = try Files()
        defer { files.dir.remove() }
        let (dir, old, new, bitmap) = (files.dir, files.old, files.new, files.bitmap)
        let arguments = ["build", "m0", "--source", old, "--target", new, "--bitmap", bitmap, "--region-size", "256K"]

        let first = try ServerProcess(arguments, in: dir)
        waitForSync(first)
        let writer = try ChildProcess(["fio", "--name=crash", "--ioengine=nbd", "--uri=\(first.uri)", "--rw=randwrite",
                                       "--bs=4k", "--iodepth=32", "--size=64M", "--time_based", "--runtime=60"], in: dir)
        // Kill once fio is connected and writing.
        #expect(waitUntil(timeout: 60) { writer.stderr.contains("connected") || writer.stdout.contains("connected") || !writer.isRunning })
        first.child.send(SIGKILL)
        #expect(first.child.waitForExit(timeout: 60))
        writer.killAndWait()

        let second = try ServerProcess(arguments, in: dir)
        #expect(second.log.contains("resuming from the bitmap"), "\(second.log)")
        waitForSync(second)
        second.stop()
        #expect(second.child.stdout.contains("in sync"), "\(second.child.stdout)")
        let compare = try run("cmp", old, new, in: dir)
        #expect(compare.succeeded, "OLD and NEW differ after the resume\n\(compare)")
    }
}
