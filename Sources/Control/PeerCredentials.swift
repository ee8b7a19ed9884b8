import BlockIO
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Who is at the other end of a connected unix socket, in the kernel's words (`SO_PEERCRED`): the
/// process (for a client: the one that listened) and its user. Unlike a socket file's owner, it
/// cannot be faked.
struct PeerCredentials: Sendable {
    let pid: pid_t
    let uid: uid_t

    /// `struct ucred` of <sys/socket.h> (a GNU extension Swift does not import): pid, uid, gid.
    private struct Layout: Sendable {
        var pid: pid_t = 0
        var uid: uid_t = 0
        var gid: gid_t = 0
    }

    private init(_ layout: Layout) {
        pid = layout.pid
        uid = layout.uid
    }

    /// The peer of a blocking client socket.
    static func of(_ socket: BlockIO.FileDescriptor) -> Result<PeerCredentials, Errno> {
        var credentials = Layout()
        var length = socklen_t(MemoryLayout<Layout>.size)
        guard getsockopt(socket.rawValue, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return .failure(.current) }
        return .success(PeerCredentials(credentials))
    }

    /// The peer of an accepted NIO connection.
    static func of(_ channel: any Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        let layout: EventLoopFuture<Layout> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return layout.map(PeerCredentials.init)
    }
}
