import BlockIO
import Foundation
import Logging
import NIOCore
import NIOPosix

/// A mirror daemon's control socket: a unix socket (owner-only) where each line is a
/// `ControlRequest` and each answer a `ControlResponse` line, in request order.
///
/// One client cannot hold the daemon's memory or its exit: a connection's requests are answered
/// one at a time; while `Limits.queuedRequests` wait, or while its unread answers exceed
/// `Limits.unreadAnswerBytes`, the daemon stops reading from it and answers nothing more on it; a
/// client that stays that far behind for `Limits.stalledClientTimeout` is dropped, and
/// `shutdown` never waits more than `Limits.shutdownDrainTimeout` for a client to take its answers.
public final class ControlServer: Sendable {
    public typealias Handler = @Sendable (ControlRequest) async -> ControlResponse

    /// What one control client may make the daemon hold (docs/CONTROL.md).
    public struct Limits: Sendable {
        /// Requests of one connection waiting for their turn; at this many the daemon stops reading it.
        public var queuedRequests = 16
        /// Bytes of answers a client may leave unread in the daemon (the write buffer's high water
        /// mark; the kernel's socket buffer holds some more) before the daemon answers nothing more.
        public var unreadAnswerBytes = 256 << 10
        /// How long a client may stay past `unreadAnswerBytes` before it is disconnected.
        public var stalledClientTimeout = TimeAmount.seconds(10)
        /// How long `shutdown` waits for the requests running to end, then for a client to read its
        /// last answers, before closing it.
        public var shutdownDrainTimeout = TimeAmount.seconds(5)
        public init() {}
    }

    public let path: String
    let limits: Limits
    let logger: Logger
    private let name: String
    private let group: any EventLoopGroup
    private let handler: Handler
    private struct Connection {
        let channel: any Channel
        /// The last answer written: when it completes, every earlier one has too.
        var lastWrite: EventLoopFuture<Void>?
    }
    private struct State {
        var listener: (any Channel)?
        /// False once `shutdown` began: no request starts any more.
        var accepting = true
        var connections: [ObjectIdentifier: Connection] = [:]
        /// Requests started whose answer has not been written yet.
        var pending = 0
    }
    private let state = Mutex(State())
    /// Fulfilled once `shutdown` began and `pending` is 0 (true), or its wait timed out (false).
    private let drained = OneShot<Bool>()

    public init(path: String, name: String, group: any EventLoopGroup, logger: Logger, limits: Limits = Limits(), handler: @escaping Handler) {
        self.path = path; self.name = name; self.group = group; self.logger = logger; self.limits = limits; self.handler = handler
    }

    /// Binds the socket: a stale one of a dead daemon is removed (and said so); a live one means
    /// the mirror is already running. Errors read "cannot listen on PATH: permission denied".
    public func start() async throws(ControlError) {
        switch UnixSocket.state(of: path) {
        case .absent: break
        case .stale:
            logger.notice("removed the stale control socket of a dead daemon", metadata: ["socket": "\(path)"])
            unlink(path)
        case .live: throw ControlError("\(path.hasSuffix(".plan") ? "plan" : "mirror") \(name) is already running (control socket \(path))")
        case .notASocket: throw ControlError("cannot listen on \(path): it exists and is not a socket")
        case .unreachable(let errno): throw ControlError("cannot listen on \(path): a socket is there and connecting to it failed: \(errno.phrase)")
        }
        let longest = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
        guard path.utf8.count <= longest else {
            throw ControlError("cannot listen on \(path): the path is \(path.utf8.count) bytes long, a unix socket's may be \(longest)")
        }
        let watermark = ChannelOptions.Types.WriteBufferWaterMark(low: limits.unreadAnswerBytes / 4, high: limits.unreadAnswerBytes)
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.writeBufferWaterMark, value: watermark)
            .childChannelInitializer { [self] channel in
                // The socket is 0600 in a directory of this user's; the kernel's word on who
                // connected also covers the moment between bind and chmod.
                PeerCredentials.of(channel).flatMapThrowing { [self] peer in
                    guard peer.uid == geteuid() || peer.uid == 0 else {
                        logger.warning("refused a control connection of \(UserNames.describe(peer.uid))")
                        throw ChannelError.inappropriateOperationForState
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maximumLength: 1 << 20)))
                    try channel.pipeline.syncOperations.addHandler(ControlConnectionHandler(server: self))
                }
            }
        do {
            let channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
            chmod(path, 0o600)
            state.withLock { $0.listener = channel }
        } catch let error as IOError {
            throw ControlError("cannot listen on \(path): \(Errno(rawValue: error.errnoCode).phrase)")
        } catch {
            throw ControlError("cannot listen on \(path): \(error)")
        }
    }

    /// Stops accepting connections and starting requests, waits (up to `shutdownDrainTimeout`)
    /// until every request started has been answered, gives each client up to
    /// `shutdownDrainTimeout` to read its answers (none to one already past `unreadAnswerBytes`),
    /// closes the connections and removes the socket.
    public func shutdown() async {
        let listener = state.withLock { state in
            state.accepting = false
            defer { state.listener = nil }
            return state.listener
        }
        try? await listener?.close()
        unlink(path)
        if state.withLock({ $0.pending == 0 }) { drained.fulfil(true) }
        // The export is closed by now, so requests end soon; one wedged (in a system call, say)
        // must not keep the daemon alive.
        let deadline = group.next().scheduleTask(in: limits.shutdownDrainTimeout) { [self] in
            guard drained.fulfil(false) else { return }
            logger.warning("\(state.withLock { $0.pending }) control request(s) still running at shutdown: not waiting for them")
        }
        _ = await drained.wait()
        deadline.cancel()
        let connections = state.withLock { Array($0.connections.values) }
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { [limits] in
                    let channel = connection.channel
                    if channel.isWritable, let lastWrite = connection.lastWrite {
                        let deadline = channel.eventLoop.scheduleTask(in: limits.shutdownDrainTimeout) {}
                        lastWrite.whenComplete { _ in deadline.cancel() }
                        _ = try? await deadline.futureResult.get()
                    }
                    try? await channel.close()
                }
            }
        }
    }

    fileprivate func opened(_ channel: any Channel) {
        state.withLock { $0.connections[ObjectIdentifier(channel)] = Connection(channel: channel) }
    }

    fileprivate func closed(_ channel: any Channel) {
        _ = state.withLock { $0.connections.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// A request may start (false once `shutdown` began); `finish` must follow.
    fileprivate func begin() -> Bool {
        state.withLock { state in
            guard state.accepting else { return false }
            state.pending += 1
            return true
        }
    }

    /// The answer of a begun request was written (`write`) on `channel`, or the client is gone.
    fileprivate func finish(_ write: EventLoopFuture<Void>?, on channel: any Channel) {
        let idle = state.withLock { state in
            if let write { state.connections[ObjectIdentifier(channel)]?.lastWrite = write }
            state.pending -= 1
            return !state.accepting && state.pending == 0
        }
        if idle { drained.fulfil(true) }
    }

    /// The answer to one line, encoded.
    fileprivate func answer(_ line: ByteBuffer) async -> ByteBuffer {
        let response: ControlResponse
        do {
            let request = try ControlCodec.decode(ControlRequest.self, from: Data(line.readableBytesView))
            response = await handler(request)
        } catch {
            logger.warning("malformed control request", metadata: ["error": "\(error)"])
            response = .failure(name, "malformed request: \(error)")
        }
        return ByteBuffer(bytes: ControlCodec.encode(response))
    }
}

/// One control connection: answers its requests one after another, in order, with back-pressure
/// (see `ControlServer`). Runs on the channel's event loop.
private final class ControlConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let server: ControlServer
    private var context: ChannelHandlerContext?
    /// Requests received, not started.
    private var queue = CircularBuffer<ByteBuffer>()
    /// A request is being answered.
    private var answering = false
    /// A read was asked for and held back.
    private var readHeld = false
    /// Disconnects the client if it stays behind on its answers.
    private var stallTimer: Scheduled<Void>?

    init(server: ControlServer) { self.server = server }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        stallTimer?.cancel()
    }

    func channelActive(context: ChannelHandlerContext) {
        server.opened(context.channel)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        server.closed(context.channel)
        stallTimer?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        queue.append(unwrapInboundIn(data))
        answerNext()
    }

    func read(context: ChannelHandlerContext) {
        if queue.count >= server.limits.queuedRequests || !context.channel.isWritable {
            readHeld = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            stallTimer?.cancel()
            stallTimer = nil
            answerNext()
        } else if stallTimer == nil {
            let channel = context.channel
            let (logger, limits) = (server.logger, server.limits)
            stallTimer = context.eventLoop.scheduleTask(in: limits.stalledClientTimeout) {
                logger.warning("dropped a control client that left more than \(limits.unreadAnswerBytes) bytes of answers unread for \(limits.stalledClientTimeout.nanoseconds / 1_000_000_000) s")
                channel.close(promise: nil)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let tooLong = error as? LineFrameDecoder.LineTooLong {
            server.logger.warning("closed a control connection: \(tooLong)")
        }
        context.close(promise: nil)
    }

    /// Starts the next request if none is running, the client keeps up and the server accepts;
    /// lets reading go on once there is room.
    private func answerNext() {
        guard let context else { return }
        let channel = context.channel
        if !answering, channel.isWritable, !queue.isEmpty, server.begin() {
            answering = true
            let line = queue.removeFirst()
            let answer = context.eventLoop.makePromise(of: ByteBuffer.self)
            answer.completeWithTask { [server] in await server.answer(line) }
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            answer.futureResult.whenSuccess { handler.value.answered($0, on: channel) }
        }
        if readHeld, queue.count < server.limits.queuedRequests, channel.isWritable {
            readHeld = false
            context.read()
        }
    }

    private func answered(_ buffer: ByteBuffer, on channel: any Channel) {
        answering = false
        let write = context.map { $0.writeAndFlush(wrapOutboundOut(buffer)) }
        server.finish(write, on: channel)
        answerNext()
    }
}
