import BlockIO
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// What a listener does when `accept` fails, typically because the process is out of descriptors
/// (EMFILE) or the system is (ENFILE): it stops accepting for `retryDelay`, then tries again.
///
/// Without this the event loop spins at 100% CPU and serves nobody: the pending connection keeps
/// the listening socket readable, and `accept` fails again at once. SwiftNIO's own
/// `AcceptBackoffHandler` does not help (and `ServerBootstrap.bind` does not install it): after a
/// failed accept the channel keeps its read pending, so the handler's delayed `read` is never
/// asked for. Turning auto-read off unregisters the socket from epoll until the delay has passed.
///
/// One warning says so (at most once a minute, with the count of failures since the last one),
/// and one line says when a connection is accepted after a warning.
final class NBDAcceptBackoff: Sendable {
    private struct State {
        var lastWarning: NIODeadline?
        var failuresSinceWarning = 0
        /// A warning was written and no connection accepted since.
        var warned = false
    }
    private let state = Mutex(State())
    private let logger: Logger
    private let connections: @Sendable () -> Int
    let retryDelay: TimeAmount
    let warningInterval: TimeAmount

    /// `connections` counts the server's open connections, for the log line.
    init(logger: Logger, retryDelay: TimeAmount = .seconds(1), warningInterval: TimeAmount = .seconds(60),
         connections: @escaping @Sendable () -> Int) {
        self.logger = logger
        self.retryDelay = retryDelay
        self.warningInterval = warningInterval
        self.connections = connections
    }

    /// The handler to put first in a listening channel's pipeline.
    func makeHandler() -> Handler { Handler(backoff: self) }

    /// Pauses accepting on a listening channel after a failed accept.
    final class Handler: ChannelInboundHandler {
        typealias InboundIn = any Channel
        typealias InboundOut = any Channel
        private let backoff: NBDAcceptBackoff
        private var paused = false

        init(backoff: NBDAcceptBackoff) { self.backoff = backoff }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            guard let error = error as? IOError else { return context.fireErrorCaught(error) }
            backoff.acceptFailed(error)
            guard !paused, let options = context.channel.syncOptions else { return }
            paused = true
            try? options.setOption(.autoRead, value: false)
            context.eventLoop.assumeIsolated().scheduleTask(in: backoff.retryDelay) { [self] in
                paused = false
                try? context.channel.syncOptions?.setOption(.autoRead, value: true)
            }
        }
    }

    private func acceptFailed(_ error: IOError) {
        let now = NIODeadline.now()
        let report: Int? = state.withLock { state in
            state.failuresSinceWarning += 1
            if let last = state.lastWarning, now - last < warningInterval { return nil }
            defer { state.lastWarning = now; state.failuresSinceWarning = 0; state.warned = true }
            return state.failuresSinceWarning
        }
        guard let report else { return }
        let reason = String(cString: strerror(error.errnoCode))
        logger.warning("cannot accept connections: \(reason) (errno \(error.errnoCode)); retrying every \(NBDConnectionTimeouts.seconds(retryDelay))",
                       metadata: ["open-file-limit": "\(OpenFileLimit.current.soft)", "connections": "\(connections())",
                                  "failed-attempts": "\(report)"])
    }

    /// A connection was accepted: after a warning, one line says accepting works again.
    func accepted() {
        let warned: Bool = state.withLock { state in
            defer { state.warned = false }
            return state.warned
        }
        if warned { logger.info("accepting connections again", metadata: ["connections": "\(connections())"]) }
    }
}
