import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The runtime directory of a user who is not root, when another user got there first: a shared
/// `/tmp/blockmirror-UID` created by someone else (mode 0777, or a symbolic link), a control socket
/// served by another user, planted log and pid symlinks, a directory the user cannot read, a
/// socket the daemon cannot bind. The victim is `nobody` (setpriv); the other user is root, this test.
@Suite(.serialized) struct RunDirectoryTests {
    /// A sandbox for `nobody`: `home` is theirs (mode 0700), `tmp` stands in for /tmp (root's, 1777),
    /// and `victim` is one of their files an attacker would like the daemon to write to.
    struct Sandbox {
        static let uid: uid_t = 65534
        let dir: TempDir
        let home: String, tmp: String, victim: String, old: String
        /// Where the binary puts nobody's runtime directory when XDG_RUNTIME_DIR is unset.
        var fallbackRunDir: String { tmp + "/blockmirror-\(Self.uid)" }

        init(_ label: String = #function) throws {
            dir = try TempDir(label)
            home = dir.file("home"); tmp = dir.file("tmp"); victim = home + "/victim.txt"; old = home + "/old.img"
            try makeDirectory(home, mode: 0o700, owner: Self.uid)
            try makeDirectory(tmp, mode: 0o1777, owner: 0)
            try Data("precious\n".utf8).write(to: URL(fileURLWithPath: victim))
            try makeRandomFile(old, size: 4 << 20)
            for path in [victim, old] { chown(path, Self.uid, Self.uid) }
        }

        /// Runs `blockmirror ARGS…` as nobody, with TMPDIR=tmp and neither XDG_RUNTIME_DIR nor
        /// BLOCKMIRROR_RUN_DIR unless `environment` sets them.
        func cli(_ arguments: [String], environment: [String] = []) throws -> CommandResult {
            try run(["setpriv", "--reuid=\(Self.uid)", "--regid=\(Self.uid)", "--clear-groups",
                     "env", "-u", "XDG_RUNTIME_DIR", "-u", "BLOCKMIRROR_RUN_DIR", "TMPDIR=\(tmp)"] + environment
                    + [try BlockMirrorBinary.path()] + arguments, in: dir)
        }

        /// `build m0 --source OLD --target missing --listen unix:HOME/nbd.sock EXTRA…` as nobody.
        func build(_ extra: [String] = [], environment: [String] = []) throws -> CommandResult {
            try cli(["build", "m0", "--source", old, "--target", "missing", "--listen", "unix:\(home)/nbd.sock"] + extra,
                    environment: environment)
        }

        var victimText: String { readText(victim) }

        /// SIGKILLs a daemon of nobody's a failed test left running.
        func killLeftovers(in runDirs: [String]) {
            for runDir in runDirs { killDaemonLeftBehind(in: runDir) }
        }

        func remove() { dir.remove() }
    }

    /// Another user made nobody's /tmp/blockmirror-UID first, mode 0777, with a control socket that
    /// answers "in sync" and a log symlink to one of nobody's files: every verb refuses the
    /// directory, the fake daemon is never asked, the file is untouched.
    @Test func aSharedDirectoryMadeByAnotherUserIsRefused() throws {
        try Tools.require("setpriv")
        let box = try Sandbox()
        defer { box.killLeftovers(in: [box.fallbackRunDir]); box.remove() }
        try makeDirectory(box.fallbackRunDir, mode: 0o777, owner: 0)
        let impostor = try FakeControlDaemon(path: box.fallbackRunDir + "/m0.ctl")
        defer { impostor.close() }
        chmod(impostor.path, 0o777)
        try #require(symlink(box.victim, box.fallbackRunDir + "/m0.log") == 0)

        let refusal = "blockmirror: error: refusing the runtime directory \(box.fallbackRunDir) (owner uid 0 (root), mode 0777): "
        for verb in [["status", "m0"], ["stop", "m0"], ["detail", "m0"], ["status"], ["list"]] {
            let result = try box.cli(verb)
            #expect(result.status == 1 && result.stderr.hasPrefix(refusal) && result.stderr.split(separator: "\n").count == 1
                    && !result.stdout.contains("in sync"), "\(result)")
        }
        for extra in [["--daemon"], []] {
            let build = try box.build(extra)
            #expect(build.status == 1 && build.stderr.hasPrefix(refusal) && build.stderr.contains("--run-dir"), "\(build)")
        }
        #expect(impostor.connections == 0, "a verb talked to the other user's socket")
        #expect(box.victimText == "precious\n", "the daemon wrote through the planted log symlink")
    }

    /// nobody's /tmp/blockmirror-UID is a symbolic link to a directory another user owns.
    @Test func aSymlinkedDirectoryIsRefused() throws {
        try Tools.require("setpriv")
        let box = try Sandbox()
        defer { box.killLeftovers(in: [box.fallbackRunDir, box.dir.file("elsewhere")]); box.remove() }
        try makeDirectory(box.dir.file("elsewhere"), mode: 0o777, owner: 0)
        try #require(symlink(box.dir.file("elsewhere"), box.fallbackRunDir) == 0)
        let refusal = "blockmirror: error: refusing the runtime directory \(box.fallbackRunDir) (a symbolic link to \(box.dir.file("elsewhere")), owner uid 0 (root)): "
        for result in [try box.build(["--daemon"]), try box.build(), try box.cli(["status", "m0"]), try box.cli(["stop", "m0"])] {
            #expect(result.status == 1 && result.stderr.hasPrefix(refusal), "\(result)")
        }
        #expect((try? FileManager.default.contentsOfDirectory(atPath: box.dir.file("elsewhere"))) == [])
    }

    /// Without a planted directory: nobody's daemon makes $TMPDIR/blockmirror-UID itself (0700,
    /// theirs) and every verb works; with XDG_RUNTIME_DIR set, that directory is used instead.
    @Test func theUsersOwnDirectoryIsCreatedPrivateAndXDGIsPreferred() throws {
        try Tools.require("setpriv")
        let box = try Sandbox()
        let xdg = box.home + "/xdg"
        defer { box.killLeftovers(in: [box.fallbackRunDir, xdg + "/blockmirror"]); box.remove() }
        for (runDir, environment) in [(box.fallbackRunDir, [String]()), (xdg + "/blockmirror", ["XDG_RUNTIME_DIR=\(xdg)"])] {
            let started = try box.build(["--daemon"], environment: environment)
            try #require(started.succeeded, "\(started)")
            var info = stat()
            #expect(lstat(runDir, &info) == 0 && info.st_uid == Sandbox.uid && info.st_mode & 0o7777 == 0o700 && info.st_mode & S_IFMT == S_IFDIR,
                    "\(runDir): mode \(String(info.st_mode, radix: 8)), owner \(info.st_uid)")
            let status = try box.cli(["status", "m0"], environment: environment)
            #expect(status.succeeded && status.stdout.contains("m0 : degraded"), "\(status)")
            let stop = try box.cli(["stop", "m0"], environment: environment)
            #expect(stop.succeeded && stop.stdout.contains("degraded"), "\(stop)")
        }
    }

    /// A control socket in the user's own directory that another user serves is not believed
    /// (the daemon at the other end is checked with SO_PEERCRED).
    @Test func aDaemonOfAnotherUserIsNotBelieved() throws {
        try Tools.require("setpriv")
        let box = try Sandbox()
        let runDir = box.home + "/run"
        defer { box.remove() }
        try makeDirectory(runDir, mode: 0o700, owner: Sandbox.uid)
        let impostor = try FakeControlDaemon(path: runDir + "/m0.ctl")
        defer { impostor.close() }
        chmod(impostor.path, 0o777)
        for verb in ["status", "stop"] {
            let result = try box.cli([verb, "m0", "--run-dir", runDir])
            #expect(result.status == 1 && result.stderr == "blockmirror: error: refusing the control socket \(runDir)/m0.ctl: "
                    + "it is served by uid 0 (root), not by you (uid \(Sandbox.uid)); another user may have put it there\n"
                    && !result.stdout.contains("in sync"), "\(result)")
        }
    }

    /// The daemon itself answers only its own user (and root): a connection of another user, who
    /// could reach the socket through a directory and socket made accessible, is closed unanswered.
    @Test func theDaemonRefusesConnectionsOfAnotherUser() throws {
        try Tools.require("setpriv", "/usr/bin/python3")
        let box = try Sandbox()
        defer { box.remove() }
        try makeRandomFile(box.dir.file("old.img"), size: 4 << 20)
        let mirror = try MirrorDaemon(source: box.dir.file("old.img"), target: "missing", in: box.dir)
        chmod(mirror.runDir, 0o755)
        chmod(mirror.runDir + "/m0.ctl", 0o666)
        let script = """
            import socket
            s = socket.socket(socket.AF_UNIX)
            s.connect('\(mirror.runDir)/m0.ctl')
            try:
                s.sendall(b'{"verb":"stop"}\\n')
                print(repr(s.recv(4096)) or 'closed')
            except (BrokenPipeError, ConnectionResetError):
                print('closed')
            """
        let intruder = try run(["setpriv", "--reuid=\(Sandbox.uid)", "--regid=\(Sandbox.uid)", "--clear-groups", "/usr/bin/python3", "-c", script],
                               in: box.dir)
        #expect(intruder.stdout == "b''\n" || intruder.stdout == "closed\n", "\(intruder)")
        #expect(try mirror.server.isRunning && mirror.status().state == .degraded, "another user's stop was obeyed\n\(mirror.log)")
        #expect(mirror.log.contains("refused a control connection of uid 65534 (nobody)"), "\(mirror.log)")
        _ = try mirror.stop()
    }

    /// Log and pid files are opened without following a symbolic link, even in a directory of one's own.
    @Test func plantedLogAndPidSymlinksAreRefused() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), runDir = dir.file("run"), victim = dir.file("victim.txt")
        try makeRandomFile(old, size: 4 << 20)
        try makeDirectory(runDir, mode: 0o700, owner: 0)
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: victim))
        defer { killDaemonLeftBehind(in: runDir) }
        let build = [try BlockMirrorBinary.path(), "build", "m0", "--source", old, "--target", "missing", "--run-dir", runDir,
                     "--listen", "unix:\(dir.file("nbd.sock"))"]

        try #require(symlink(victim, runDir + "/m0.log") == 0)
        let log = try run(build + ["--daemon"], in: dir)
        #expect(log.status == 1 && log.stderr == "blockmirror: error: refusing the log file \(runDir)/m0.log: it is a symbolic link "
                + "(to \(victim)); remove it\n", "\(log)")
        unlink(runDir + "/m0.log")

        try #require(symlink(victim, runDir + "/m0.pid") == 0)
        let pid = try run(build, in: dir)
        #expect(pid.status == 1 && pid.stderr == "blockmirror: error: refusing the pid file \(runDir)/m0.pid: it is a symbolic link "
                + "(to \(victim)); remove it\n", "\(pid)")
        #expect(readText(victim) == "precious\n")
        #expect(!FileManager.default.fileExists(atPath: runDir + "/m0.ctl"), "the refused daemon left its control socket")
    }

    /// `list` and `status` without a name, on a directory the user cannot read: an error, exit 1.
    @Test func anUnreadableDirectoryIsAnErrorNotAnEmptyList() throws {
        try Tools.require("setpriv")
        let box = try Sandbox()
        defer { box.remove() }
        let unreadable = box.home + "/run", rootOwned = box.dir.file("root-run")
        try makeDirectory(unreadable, mode: 0o300, owner: Sandbox.uid)
        try makeDirectory(rootOwned, mode: 0o755, owner: 0)
        for verb in ["list", "status"] {
            let result = try box.cli([verb, "--run-dir", unreadable])
            #expect(result.status == 1 && result.stderr == "blockmirror: error: cannot read the runtime directory \(unreadable): permission denied\n",
                    "\(result)")
            let foreign = try box.cli([verb, "--run-dir", rootOwned])
            #expect(foreign.status == 1 && foreign.stderr.hasPrefix("blockmirror: error: refusing the runtime directory \(rootOwned) (owner uid 0 (root), mode 0755): "),
                    "\(foreign)")
        }
    }

    /// A control socket that cannot be bound: "cannot listen on PATH: permission denied".
    @Test func aControlSocketThatCannotBeBoundSaysWhereAndWhy() throws {
        try Tools.require("setpriv")
        let box = try Sandbox()
        defer { box.remove() }
        let readOnly = box.home + "/run"
        try makeDirectory(readOnly, mode: 0o500, owner: Sandbox.uid)
        let result = try box.build(["--run-dir", readOnly])
        #expect(result.status == 1 && result.stderr == "blockmirror: error: cannot listen on \(readOnly)/m0.ctl: permission denied\n", "\(result)")
    }
}

/// SIGKILLs the daemon of mirror `name` that a failed test left running in `runDir` (its pid file names it).
func killDaemonLeftBehind(in runDir: String, name: String = "m0") {
    if let pid = pid_t(readText(runDir + "/\(name).pid").trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGKILL) }
}

/// Creates `path` with exactly `mode` (not masked) owned by `owner` (and the same gid).
func makeDirectory(_ path: String, mode: mode_t, owner: uid_t) throws {
    guard mkdir(path, 0o700) == 0, chown(path, owner, owner) == 0, chmod(path, mode) == 0 else {
        throw IntegrationFailure("cannot make the directory \(path): \(String(cString: strerror(errno)))")
    }
}

/// Another user's control socket: it accepts connections and answers every line with a mirror
/// "in sync", which a verb that believes it prints.
final class FakeControlDaemon: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var accepted = 0
    static let answer = #"{"message":"m0: in sync: a complete copy (fake)","name":"m0","ok":true,"status":{"bytesCopied":0,"foregroundInFlight":0,"#
        + #""regionSize":1048576,"regionsDirty":0,"regionsTotal":4,"size":4194304,"source":"/fake/old","speedBytesPerSecond":0,"#
        + #""speedLimits":{"minimum":1000},"state":"in-sync","target":"/fake/new"}}"# + "\n"

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else {
            throw IntegrationFailure("fake control socket \(path): \(String(cString: strerror(errno)))")
        }
        Thread.detachNewThread { [self] in serve() }
    }

    /// Connections accepted so far.
    var connections: Int { lock.withLock { accepted } }

    private func serve() {
        while true {
            let client = accept(fd, nil, nil)
            guard client >= 0 else { return }
            lock.withLock { accepted += 1 }
            var byte: UInt8 = 0
            while recv(client, &byte, 1, 0) == 1 {
                if byte == UInt8(ascii: "\n") { _ = Self.answer.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }
            }
            Glibc.close(client)
        }
    }

    /// Stops accepting (the thread's accept fails) and removes the socket.
    func close() {
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
        unlink(path)
    }
}
