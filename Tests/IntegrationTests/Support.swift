import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Shared helpers for the integration tests: temp dirs, external tools, the `blockmirror serve`
// process, byte-level file helpers. Everything blocks (no fixed sleeps: conditions are polled
// with generous deadlines) and every failure message says what was run and what it printed.

/// A failure the helpers report by throwing; Swift Testing records it with this description.
struct IntegrationFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Polls `condition` every few milliseconds until it holds or `timeout` seconds have passed.
@discardableResult
func waitUntil(timeout: TimeInterval = 60, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if try condition() { return true }
        if Date() >= deadline { return false }
        usleep(20_000)
    }
}

// MARK: - Temporary directory

/// A fresh directory under /var/tmp (a real disk filesystem, so the server can use O_DIRECT).
/// Tests `defer { dir.remove() }` right after creating it.
final class TempDir {
    let url: URL
    private var counter = 0

    init(_ label: String = #function) throws {
        let safe = String(label.prefix(24).map { $0.isLetter || $0.isNumber ? $0 : "-" })
        let base = URL(fileURLWithPath: "/var/tmp", isDirectory: true)
        url = base.appendingPathComponent("bm-it-\(safe)-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    var path: String { url.path }

    func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    /// A unique file-name prefix for one captured process run ("3-qemu-io").
    func nextLogPrefix(_ tool: String) -> String {
        counter += 1
        return file("\(counter)-\((tool as NSString).lastPathComponent)")
    }

    /// Deletes the directory, unless something is still mounted inside it (never recurse into a
    /// mount a failed test left behind).
    func remove() {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        guard !mounts.contains(" \(path)/") else { return }
        try? FileManager.default.removeItem(at: url)
    }
}

// MARK: - External tools

/// Which apt package provides each tool the tests run (the README's test command installs them).
private let packageForTool: [String: String] = [
    "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "nbdsh": "libnbd-bin", "nbdfuse": "nbdfuse",
    "qemu-io": "qemu-utils", "qemu-img": "qemu-utils", "fio": "fio", "fusermount3": "fuse3",
    "losetup": "util-linux", "mount": "mount", "umount": "mount", "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs", "debugfs": "e2fsprogs", "md5sum": "coreutils", "systemd-analyze": "systemd",
]

enum Tools {
    /// The absolute path of `name` on PATH (plus the sbin directories), or nil.
    static func find(_ name: String) -> String? {
        if name.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        for dir in dirs where !dir.isEmpty {
            let candidate = (dir as NSString).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Throws (a test failure, never a skip) naming every tool that is not installed.
    static func require(_ names: String...) throws {
        let missing = names.filter { find($0) == nil }
        guard missing.isEmpty else {
            let hints = missing.map { "\($0) (apt-get install \(packageForTool[$0] ?? $0))" }
            throw IntegrationFailure("missing tool(s): \(hints.joined(separator: ", ")); tools/setup.sh installs them")
        }
    }
}

// MARK: - Running commands

/// What a finished command did.
struct CommandResult: CustomStringConvertible {
    let command: [String]
    let status: Int32
    let exited: Bool  // false: killed by a signal (status is the signal number)
    let stdout: String
    let stderr: String

    var succeeded: Bool { exited && status == 0 }
    var output: String { stdout + stderr }

    var description: String {
        let how = exited ? "exit status \(status)" : "killed by signal \(status)"
        return "$ \(command.joined(separator: " "))\n\(how)\n--- stdout ---\n\(stdout.suffix(6000))\n--- stderr ---\n\(stderr.suffix(6000))"
    }
}

/// A started process whose stdout and stderr go to files.
///
/// Spawned with posix_spawn rather than Foundation's `Process`: Process hands the child the
/// spawning thread's signal mask, and test code runs on threads that block SIGTERM and SIGINT,
/// which would hide how `blockmirror` reacts to the signals a shell-started one gets.
/// Here the child starts with an empty mask, default dispositions and no inherited descriptors.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let arguments: [String]
    let stdoutPath: String
    let stderrPath: String
    private let lock = NSLock()
    private var rawStatus: Int32?  // the waitpid status once reaped (under lock)
    private let reaped = DispatchSemaphore(value: 0)

    /// Starts `arguments[0]` (looked up on PATH) with stdout and stderr going to files in `dir`,
    /// `environment` added to this process's.
    init(_ arguments: [String], in dir: TempDir, environment extra: [String: String] = [:]) throws {
        guard let executable = Tools.find(arguments[0]) else {
            throw IntegrationFailure("missing tool: \(arguments[0]) (apt-get install \(packageForTool[arguments[0]] ?? arguments[0]))")
        }
        self.arguments = arguments
        let prefix = dir.nextLogPrefix(arguments[0])
        stdoutPath = prefix + ".stdout"
        stderrPath = prefix + ".stderr"

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let closeFrom = closeFromAction { _ = closeFrom(&actions, 3) }
        // Tools that drop files in their working directory (fio's verify state) drop them in `dir`.
        guard let changeDirectory = changeDirectoryAction, changeDirectory(&actions, dir.path) == 0 else {
            throw IntegrationFailure("posix_spawn_file_actions_addchdir_np is missing (glibc 2.29+ needed)")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        sigdelset(&all, SIGKILL)
        sigdelset(&all, SIGSTOP)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
        environment["LC_ALL"] = "C"
        let argv = ([executable] + arguments.dropFirst()).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var spawned = pid_t()
        let rc = posix_spawn(&spawned, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw IntegrationFailure("posix_spawn \(executable): \(String(cString: strerror(rc)))") }
        pid = spawned

        // Wait for the exit without reaping, then reap under the lock: `send` never signals a reused pid.
        Thread.detachNewThread { [self] in
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
            lock.lock()
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            rawStatus = status
            lock.unlock()
            reaped.signal()
        }
    }

    private var status: Int32? {
        lock.lock()
        defer { lock.unlock() }
        return rawStatus
    }

    var isRunning: Bool { status == nil }
    /// Once exited: true for a normal exit (then `exitCode` is its status), false if killed by a signal.
    var exitedNormally: Bool { status.map { $0 & 0x7f == 0 } ?? false }
    /// The exit status, or the signal number when killed by a signal (-1 while running).
    var exitCode: Int32 { status.map { $0 & 0x7f == 0 ? ($0 >> 8) & 0xff : $0 & 0x7f } ?? -1 }
    var stdout: String { readText(stdoutPath) }
    var stderr: String { readText(stderrPath) }

    /// Waits up to `timeout` seconds for the exit; true once it has exited.
    func waitForExit(timeout: TimeInterval) -> Bool {
        if isRunning, reaped.wait(timeout: .now() + timeout) == .success { reaped.signal() }
        return !isRunning
    }

    func send(_ signal: Int32) {
        lock.lock()
        defer { lock.unlock() }
        if rawStatus == nil { kill(pid, signal) }
    }

    /// SIGKILL unless it already exited, then wait for the reaping.
    func killAndWait() {
        send(SIGKILL)
        _ = waitForExit(timeout: .infinity)
    }
}

// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+) and _addchdir_np (2.29+), which Swift
// does not import (they are GNU extensions): looked up at run time.
private let closeFromAction = glibcFunction("posix_spawn_file_actions_addclosefrom_np",
    as: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
private let changeDirectoryAction = glibcFunction("posix_spawn_file_actions_addchdir_np",
    as: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32).self)

private func glibcFunction<F>(_ name: String, as type: F.Type) -> F? {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
    return unsafeBitCast(symbol, to: type)
}

func readText(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: data, as: UTF8.self)
}

/// Runs a command to completion (killing it after `timeout` seconds) and returns what it did.
@discardableResult
func run(_ arguments: String..., in dir: TempDir, timeout: TimeInterval = 240) throws -> CommandResult {
    try run(arguments, in: dir, timeout: timeout)
}

@discardableResult
func run(_ arguments: [String], in dir: TempDir, timeout: TimeInterval = 240) throws -> CommandResult {
    let child = try ChildProcess(arguments, in: dir)
    guard child.waitForExit(timeout: timeout) else {
        child.killAndWait()
        throw IntegrationFailure("""
            timed out after \(Int(timeout)) s: \(arguments.joined(separator: " "))
            --- stdout ---\n\(child.stdout.suffix(4000))
            --- stderr ---\n\(child.stderr.suffix(4000))
            """)
    }
    return CommandResult(command: arguments, status: child.exitCode, exited: child.exitedNormally,
                         stdout: child.stdout, stderr: child.stderr)
}

// MARK: - The program under test

enum BlockMirrorBinary {
    /// `$BLOCKMIRROR_BIN`, else the `blockmirror` executable next to (or above) the test bundle.
    static func path() throws -> String {
        if let explicit = ProcessInfo.processInfo.environment["BLOCKMIRROR_BIN"], !explicit.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: explicit) else {
                throw IntegrationFailure("BLOCKMIRROR_BIN=\(explicit) is not an executable file")
            }
            return explicit
        }
        var starts = [Bundle.main.bundleURL, URL(fileURLWithPath: CommandLine.arguments[0])]
        if let executable = Bundle.main.executableURL { starts.append(executable) }
        for start in starts {
            var dir = start.resolvingSymlinksInPath().standardizedFileURL
            for _ in 0..<6 {
                let candidate = dir.appendingPathComponent("blockmirror").path
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDirectory), !isDirectory.boolValue,
                   FileManager.default.isExecutableFile(atPath: candidate) {
                    return candidate
                }
                dir = dir.deletingLastPathComponent()
            }
        }
        throw IntegrationFailure("cannot find the blockmirror executable near \(CommandLine.arguments[0]); set BLOCKMIRROR_BIN")
    }
}

/// A running `blockmirror serve IMAGE --listen unix:DIR/NAME.sock`. Started, it has printed its URI.
/// Call `stop()` at the end of a test; deinit SIGKILLs a server a failed test left running.
final class ServerProcess {
    let child: ChildProcess
    let uri: String
    let socketPath: String
    private var stopped = false

    /// Starts `blockmirror serve IMAGE` and waits (up to 60 s) for the one stdout line with the NBD URI.
    convenience init(image: String, in dir: TempDir, socketName: String = "nbd.sock", name: String? = nil,
                     readonly: Bool = false, extraArguments: [String] = []) throws {
        var arguments = ["serve", image]
        if let name { arguments += ["--name", name] }
        if readonly { arguments.append("--readonly") }
        try self.init(arguments + extraArguments, in: dir, socketName: socketName)
    }

    /// Starts `blockmirror VERB…` listening on `dir/socketName` (with `environment` added) and
    /// waits (up to 60 s) for the URI line.
    init(_ verbArguments: [String], in dir: TempDir, socketName: String = "nbd.sock", environment: [String: String] = [:]) throws {
        let binary = try BlockMirrorBinary.path()
        socketPath = dir.file(socketName)
        let arguments = [binary] + verbArguments + ["--listen", "unix:\(socketPath)", "--log-level", "debug"]
        let child = try ChildProcess(arguments, in: dir, environment: environment)
        self.child = child
        var line: String?
        waitUntil(timeout: 60) {
            let text = child.stdout
            if let newline = text.firstIndex(of: "\n") { line = String(text[..<newline]); return true }
            return !child.isRunning
        }
        guard let line else {
            let running = child.isRunning
            child.killAndWait()
            stopped = true
            throw IntegrationFailure("""
                blockmirror printed no URI line \(running ? "within 60 s" : "and exited with status \(child.exitCode)")
                $ \(arguments.joined(separator: " "))
                --- stdout ---\n\(child.stdout)
                --- stderr ---\n\(child.stderr.suffix(6000))
                """)
        }
        uri = line
    }

    var stdoutPath: String { child.stdoutPath }

    /// The server's log so far (its stderr), for failure messages.
    var log: String { "--- blockmirror stderr ---\n" + child.stderr.suffix(8000) }

    var isRunning: Bool { child.isRunning }

    /// Sends SIGTERM and waits (up to 60 s) for the exit: records a failure unless it is status 0.
    func stop(sourceLocation: SourceLocation = #_sourceLocation) {
        guard !stopped else { return }
        stopped = true
        child.send(SIGTERM)
        guard child.waitForExit(timeout: 60) else {
            child.killAndWait()
            Issue.record("blockmirror did not exit within 60 s of SIGTERM\n\(log)", sourceLocation: sourceLocation)
            return
        }
        let normal = child.exitedNormally
        #expect(normal && child.exitCode == 0,
                "blockmirror after SIGTERM: \(normal ? "exit status" : "killed by signal") \(child.exitCode)\n\(log)",
                sourceLocation: sourceLocation)
    }

    /// Waits (up to 120 s) for an exit the test caused otherwise (a `stop` verb): records a
    /// failure unless it is status 0.
    func waitForCleanExit(sourceLocation: SourceLocation = #_sourceLocation) {
        guard !stopped else { return }
        stopped = true
        guard child.waitForExit(timeout: 120) else {
            child.killAndWait()
            Issue.record("blockmirror did not exit within 120 s\n\(log)", sourceLocation: sourceLocation)
            return
        }
        #expect(child.exitedNormally && child.exitCode == 0, "blockmirror exit status \(child.exitCode)\n\(log)",
                sourceLocation: sourceLocation)
    }

    deinit { child.killAndWait() }
}

// MARK: - Files

/// Creates (or truncates) a sparse file of `size` bytes.
func makeSparseFile(_ path: String, size: Int) throws {
    guard FileManager.default.createFile(atPath: path, contents: nil) else {
        throw IntegrationFailure("cannot create \(path)")
    }
    guard truncate(path, off_t(size)) == 0 else {
        throw IntegrationFailure("truncate \(path) to \(size): \(String(cString: strerror(errno)))")
    }
}

/// `count` bytes from /dev/urandom.
func randomBytes(_ count: Int) throws -> Data {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
    defer { try? handle.close() }
    var data = Data(capacity: count)
    while data.count < count {
        guard let chunk = try handle.read(upToCount: min(1 << 20, count - data.count)), !chunk.isEmpty else {
            throw IntegrationFailure("short read from /dev/urandom")
        }
        data.append(chunk)
    }
    return data
}

/// Writes `data` at `offset` into an existing file without truncating it (dd conv=notrunc).
func writeInPlace(_ path: String, offset: UInt64, _ data: Data) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    try handle.write(contentsOf: data)
    try handle.synchronize()
}

/// Fills a new file of `size` bytes with random data.
func makeRandomFile(_ path: String, size: Int) throws {
    try makeSparseFile(path, size: 0)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    var written = 0
    while written < size {
        let chunk = try randomBytes(min(4 << 20, size - written))
        try handle.write(contentsOf: chunk)
        written += chunk.count
    }
}

/// `length` bytes of `path` from `offset`.
func readBytes(_ path: String, offset: UInt64 = 0, length: Int) throws -> Data {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    return try handle.read(upToCount: length) ?? Data()
}

/// nil if both files have the same size and bytes, else a description of the first difference.
func firstDifference(_ a: String, _ b: String) throws -> String? {
    let ha = try FileHandle(forReadingFrom: URL(fileURLWithPath: a))
    let hb = try FileHandle(forReadingFrom: URL(fileURLWithPath: b))
    defer { try? ha.close(); try? hb.close() }
    var offset = 0
    while true {
        let ca = try ha.read(upToCount: 4 << 20) ?? Data()
        let cb = try hb.read(upToCount: 4 << 20) ?? Data()
        if ca != cb {
            let n = min(ca.count, cb.count)
            let i = (0..<n).first { ca[ca.startIndex + $0] != cb[cb.startIndex + $0] } ?? n
            return "\(a) and \(b) differ at byte \(offset + i) (chunk sizes \(ca.count) / \(cb.count))"
        }
        if ca.isEmpty { return nil }
        offset += ca.count
    }
}

/// The size of a file in bytes.
func fileSize(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.size] as? NSNumber)?.intValue ?? -1
}

/// Whether `path` is a mount point right now (listed in /proc/mounts).
func isMountPoint(_ path: String) -> Bool {
    let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    return mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
}

/// The index of the first differing byte (or the shorter length), for messages.
func firstMismatch(_ a: Data, _ b: Data) -> Int {
    let n = min(a.count, b.count)
    return (0..<n).first { a[a.startIndex + $0] != b[b.startIndex + $0] } ?? n
}

// MARK: - Python with libnbd

/// Debian's python3 with libnbd's bindings (`import nbd`, package python3-libnbd): the NBD client
/// of the tests and tools written in Python. Its absolute path, because a python3 earlier on PATH
/// (pyenv, a venv) does not see Debian's packages.
enum PythonNBD {
    static let interpreter = "/usr/bin/python3"

    /// Throws (a failure, never a skip) unless the interpreter can `import nbd`.
    static func require(in dir: TempDir) throws {
        try Tools.require(interpreter)
        let probe = try run(interpreter, "-c", "import nbd", in: dir)
        guard probe.succeeded else {
            throw IntegrationFailure("\(interpreter) cannot import nbd (apt-get install python3-libnbd; tools/setup.sh installs it)\n\(probe)")
        }
    }
}
