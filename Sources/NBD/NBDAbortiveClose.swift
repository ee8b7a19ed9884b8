import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The head of a client connection's pipeline (below TLS): closes the socket at once, so that a
/// request this host sent and the server never answered can no longer reach the server.
///
/// Why: a request that failed by timeout or a broken connection is in doubt, not undone. Its
/// bytes may still sit in this host's send queue — on a cut link the kernel retransmits them, and
/// after an ordinary `close(2)` goes on doing so for minutes, as it does when the process dies.
/// Had the mirror recopied that region onto a new connection meanwhile, the old WRITE landing
/// afterwards would put stale data under a target called in sync. So a TCP connection is set up
/// with SO_LINGER 0 (`arm`): every close — this handler's, or the kernel's at exit, kill -9
/// included — drops the unsent bytes and resets the connection. `abort()` closes from here, below
/// TLS, which would otherwise keep the socket open for its close_notify. A clean end (every
/// request answered, then DISC) clears SO_LINGER first (`disarm`), so that DISC and TLS's
/// close_notify are delivered.
///
/// What it cannot undo: bytes the server's host had already received. docs/INVARIANTS.md says so.
final class NBDAbortiveClose: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = NIOAny
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Sets SO_LINGER 0 on `channel` if it is a TCP socket (a Unix socket's unread bytes are the
    /// server's already).
    static func arm(_ channel: any Channel, tcp: Bool) -> EventLoopFuture<Void> {
        linger(channel, tcp: tcp, on: true)
    }

    /// Clears SO_LINGER: the next close is an ordinary one that delivers what is queued.
    static func disarm(_ channel: any Channel, tcp: Bool) -> EventLoopFuture<Void> {
        linger(channel, tcp: tcp, on: false)
    }

    /// Closes the socket now, from the head of the pipeline: armed, the unsent bytes are dropped
    /// and the server gets a reset. On the channel's event loop.
    func abort() {
        context?.close(promise: nil)
    }

    private static func linger(_ channel: any Channel, tcp: Bool, on: Bool) -> EventLoopFuture<Void> {
        guard tcp, let options = channel as? any SocketOptionProvider else { return channel.eventLoop.makeSucceededVoidFuture() }
        return options.setSoLinger(Glibc.linger(l_onoff: on ? 1 : 0, l_linger: 0))
    }
}
