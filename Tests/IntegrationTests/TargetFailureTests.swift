import Foundation
import Mirror
import Testing

/// Invariant 5 with a real failing device: the target is a 64 MiB sparse file on a 16 MiB tmpfs,
/// so writing it fails with ENOSPC partway. The mirror degrades, says why, keeps serving from the
/// source, and no acknowledged write is lost (fio verifies through the export, then again against
/// OLD alone after the stop).
@Suite(.serialized) struct TargetFailureTests {
    @Test func fullTargetDegradesAndNoAcknowledgedWriteIsLost() throws {
        try Tools.require("fio", "mount", "umount")
        let dir = try TempDir()
        defer { dir.remove() }
        let full = try SmallFilesystem(in: dir)
        defer { full.unmount() }
        let small = full.path
        let old = dir.file("old.img"), new = small + "/new.img"
        try makeRandomFile(old, size: 64 << 20)
        try makeSparseFile(new, size: 64 << 20)

        let mirror = try MirrorDaemon(source: old, target: new, in: dir, ["--region-size", "256K"])
        let job = ["fio", "--name=failing", "--ioengine=nbd", "--uri=\(mirror.uri)", "--rw=randwrite", "--bsrange=4k-64k",
                   "--iodepth=16", "--size=64M", "--io_size=48M", "--verify=crc32c", "--verify_state_save=0", "--randseed=7"]
        let fio = try run(job, in: dir)
        #expect(fio.succeeded, "writes failed although only the target is full\n\(fio)\n\(mirror.log)")
        let failed = try #require(try mirror.waitForStatus { $0.state == .targetFailed })
        let reason = failed.failure ?? ""
        #expect(reason.contains(new) && reason.contains("No space left on device") && reason.contains("offset"), "\(reason)")
        #expect(mirror.log.contains("target failed"), "\(mirror.log)")
        let text = try mirror.cli("status", "m0")
        #expect(text.stdout.contains("target-failed") && text.stdout.contains("new.img[1](F)"), "\(text)")

        // Still serving, from the source alone.
        let more = try run(job.map { $0 == "--randseed=7" ? "--randseed=8" : $0 }, in: dir)
        #expect(more.succeeded, "\(more)\n\(mirror.log)")
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("not in sync (target failed:"), "\(stop)")

        // OLD alone holds the last writes: fio's verify pass of the second job against a plain export of it.
        let server = try ServerProcess(image: old, in: dir, socketName: "plain.sock")
        defer { server.stop() }
        let verify = try run(job.map { $0 == "--randseed=7" ? "--randseed=8" : $0.hasPrefix("--uri=") ? "--uri=\(server.uri)" : $0 }
                             + ["--verify_only"], in: dir)
        #expect(verify.succeeded, "acknowledged writes missing from OLD\n\(verify)")
    }
}

/// The other half of invariant 5: an I/O error on the source goes back to the client as an NBD
/// error (the source is a 64 MiB sparse file on a 16 MiB tmpfs), the mirror keeps its target and
/// keeps serving, and the regions of the failed writes are copied again.
@Suite(.serialized) struct SourceFailureTests {
    @Test func sourceErrorsReachTheClientAndTheMirrorStaysUp() throws {
        try Tools.require("qemu-io", "mount", "umount")
        let dir = try TempDir()
        defer { dir.remove() }
        let full = try SmallFilesystem(in: dir)
        defer { full.unmount() }
        let small = full.path
        let old = small + "/old.img", new = dir.file("new.img")
        try makeSparseFile(old, size: 64 << 20)
        try makeSparseFile(new, size: 64 << 20)
        let mirror = try MirrorDaemon(source: old, target: new, in: dir, ["--region-size", "256K"])
        try mirror.waitForStatus { $0.state == .inSync }

        let first = try run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", mirror.uri, in: dir)
        #expect(first.succeeded && !first.output.contains("failed"), "\(first)")
        // 24 MiB more cannot fit in 16 MiB: qemu-io sees the error, nothing crashes.
        let io = try run("qemu-io", "-f", "raw", "-c", "write -P 0x66 8M 24M", mirror.uri, in: dir)
        #expect(io.output.contains("No space left on device"), "\(io)\n\(mirror.log)")
        let after = try mirror.status()
        #expect(after.state != .targetFailed && after.target == new, "\(after)")
        // Still serving, and the regions of the failed write are copied again until in sync.
        let again = try run("qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", mirror.uri, in: dir)
        #expect(again.succeeded && !again.output.contains("failed"), "\(again)\n\(mirror.log)")
        try mirror.waitForStatus { $0.state == .inSync }
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync"), "\(stop)")
        let compare = try run("cmp", old, new, in: dir)
        #expect(compare.succeeded, "OLD and NEW differ after a failed source write\n\(compare)")
    }
}

/// A 16 MiB tmpfs mounted at DIR/small: a real device that runs out of space (ENOSPC) partway
/// through a 64 MiB file. `unmount()` when done.
struct SmallFilesystem {
    let path: String
    private let dir: TempDir

    init(in dir: TempDir) throws {
        self.dir = dir
        path = dir.file("small")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let mount = try run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", path, in: dir)
        guard mount.succeeded else { throw IntegrationFailure("\(mount)") }
    }

    func unmount() { _ = try? run("umount", path, in: dir) }
}
