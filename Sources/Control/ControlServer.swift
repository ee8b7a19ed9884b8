import BlockIO
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// A mirror daemon's control socket: a unix socket (owner-only) where each line is a
/// `ControlRequest` and each answer a `ControlResponse` line, in request order.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest) async -> ControlResponse

    public let path: String
    private let name: String
    private let group: any EventLoopGroup
    private let logger: Logger
    private let handler: Handler
    private struct State {
        var listener: (any Channel)?
        var connections: [ObjectIdentifier: any Channel] = [:]
        /// Requests received and not yet answered.
        var pending = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    public init(path: String, name: String, group: any EventLoopGroup, logger: Logger, handler: @escaping Handler) {
        self.path = path; self.name = name; self.group = group; self.logger = logger; self.handler = handler
    }

    /// Binds the socket: a stale one of a dead daemon is removed (and said so); a live one means
    /// the mirror is already running.
    public func start() async throws(ControlError) {
        switch UnixSocket.state(of: path) {
        case .absent: break
        case .stale:
            logger.notice("removed the stale control socket of a dead daemon", metadata: ["socket": "\(path)"])
            unlink(path)
        case .live: throw ControlError("mirror \(name) is already running (control socket \(path))")
        case .notASocket: throw ControlError("\(path) exists and is not a socket")
        case .unreachable(let errno): throw ControlError("control socket \(path): \(errno)")
        }
        let bootstrap = ServerBootstrap(group: group)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maximumLength: 1 << 20)))
                    try channel.pipeline.syncOperations.addHandler(ControlConnectionHandler(server: self))
                }
            }
        let previous = umask(0o177)
        defer { umask(previous) }
        do {
            let channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
            chmod(path, 0o600)
            state.withLock { $0.listener = channel }
        } catch {
            throw ControlError("cannot listen on the control socket \(path): \(error)")
        }
    }

    /// Stops accepting, waits until every request received has been answered, closes the
    /// connections and removes the socket.
    public func shutdown() async {
        let listener = state.withLock { state in
            defer { state.listener = nil }
            return state.listener
        }
        try? await listener?.close()
        unlink(path)
        await withCheckedContinuation { continuation in
            let idle = state.withLock { state in
                if state.pending == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
        let connections = state.withLock { Array($0.connections.values) }
        for connection in connections { try? await connection.close() }
    }

    fileprivate func opened(_ channel: any Channel) {
        state.withLock { $0.connections[ObjectIdentifier(channel)] = channel }
    }

    fileprivate func closed(_ channel: any Channel) {
        _ = state.withLock { $0.connections.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Answers one line; `Void` when the response has been written (or the client is gone).
    fileprivate func answer(_ line: ByteBuffer, on channel: any Channel) async {
        state.withLock { $0.pending += 1 }
        let response: ControlResponse
        do {
            let request = try ControlCodec.decode(ControlRequest.self, from: Data(line.readableBytesView))
            response = await handler(request)
        } catch {
            logger.warning("malformed control request", metadata: ["error": "\(error)"])
            response = .failure(name, "malformed request: \(error)")
        }
        let data = ControlCodec.encode(response)
        try? await channel.writeAndFlush(ByteBuffer(bytes: data)).get()
        let waiters: [CheckedContinuation<Void, Never>] = state.withLock { state in
            state.pending -= 1
            guard state.pending == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// One control connection: answers its requests one after another, in order.
private final class ControlConnectionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private let server: ControlServer
    /// The previous request's answer: the next one starts after it (responses keep request order).
    private var previous: Task<Void, Never>?

    init(server: ControlServer) { self.server = server }

    func channelActive(context: ChannelHandlerContext) {
        server.opened(context.channel)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        server.closed(context.channel)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = unwrapInboundIn(data)
        let channel = context.channel
        let before = previous
        previous = Task { [server] in
            await before?.value
            await server.answer(line, on: channel)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
