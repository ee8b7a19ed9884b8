import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A real filesystem on the export: nbdfuse → loop device → ext4 → mount (kernel page cache, writeback).
@Suite(.serialized) struct FilesystemTests {
    /// ext4 made through nbdfuse + losetup keeps files across a remount; the backing file fscks clean and holds them.
    @Test func ext4OverNBDFuseAndLoop() throws {
        try Tools.require("mkfs.ext4", "e2fsck", "debugfs", "md5sum")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("fs.img")
        try makeSparseFile(image, size: 128 << 20)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }
        let fs = try NBDFilesystem(uri: server.uri, in: dir, log: server.log)
        defer { fs.tearDown() }
        #expect(try fileSize(fs.nbdFile) == 128 << 20)

        let mkfs = try run("mkfs.ext4", "-q", fs.loop!, in: dir)
        try #require(mkfs.succeeded, "\(mkfs)\n\(server.log)")
        try fs.mount()
        let mountDir = fs.mountDir

        let files: [(String, Int)] = [("big.bin", 20 << 20), ("small.bin", 4096 + 123), ("medium.bin", 1 << 20)]
        var contents: [String: Data] = [:]
        for (name, size) in files {
            let data = try randomBytes(size)
            contents[name] = data
            try data.write(to: URL(fileURLWithPath: mountDir + "/" + name))
        }
        let names = files.map(\.0)
        let before = try md5sums(names, in: mountDir, dir: dir)

        try fs.unmount()
        try fs.mount()
        let after = try md5sums(names, in: mountDir, dir: dir)
        #expect(after == before, "md5sums changed across umount/mount\nbefore:\n\(before)after:\n\(after)\n\(server.log)")
        for (name, data) in contents {
            #expect(try Data(contentsOf: URL(fileURLWithPath: mountDir + "/" + name)) == data, "\(name) after remount")
        }

        try fs.unmount()
        fs.tearDown()
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
}
