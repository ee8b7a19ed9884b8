import BlockIO
import Control
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `--daemon`: the command runs again as a detached child (new session, stdin from /dev/null,
/// stderr to `RUNDIR/NAME.log`, which this parent opens without following a symbolic link), whose
/// stdout is a pipe to this parent. The child prints its NBD URIs, then a readiness line, then
/// closes stdout (`Daemonizer.detachStandardOutput`); the parent relays the URIs and exits 0 — or,
/// without the readiness line (the child exited), waits for the child and prints its error.
/// A re-executed child rather than fork(): a Swift process has threads by then.
enum Daemonizer {
    /// Set in the child's environment.
    static let environmentKey = "BLOCKMIRROR_DETACHED"

    /// True in the detached child.
    static var isDetachedChild: Bool { ProcessInfo.processInfo.environment[environmentKey] == "1" }

    /// The last line the child writes once serving (never shown).
    static let readyLine = "\u{1}blockmirror-daemon-ready"

    /// glibc's POSIX_SPAWN_SETSID (spawn.h, under _GNU_SOURCE, which Swift does not import).
    private static let spawnSetSID: Int32 = 0x80

    /// Starts the detached child with the same arguments minus `--daemon`, waits until it is
    /// serving (or has failed), and returns what the parent prints. `logName`: the log's name in
    /// the runtime directory, without `.log` (default: `name`).
    static func detach(name: String, logName: String? = nil, directory: RuntimeDirectory) throws -> [String] {
        try directory.prepare()
        let logPath = directory.logFile(for: logName ?? name)
        let log = try PrivateFile.open(logPath, role: "log file", flags: O_RDWR | O_APPEND, mode: 0o600)
        defer { log.close() }
        // Only what this child appends to the log is its story (earlier runs wrote above it).
        let logStart = (try? log.status().get()).map { Int($0.st_size) } ?? 0
        var pipeEnds: [Int32] = [0, 0]
        guard pipe(&pipeEnds) == 0 else { throw CLIError("cannot create a pipe: \(String(cString: strerror(errno)))") }
        let (readEnd, writeEnd) = (pipeEnds[0], pipeEnds[1])
        defer { close(readEnd) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 1)
        posix_spawn_file_actions_adddup2(&actions, log.rawValue, 2)
        posix_spawn_file_actions_addclose(&actions, readEnd)
        posix_spawn_file_actions_addclose(&actions, writeEnd)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | spawnSetSID))

        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let arguments = [executable] + CommandLine.arguments.dropFirst().filter { $0 != "--daemon" }
        var environment = ProcessInfo.processInfo.environment
        environment[environmentKey] = "1"
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child = pid_t()
        let spawned = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        close(writeEnd)
        guard spawned == 0 else { throw CLIError("cannot start the daemon \(executable): \(String(cString: strerror(spawned)))") }

        // The child's stdout reaches EOF when it detached it (serving) or exited (failed).
        var output = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(readEnd, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            output.append(contentsOf: buffer[0..<count])
        }
        var lines = String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
        guard lines.last == readyLine else {
            // No readiness line: the child ended before serving. Reap it and show its error.
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
            let error = Self.story(of: log, from: logStart).split(separator: "\n").last { $0.hasPrefix("blockmirror: error: ") }
            throw CLIError(error.map { String($0.dropFirst("blockmirror: error: ".count)) }
                           ?? "the daemon \(status & 0x7f == 0 ? "exited with status \((status >> 8) & 0xff)" : "was killed by signal \(status & 0x7f)") before serving (log: \(logPath))")
        }
        lines.removeLast()
        return lines + ["\(name): daemon started (pid \(child), log \(logPath))"]
    }

    /// What `log` holds from byte `offset` on (read through the descriptor: the path may have been replaced since).
    private static func story(of log: FileDescriptor, from offset: Int) -> String {
        var text = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while case .success(let count) = chunk.withUnsafeMutableBytes({ log.read(into: $0, at: UInt64(offset + text.count)) }), count > 0 {
            text.append(contentsOf: chunk[0..<count])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// In the detached child, once serving: stdout goes to /dev/null, which ends the parent's wait.
    static func detachStandardOutput() {
        guard isDetachedChild else { return }
        print(readyLine)
        fflush(nil)
        let null = open("/dev/null", O_WRONLY)
        if null >= 0 {
            dup2(null, 1)
            close(null)
        }
    }
}
