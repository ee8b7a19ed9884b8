import Foundation

/// A daemon's process, known by its pid and its start time (field 22 of /proc/PID/stat), so a
/// later process that reuses the pid is not taken for it. Used to wait until a stopped daemon has
/// exited: only then are its devices, bitmap and sockets free (the kernel closes a process's
/// files before it becomes a zombie, so a zombie counts as exited).
struct DaemonProcess {
    let pid: pid_t
    private let startTime: Substring

    /// The process `pid` as it is now; nil if it is already gone (or not visible here).
    init?(pid: pid_t) {
        guard pid > 0, let (state, started) = Self.probe(pid), state != "Z", state != "X" else { return nil }
        self.pid = pid
        startTime = started
    }

    var hasExited: Bool {
        guard let (state, started) = Self.probe(pid) else { return true }
        return started != startTime || state == "Z" || state == "X"
    }

    /// Polls until the process has exited or `deadline` (nil: none) has passed; true if it exited.
    func waitForExit(until deadline: Date?) -> Bool {
        while !hasExited {
            if let deadline, Date() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    /// The state letter and start time of process `pid`, or nil if it does not exist. The fields
    /// are counted after the command name's closing parenthesis (a name may hold spaces and parentheses).
    private static func probe(_ pid: pid_t) -> (state: Substring, startTime: Substring)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return (fields[0], fields[19])
    }
}
