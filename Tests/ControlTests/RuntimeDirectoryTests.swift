import BlockIO
import Control
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The runtime directory is trusted only if it is a real directory of this user that group and
/// others cannot write to; the daemon's files in it are never opened through a symbolic link.
/// (Run as root: the other user is uid 65534, made by chown.)
@Suite struct RuntimeDirectoryTests {
    /// A fresh scratch directory, removed by `remove()`.
    struct Scratch {
        let path: String
        init() throws {
            path = "/var/tmp/bm-rundir-\(UUID().uuidString.prefix(8))"
            guard mkdir(path, 0o755) == 0 else { throw Errno.current }
        }
        func file(_ name: String) -> String { path + "/" + name }
        func remove() { try? FileManager.default.removeItem(atPath: path) }
    }

    private func mode(_ path: String) -> (mode: mode_t, owner: uid_t, isDirectory: Bool) {
        var info = stat()
        lstat(path, &info)
        return (info.st_mode & 0o7777, info.st_uid, info.st_mode & S_IFMT == S_IFDIR)
    }

    /// The error `body` throws, described ("" if it throws none).
    private func refusal(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    @Test func aDaemonCreatesItAndItsMissingParentsOwnerOnly() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let directory = RuntimeDirectory(path: scratch.file("a/b/run"))
        try directory.prepare()
        for path in [scratch.file("a"), scratch.file("a/b"), scratch.file("a/b/run")] {
            #expect(mode(path) == (0o700, geteuid(), true), "\(path)")
        }
        try directory.prepare()
        #expect(try directory.verifyIfPresent())
        #expect(try directory.mirrorNames() == [])
        for name in ["m1.ctl", "m0.ctl", "m0.log", "m0.pid"] { _ = FileManager.default.createFile(atPath: directory.path + "/" + name, contents: nil) }
        #expect(try directory.mirrorNames() == ["m0", "m1"])
        #expect(try RuntimeDirectory(path: scratch.file("absent")).verifyIfPresent() == false)
        #expect(try RuntimeDirectory(path: scratch.file("absent")).mirrorNames() == [])
    }

    @Test func aDirectoryOfAnotherUserIsRefused() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let path = scratch.file("run")
        mkdir(path, 0o700)
        chown(path, 65534, 65534)
        let directory = RuntimeDirectory(path: path)
        let expected = "refusing the runtime directory \(path) (owner uid 65534 (nobody), mode 0700): it is not yours (you are uid \(geteuid())), "
            + "and its owner could replace its sockets and files; run as its owner to reach its mirrors, or pass --run-dir DIR, "
            + "a directory of your own that group and others cannot write to"
        #expect(refusal { try directory.prepare() } == expected)
        #expect(refusal { _ = try directory.verifyIfPresent() } == expected)
        #expect(refusal { _ = try directory.mirrorNames() } == expected)
        #expect(mode(path) == (0o700, 65534, true), "prepare changed a directory that is not its own")
    }

    @Test func aDirectoryGroupOrOthersMayWriteToIsRefused() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        for permissions: mode_t in [0o777, 0o1777, 0o720, 0o702] {
            let path = scratch.file("run-\(String(permissions, radix: 8))")
            mkdir(path, 0o700)
            chmod(path, permissions)
            let text = refusal { try RuntimeDirectory(path: path).prepare() }
            #expect(text.hasPrefix("refusing the runtime directory \(path) (owner uid 0 (root), mode \(String(format: "%04o", permissions))): "
                                   + "group or others may write to it") && text.contains("chmod go-w \(path)"), "\(text)")
            #expect(mode(path).mode == permissions, "prepare changed the mode")
        }
        let readable = scratch.file("readable")
        mkdir(readable, 0o700)
        chmod(readable, 0o755)
        #expect(throws: Never.self) { try RuntimeDirectory(path: readable).prepare() }
    }

    @Test func aSymbolicLinkOrAFileIsRefused() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let target = scratch.file("theirs"), link = scratch.file("run"), file = scratch.file("file")
        mkdir(target, 0o700)
        symlink(target, link)
        _ = FileManager.default.createFile(atPath: file, contents: nil)
        let linked = refusal { try RuntimeDirectory(path: link).prepare() }
        #expect(linked.hasPrefix("refusing the runtime directory \(link) (a symbolic link to \(target), owner uid 0 (root)): another user may have planted it"),
                "\(linked)")
        #expect(refusal { _ = try RuntimeDirectory(path: link).verifyIfPresent() } == linked)
        #expect(refusal { try RuntimeDirectory(path: file).prepare() }.hasPrefix("refusing the runtime directory \(file) (not a directory, owner uid 0 (root)): remove it"))
        // A parent that is a symbolic link is a name on the way, followed (like /var/run -> /run).
        #expect(throws: Never.self) { try RuntimeDirectory(path: link + "/sub").prepare() }
    }

    @Test func privateFilesAreNeverOpenedThroughALink() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let victim = scratch.file("victim"), log = scratch.file("m0.log")
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: victim))
        symlink(victim, log)
        #expect(refusal { _ = try PrivateFile.open(log, role: "log file", flags: O_WRONLY | O_APPEND, mode: 0o600) }
                == "refusing the log file \(log): it is a symbolic link (to \(victim)); remove it")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious\n")

        let fifo = scratch.file("m0.pid")
        mkfifo(fifo, 0o600)
        #expect(refusal { _ = try PrivateFile.open(fifo, role: "pid file", flags: O_WRONLY | O_TRUNC, mode: 0o644) }
                == "refusing the pid file \(fifo): it is not a regular file; remove it")
        let foreign = scratch.file("other.log")
        _ = FileManager.default.createFile(atPath: foreign, contents: nil)
        chown(foreign, 65534, 65534)
        #expect(refusal { _ = try PrivateFile.open(foreign, role: "log file", flags: O_WRONLY | O_APPEND, mode: 0o600) }
                == "refusing the log file \(foreign): it belongs to uid 65534 (nobody); remove it")

        let fresh = scratch.file("m1.log")
        let fd = try PrivateFile.open(fresh, role: "log file", flags: O_WRONLY | O_APPEND, mode: 0o600)
        fd.close()
        #expect(mode(fresh).mode == 0o600)
    }
}
