import Foundation
@testable import NBD

/// An nbdkit server on a Unix socket in `directory`, for tests of the client side against a real
/// remote: `nbdkit -f -U SOCKET [--filter=log logfile=LOG] ARGS…`, killed by `stop()`.
final class Nbdkit {
    let socket: String
    /// nbdkit's log filter's file (one line per request), if asked for.
    let log: String?
    private let process = Process()

    /// Starts nbdkit with `arguments` (filters, plugin and its parameters) and waits for its
    /// socket. With `logRequests`, the log filter goes first, so the log shows what the client sent.
    /// Without `waitForSocket`, it listens where `arguments` say (TCP) and is not waited for.
    init(directory: String, _ arguments: [String], logRequests: Bool = false, name: String = "nbdkit",
         waitForSocket: Bool = true) async throws {
        socket = "\(directory)/\(name).sock"
        log = logRequests ? "\(directory)/\(name).log" : nil
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let logging = log.map { ["--filter=log", "logfile=\($0)"] } ?? []
        // Filters before the plugin, their parameters after it (nbdkit takes KEY=VALUE anywhere
        // after the plugin name).
        let filters = arguments.filter { $0.hasPrefix("--filter=") }
        let rest = arguments.filter { !$0.hasPrefix("--filter=") }
        process.arguments = ["nbdkit", "-f"] + (waitForSocket ? ["-U", socket] : []) + logging.prefix(1) + filters + rest
            + logging.dropFirst()
        try process.run()
        guard waitForSocket else { return }
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: socket) {
            guard process.isRunning, ContinuousClock.now < deadline else {
                stop()
                throw NbdkitError(description: "nbdkit \(arguments.joined(separator: " ")) did not come up")
            }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
    }

    /// The URI of its export.
    var uri: NBDURI { try! NBDURI.parse("nbd+unix:///?socket=\(socket)") }

    /// SIGKILL: the child inherits the test process's blocked signals (SIGTERM among them), and
    /// Foundation's Process does not see its exit from a task here, so it is not waited for.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
    }

    /// The log's request lines for `command` ("Read", "Write", "Zero", "Flush", "Trim", "Extents", "Cache").
    func requests(_ command: String) -> [String] {
        guard let log, let text = try? String(contentsOfFile: log, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").map(String.init).filter { $0.contains(" \(command) id=") }
    }

    /// The value of `key=` in a log line, as a number.
    static func field(_ key: String, in line: String) -> UInt64? {
        guard let range = line.range(of: " \(key)=") else { return nil }
        let value = line[range.upperBound...].prefix { !$0.isWhitespace }
        return value.hasPrefix("0x") ? UInt64(value.dropFirst(2), radix: 16) : UInt64(value)
    }

    struct NbdkitError: Error, CustomStringConvertible { let description: String }
}

/// A fresh directory under /var/tmp (a disk filesystem) for one test's files, named for `label`.
func scratchDirectory(_ label: String) throws -> String {
    let path = "/var/tmp/\(label)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A psktool-style file at `path` holding a random 256-bit key for `user`.
func writePreSharedKeyFile(_ path: String, user: String) throws {
    let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    try "\(user):\(key)\n".write(toFile: path, atomically: true, encoding: .utf8)
}
