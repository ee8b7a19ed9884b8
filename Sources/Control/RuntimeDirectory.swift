import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where mirror daemons keep their control sockets: `/run/blockmirror` as root,
/// `$XDG_RUNTIME_DIR/blockmirror` otherwise (`/tmp/blockmirror-UID` without it); `--run-dir` or
/// `BLOCKMIRROR_RUN_DIR` override both.
public struct RuntimeDirectory: Sendable, Equatable {
    public let path: String

    public init(path: String) { self.path = path }

    /// The directory to use, given an explicit `--run-dir` (or nil).
    public static func resolve(_ explicit: String?) -> RuntimeDirectory {
        let environment = ProcessInfo.processInfo.environment
        if let explicit, !explicit.isEmpty { return RuntimeDirectory(path: explicit) }
        if let configured = environment["BLOCKMIRROR_RUN_DIR"], !configured.isEmpty { return RuntimeDirectory(path: configured) }
        if geteuid() == 0 { return RuntimeDirectory(path: "/run/blockmirror") }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return RuntimeDirectory(path: runtime + "/blockmirror") }
        return RuntimeDirectory(path: "/tmp/blockmirror-\(geteuid())")
    }

    /// The control socket of mirror `name`.
    public func controlSocket(for name: String) -> String { "\(path)/\(name).ctl" }

    /// Creates the directory (owner-only) if needed.
    public func create() throws(ControlError) {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw ControlError("cannot create the runtime directory \(path): \((error as NSError).localizedDescription)")
        }
    }

    /// The names of the mirrors with a control socket here (running, or dead with a stale socket).
    public func mirrorNames() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return entries.filter { $0.hasSuffix(".ctl") }.map { String($0.dropLast(4)) }.sorted()
    }

    /// Checks a mirror name: it names a socket file, so letters, digits, `.`, `_`, `-` only.
    public static func validate(name: String) throws(ControlError) {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard !name.isEmpty, name.count <= 64, !name.hasPrefix("."), name.allSatisfy({ allowed.contains($0) }) else {
            throw ControlError("invalid mirror name \"\(name)\": use up to 64 letters, digits, '.', '_' or '-', not starting with '.'")
        }
    }
}

/// A control-socket failure, described for people.
public struct ControlError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    /// The mirror is not running: no control socket, or a stale one of a dead daemon.
    public let notRunning: Bool
    /// The daemon did not answer within the timeout.
    public let timedOut: Bool
    public init(_ description: String, notRunning: Bool = false, timedOut: Bool = false) {
        self.description = description
        self.notRunning = notRunning
        self.timedOut = timedOut
    }
}
