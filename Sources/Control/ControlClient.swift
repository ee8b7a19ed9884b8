import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Talks to a mirror daemon over its control socket: one request, one response, blocking.
public enum ControlClient {
    /// Sends `request` to mirror `name` in `directory` and waits for the answer (at most
    /// `timeout` seconds; nil waits as long as the verb takes, as `check` and `stop` may).
    /// A control socket left by a dead daemon is removed, and the error says so.
    public static func send(_ request: ControlRequest, to name: String, in directory: RuntimeDirectory,
                            timeout: Int? = 30) throws(ControlError) -> ControlResponse {
        let path = directory.controlSocket(for: name)
        let fd: FileDescriptor
        switch UnixSocket.connect(to: path) {
        case .success(let connected): fd = connected
        case .failure(let errno) where errno.rawValue == ENOENT:
            throw ControlError("no mirror named \(name) (no control socket \(path))", notRunning: true)
        case .failure(let errno) where errno.rawValue == ECONNREFUSED:
            // Refused twice, 100 ms apart: not a daemon caught between bind() and listen().
            usleep(100_000)
            if UnixSocket.state(of: path) == .stale { unlink(path) } else {
                return try send(request, to: name, in: directory, timeout: timeout)
            }
            throw ControlError("mirror \(name) is not running: removed the stale control socket \(path) of a dead daemon", notRunning: true)
        case .failure(let errno) where errno.rawValue == EACCES || errno.rawValue == EPERM:
            throw ControlError("permission denied on the control socket \(path) (run as the daemon's user)")
        case .failure(let errno):
            throw ControlError("cannot reach mirror \(name) at \(path): \(errno)")
        }
        defer { fd.close() }
        if let timeout {
            var limit = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
        let data = ControlCodec.encode(request)
        var sent = 0
        while sent < data.count {
            let count = data.withUnsafeBytes { Glibc.send(fd.rawValue, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw ControlError("cannot send to mirror \(name) at \(path): \(Errno.current)") }
            sent += count
        }
        var line = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !line.contains(UInt8(ascii: "\n")) {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                throw ControlError("mirror \(name) did not answer within \(timeout ?? 0) s (control socket \(path))", timedOut: true)
            }
            guard count > 0 else {
                throw ControlError("mirror \(name) closed the control connection without an answer (\(path))", notRunning: true)
            }
            line.append(contentsOf: chunk[0..<count])
        }
        let end = line.firstIndex(of: UInt8(ascii: "\n"))!
        do {
            return try ControlCodec.decode(ControlResponse.self, from: line[line.startIndex..<end])
        } catch {
            throw ControlError("mirror \(name) answered something unreadable: \(error)")
        }
    }
}
