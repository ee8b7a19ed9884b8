#if canImport(Glibc)
import Glibc
#endif

/// Unix-domain stream sockets by path: probing whether a server still answers on a path (to tell
/// a live server from a stale socket file left by a dead one), and blocking client connections.
public enum UnixSocket {
    /// What is at a socket path.
    public enum PathState: Sendable, Equatable {
        /// Nothing: free to bind.
        case absent
        /// Something that is not a socket (never removed).
        case notASocket
        /// A socket file no server answers on: left by a dead server, safe to remove.
        case stale
        /// A server accepts connections there.
        case live
        /// The socket exists but connecting failed otherwise (permissions, say).
        case unreachable(Errno)
    }

    /// Probes `path` by connecting to it.
    public static func state(of path: String) -> PathState {
        var info = stat()
        guard lstat(path, &info) == 0 else { return .absent }
        guard info.st_mode & S_IFMT == S_IFSOCK else { return .notASocket }
        switch connect(to: path) {
        case .success(let fd):
            fd.close()
            return .live
        case .failure(let errno) where errno.rawValue == ECONNREFUSED: return .stale
        case .failure(let errno): return .unreachable(errno)
        }
    }

    /// Connects a blocking stream socket to the server at `path`.
    public static func connect(to path: String) -> Result<FileDescriptor, Errno> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(.current) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let fits = withUnsafeMutableBytes(of: &address.sun_path) { raw -> Bool in
            let bytes = Array(path.utf8)
            guard bytes.count < raw.count else { return false }
            raw.copyBytes(from: bytes)
            return true
        }
        guard fits else {
            Glibc.close(fd)
            return .failure(Errno(rawValue: ENAMETOOLONG))
        }
        let result = retryingOnInterrupt {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
        }
        if case .failure(let errno) = result {
            Glibc.close(fd)
            return .failure(errno)
        }
        return .success(FileDescriptor(rawValue: fd))
    }
}
