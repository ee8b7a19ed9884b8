import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where mirror daemons keep their control sockets, logs and pid files: `/run/blockmirror` as
/// root, `$XDG_RUNTIME_DIR/blockmirror` otherwise (`${TMPDIR:-/tmp}/blockmirror-UID` without it);
/// `--run-dir` or `BLOCKMIRROR_RUN_DIR` override both.
///
/// Whoever controls this directory controls what the verbs believe (a socket in it answers for a
/// mirror) and where a daemon writes (its log and pid file). So, like tmux and ssh-agent, it is
/// used only if it is a real directory (not a symbolic link) owned by the effective user and not
/// writable by group or others; daemons create it owner-only (0700), and every verb checks it
/// before it trusts a socket in it. A directory readable by others is accepted (an administrator's
/// 0755 `--run-dir`, say): reading reveals mirror names but cannot replace a socket or a file.
public struct RuntimeDirectory: Sendable, Equatable {
    public let path: String

    public init(path: String) { self.path = path }

    /// The directory to use, given an explicit `--run-dir` (or nil).
    public static func resolve(_ explicit: String?) -> RuntimeDirectory {
        let environment = ProcessInfo.processInfo.environment
        if let explicit, !explicit.isEmpty { return RuntimeDirectory(path: explicit) }
        if let configured = environment["BLOCKMIRROR_RUN_DIR"], !configured.isEmpty { return RuntimeDirectory(path: configured) }
        if geteuid() == 0 { return RuntimeDirectory(path: "/run/blockmirror") }
        if let runtime = environment["XDG_RUNTIME_DIR"], runtime.hasPrefix("/") { return RuntimeDirectory(path: runtime + "/blockmirror") }
        let temporary = environment["TMPDIR"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? "/tmp"
        return RuntimeDirectory(path: "\(temporary)/blockmirror-\(geteuid())")
    }

    /// The control socket of mirror `name`.
    public func controlSocket(for name: String) -> String { "\(path)/\(name).ctl" }

    /// The control socket of plan `name` (`blockmirror migrate`): not a mirror's, so `status`
    /// without a name does not list it among them.
    public func planSocket(for name: String) -> String { "\(path)/\(name).plan" }

    /// The log of mirror `name`'s daemon when it runs with `--daemon`.
    public func logFile(for name: String) -> String { "\(path)/\(name).log" }

    /// The pid file of mirror `name`'s daemon.
    public func pidFile(for name: String) -> String { "\(path)/\(name).pid" }

    /// For daemons: creates the directory and any missing parent, each with `mkdir(…, 0700)` (no
    /// chmod, so nothing of another user's is ever changed), then checks every one it made and
    /// the directory itself. A racing creator of another user is caught by the check.
    public func prepare() throws(ControlError) {
        var missing: [String] = []
        var probe = path
        var info = stat()
        while !probe.isEmpty, lstat(probe, &info) != 0 {
            guard errno == ENOENT else { throw ControlError("cannot create the runtime directory \(path): \(probe): \(Errno.current.phrase)") }
            missing.append(probe)
            let parent = (probe as NSString).deletingLastPathComponent
            guard parent != probe else { break }
            probe = parent
        }
        for directory in missing.reversed() {
            guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
                throw ControlError("cannot create the runtime directory \(directory): \(Errno.current.phrase)")
            }
            try Self.check(directory)
        }
        if missing.isEmpty { try Self.check(path) }
    }

    /// For clients: checks the directory if it exists; false if it does not (no mirror runs here).
    public func verifyIfPresent() throws(ControlError) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            if errno == ENOENT { return false }
            throw ControlError("cannot reach the runtime directory \(path): \(Errno.current.phrase)")
        }
        try Self.check(path, info)
        return true
    }

    /// The names of the mirrors with a control socket here (running, or dead with a stale socket);
    /// none if the directory does not exist. A directory that cannot be read is an error, not an
    /// empty list.
    public func mirrorNames() throws(ControlError) -> [String] {
        guard try verifyIfPresent() else { return [] }
        guard let stream = opendir(path) else { throw ControlError("cannot read the runtime directory \(path): \(Errno.current.phrase)") }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".ctl") { names.append(String(name.dropLast(4))) }
        }
        return names.sorted()
    }

    /// Checks a mirror name: it names a socket file, so letters, digits, `.`, `_`, `-` only.
    public static func validate(name: String) throws(ControlError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard !name.isEmpty, name.count <= 64, !name.hasPrefix("."), name.allSatisfy({ allowed.contains($0) }) else {
            throw ControlError("invalid mirror name \"\(UntrustedText.escape(name))\": use up to 64 letters, digits, '.', '_' or '-', not starting with '.'")
        }
    }

    /// Refuses `directory` unless it is a real directory of the effective user that neither group
    /// nor others may write to; the error names the path, what it is, its owner and mode, and
    /// what to do.
    private static func check(_ directory: String, _ known: stat? = nil) throws(ControlError) {
        var info = known ?? stat()
        if known == nil, lstat(directory, &info) != 0 {
            throw ControlError("cannot check the runtime directory \(directory): \(Errno.current.phrase)")
        }
        let kind = info.st_mode & S_IFMT
        let owner = "owner \(UserNames.describe(info.st_uid))"
        let elsewhere = "or pass --run-dir DIR, a directory of your own that group and others cannot write to"
        let (what, why): (String, String)
        if kind == S_IFLNK {
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: directory)).map { " to \(UntrustedText.escape($0))" } ?? ""
            (what, why) = ("a symbolic link\(target), \(owner)", "another user may have planted it; remove it \(elsewhere)")
        } else if kind != S_IFDIR {
            (what, why) = ("not a directory, \(owner)", "remove it \(elsewhere)")
        } else if info.st_uid != geteuid() {
            (what, why) = ("\(owner), mode \(octal(info.st_mode))",
                           "it is not yours (you are uid \(geteuid())), and its owner could replace its sockets and files; "
                           + "run as its owner to reach its mirrors, \(elsewhere)")
        } else if info.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            (what, why) = ("\(owner), mode \(octal(info.st_mode))",
                           "group or others may write to it, so another user could replace its sockets and files; chmod go-w \(directory) \(elsewhere)")
        } else {
            return
        }
        throw ControlError("refusing the runtime directory \(directory) (\(what)): \(why)")
    }

    private static func octal(_ mode: mode_t) -> String {
        let digits = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
