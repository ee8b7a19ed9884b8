import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Talks to a mirror daemon over its control socket: one request, one response, blocking.
///
/// It trusts an answer only from a daemon of its own user: the runtime directory is checked
/// first (`RuntimeDirectory.verifyIfPresent`), then the process at the other end of the socket
/// (`SO_PEERCRED`).
public enum ControlClient {
    /// Sends `request` to mirror `name` in `directory` and waits for the answer (at most
    /// `timeout` seconds; nil waits as long as the verb takes, as `check` may).
    /// A control socket left by a dead daemon is removed, and the error says so.
    public static func send(_ request: ControlRequest, to name: String, in directory: RuntimeDirectory,
                            timeout: Int? = 30) throws(ControlError) -> ControlResponse {
        try exchange(request, with: name, .mirror, in: directory, timeout: timeout).response
    }

    /// Sends `request` to plan `name` (`blockmirror migrate`) on its control socket.
    public static func send(_ request: ControlRequest, toPlan name: String, in directory: RuntimeDirectory,
                            timeout: Int? = 30) throws(ControlError) -> ControlResponse {
        try exchange(request, with: name, .plan, in: directory, timeout: timeout).response
    }

    /// What answers on a socket: a mirror's daemon, or a plan's.
    private enum Kind: String { case mirror, plan }

    /// Stops mirror `name` and returns the daemon's final report once its process has exited, so
    /// its devices, bitmap and sockets are free (a `build` of the same devices right after
    /// succeeds) — or at once for a volume of a plan, whose process goes on serving the others
    /// (`staysRunning`: the volume's files are closed before it answers). `timeout` (seconds, nil: no limit) bounds the answer and then the exit.
    /// `plan`: stops every volume of plan `name` and waits for its process to exit.
    public static func stop(_ name: String, plan: Bool = false, in directory: RuntimeDirectory, timeout: Int?) throws(ControlError) -> ControlResponse {
        let (response, daemon) = try exchange(ControlRequest(verb: .stop), with: name, plan ? .plan : .mirror, in: directory, timeout: timeout)
        let deadline = timeout.map { Date().addingTimeInterval(TimeInterval($0)) }
        if response.staysRunning != true, let daemon, !daemon.waitForExit(until: deadline) {
            throw ControlError("\(plan ? "plan" : "mirror") \(name) answered the stop, but its daemon (pid \(daemon.pid)) had not exited \(timeout ?? 0) s later "
                               + "(see \(directory.logFile(for: name)) if it runs with --daemon)")
        }
        return response
    }

    /// One request and its answer, and the daemon process that answered (nil if it is not visible
    /// from here, in another pid namespace say).
    private static func exchange(_ request: ControlRequest, with name: String, _ kind: Kind, in directory: RuntimeDirectory,
                                 timeout: Int?) throws(ControlError) -> (response: ControlResponse, daemon: DaemonProcess?) {
        let path = kind == .mirror ? directory.controlSocket(for: name) : directory.planSocket(for: name)
        let noun = kind.rawValue
        guard try directory.verifyIfPresent() else {
            throw ControlError("no \(noun) named \(name) (no control socket \(path))", notRunning: true)
        }
        let fd: FileDescriptor
        switch UnixSocket.connect(to: path) {
        case .success(let connected): fd = connected
        case .failure(let errno) where errno.rawValue == ENOENT:
            throw ControlError("no \(noun) named \(name) (no control socket \(path))", notRunning: true)
        case .failure(let errno) where errno.rawValue == ECONNREFUSED:
            // Refused twice, 100 ms apart: not a daemon caught between bind() and listen().
            usleep(100_000)
            if UnixSocket.state(of: path) == .stale { unlink(path) } else {
                return try exchange(request, with: name, kind, in: directory, timeout: timeout)
            }
            throw ControlError("\(noun) \(name) is not running: removed the stale control socket \(path) of a dead daemon", notRunning: true)
        case .failure(let errno) where errno.rawValue == EACCES || errno.rawValue == EPERM:
            throw ControlError("permission denied on the control socket \(path) (run as the daemon's user)")
        case .failure(let errno):
            throw ControlError("cannot reach \(noun) \(name) at \(path): \(errno.phrase)")
        }
        defer { fd.close() }
        let daemon = try trustedDaemon(on: fd, at: path)
        if let timeout {
            var limit = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        let data = ControlCodec.encode(request)
        var sent = 0
        while sent < data.count {
            let count = data.withUnsafeBytes { Glibc.send(fd.rawValue, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw ControlError("cannot send to \(noun) \(name) at \(path): \(Errno.current.phrase)") }
            sent += count
        }
        var line = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !line.contains(UInt8(ascii: "\n")) {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw ControlError("\(noun) \(name) did not answer within \(timeout ?? 0) s (control socket \(path))", timedOut: true)
            }
            guard count > 0 else {
                throw ControlError("\(noun) \(name) closed the control connection without an answer (\(path))", notRunning: true)
            }
            line.append(contentsOf: chunk[0..<count])
        }
        let end = line.firstIndex(of: UInt8(ascii: "\n"))!
        do {
            return (try ControlCodec.decode(ControlResponse.self, from: line[line.startIndex..<end]), daemon)
        } catch {
            throw ControlError("\(noun) \(name) answered something unreadable: \(error)")
        }
    }

    /// The daemon listening at the other end of `fd`, refused unless it runs as this user.
    private static func trustedDaemon(on fd: FileDescriptor, at path: String) throws(ControlError) -> DaemonProcess? {
        switch PeerCredentials.of(fd) {
        case .failure(let error):
            throw ControlError("cannot tell who serves the control socket \(path): \(error.phrase)")
        case .success(let peer) where peer.uid != geteuid():
            throw ControlError("refusing the control socket \(path): it is served by \(UserNames.describe(peer.uid)), "
                               + "not by you (uid \(geteuid())); another user may have put it there")
        case .success(let peer):
            return DaemonProcess(pid: peer.pid)
        }
    }
}
