import Foundation
import Testing

/// A filesystem on an NBD export through the real kernel path here: nbdfuse exposes the export as
/// DIR/fuse/nbd, a loop device (buffered) turns that into a block device, and it is mounted.
/// `tearDown()` (or deinit) undoes whatever is still set up, in reverse order.
final class NBDFilesystem {
    let dir: TempDir
    let fuseDir: String
    let mountDir: String
    let fuse: ChildProcess
    private(set) var loop: String?

    /// Starts nbdfuse on `uri` and attaches a loop device to its file.
    init(uri: String, in dir: TempDir, log: @autoclosure () -> String = "") throws {
        try Tools.require("nbdfuse", "fusermount3", "losetup", "mount", "umount")
        self.dir = dir
        fuseDir = dir.file("fuse")
        mountDir = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: fuseDir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: mountDir, withIntermediateDirectories: true)
        // nbdfuse runs in the foreground; DIR/nbd appears once it is connected and mounted.
        fuse = try ChildProcess(["nbdfuse", fuseDir + "/", uri], in: dir)
        let appeared = waitUntil(timeout: 60) { FileManager.default.fileExists(atPath: nbdFile) || !fuse.isRunning }
        guard appeared && fuse.isRunning else {
            tearDown()
            throw IntegrationFailure("nbdfuse did not create \(nbdFile)\n--- nbdfuse stderr ---\n\(fuse.stderr)\n\(log())")
        }
        let losetup = try run("losetup", "--find", "--show", "--direct-io=off", nbdFile, in: dir)
        guard losetup.succeeded else {
            tearDown()
            throw IntegrationFailure("\(losetup)")
        }
        loop = losetup.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    var nbdFile: String { fuseDir + "/nbd" }

    /// Mounts the loop device on DIR/mnt.
    func mount() throws {
        let result = try run("mount", loop!, mountDir, in: dir)
        guard result.succeeded else { throw IntegrationFailure("mount \(loop!)\n\(result)") }
    }

    /// Unmounts DIR/mnt (writing back everything the page cache holds).
    func unmount() throws {
        let result = try run("umount", mountDir, in: dir)
        guard result.succeeded else { throw IntegrationFailure("umount \(mountDir)\n\(result)") }
    }

    /// Unmounts if mounted, detaches the loop device, unmounts nbdfuse and waits for it to exit.
    func tearDown() {
        if isMountPoint(mountDir) { _ = try? run("umount", mountDir, in: dir) }
        if let loop {
            let detach = try? run("losetup", "-d", loop, in: dir)
            if detach?.succeeded != true { Issue.record("losetup -d \(loop) failed\n\(detach.map { "\($0)" } ?? "")") }
            self.loop = nil
        }
        if isMountPoint(fuseDir) {
            // `fusermount3 -u`, retried while the loop device is still letting go of the file (EBUSY).
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
        if !fuse.waitForExit(timeout: 60) {
            Issue.record("nbdfuse still running 60 s after fusermount3 -u\n\(fuse.stderr)")
            fuse.killAndWait()
        }
    }

    deinit { if loop != nil || fuse.isRunning { tearDown() } }
}

/// md5sum of files, one "HASH  PATH" line each, paths relative to `directory`.
func md5sums(_ names: [String], in directory: String, dir: TempDir) throws -> String {
    let result = try run(["md5sum"] + names.map { directory + "/" + $0 }, in: dir)
    guard result.succeeded else { throw IntegrationFailure("\(result)") }
    return result.stdout.replacingOccurrences(of: directory + "/", with: "")
}
