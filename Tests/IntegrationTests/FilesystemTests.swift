import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A real filesystem on the export: nbdfuse → loop device → ext4 → mount (kernel page cache, writeback).
@Suite(.serialized) struct FilesystemTests {
    /// ext4 made through nbdfuse + losetup keeps files across a remount; the backing file fscks clean and holds them.
    @Test func ext4OverNBDFuseAndLoop() throws {
        try Tools.require("nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mount", "umount", "e2fsck", "debugfs", "md5sum")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("fs.img")
        try makeSparseFile(image, size: 128 << 20)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }

        // nbdfuse runs in the foreground; DIR/nbd appears once it is connected and mounted.
        let fuseDir = dir.file("fuse"), nbdFile = fuseDir + "/nbd", mountDir = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: fuseDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: mountDir, withIntermediateDirectories: true)
        let fuse = try ChildProcess(["nbdfuse", fuseDir + "/", server.uri], in: dir)
        defer {
            if isMountPoint(fuseDir) { unmountFuse(fuseDir, in: dir) }
            fuse.killAndWait()
        }
        let appeared = waitUntil(timeout: 60) { FileManager.default.fileExists(atPath: nbdFile) || !fuse.isRunning }
        try #require(appeared && fuse.isRunning,
                     "nbdfuse did not create \(nbdFile)\n--- nbdfuse stderr ---\n\(fuse.stderr)\n\(server.log)")
        #expect(try fileSize(nbdFile) == 128 << 20)

        let losetup = try run("losetup", "--find", "--show", "--direct-io=off", nbdFile, in: dir)
        try #require(losetup.succeeded, "\(losetup)")
        let loop = losetup.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        var loopAttached = true
        defer { if loopAttached { _ = try? run("losetup", "-d", loop, in: dir) } }

        let mkfs = try run("mkfs.ext4", "-q", loop, in: dir)
        try #require(mkfs.succeeded, "\(mkfs)\n\(server.log)")
        try #require(try run("mount", loop, mountDir, in: dir).succeeded, "mount \(loop)\n\(server.log)")
        defer { if isMountPoint(mountDir) { _ = try? run("umount", mountDir, in: dir) } }

        let files: [(String, Int)] = [("big.bin", 20 << 20), ("small.bin", 4096 + 123), ("medium.bin", 1 << 20)]
        var contents: [String: Data] = [:]
        for (name, size) in files {
            let data = try randomBytes(size)
            contents[name] = data
            try data.write(to: URL(fileURLWithPath: mountDir + "/" + name))
        }
        let names = files.map { mountDir + "/" + $0.0 }
        let before = try run(["md5sum"] + names, in: dir)
        try #require(before.succeeded, "\(before)")

        let umount = try run("umount", mountDir, in: dir)
        try #require(umount.succeeded, "\(umount)\n\(server.log)")
        try #require(try run("mount", loop, mountDir, in: dir).succeeded, "second mount of \(loop)\n\(server.log)")
        let after = try run(["md5sum"] + names, in: dir)
        #expect(after.succeeded && after.stdout == before.stdout,
                "md5sums changed across umount/mount\nbefore:\n\(before.stdout)after:\n\(after)\n\(server.log)")
        for (name, data) in contents {
            #expect(try Data(contentsOf: URL(fileURLWithPath: mountDir + "/" + name)) == data, "\(name) after remount")
        }

        try #require(try run("umount", mountDir, in: dir).succeeded, "final umount\n\(server.log)")
        let detach = try run("losetup", "-d", loop, in: dir)
        try #require(detach.succeeded, "\(detach)")
        loopAttached = false
        unmountFuse(fuseDir, in: dir)
        #expect(fuse.waitForExit(timeout: 60), "nbdfuse still running 60 s after fusermount3 -u\n\(fuse.stderr)")

        server.stop()
        let fsck = try run("e2fsck", "-fn", image, in: dir)
        #expect(fsck.succeeded, "the backing file is not a clean ext4\n\(fsck)\n\(server.log)")
        // The files are in the backing file itself, read without NBD.
        for (name, data) in contents {
            let out = dir.file("dumped-" + name)
            let dump = try run("debugfs", "-R", "dump /\(name) \(out)", image, in: dir)
            #expect(dump.succeeded && (try? Data(contentsOf: URL(fileURLWithPath: out))) == data,
                    "\(name) read from the backing file with debugfs differs\n\(dump)")
        }
    }

    /// `fusermount3 -u`, retried while the loop device is still letting go of the file (EBUSY).
    func unmountFuse(_ fuseDir: String, in dir: TempDir) {
        var last: CommandResult?
        let done = waitUntil(timeout: 60) {
            last = try? run("fusermount3", "-u", fuseDir, in: dir)
            return last?.succeeded == true || !isMountPoint(fuseDir)
        }
        if !done {
            Issue.record("fusermount3 -u \(fuseDir) kept failing\n\(last.map { "\($0)" } ?? "")")
            _ = try? run("fusermount3", "-uz", fuseDir, in: dir)
        }
    }
}
