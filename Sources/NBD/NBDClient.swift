import BlockIO
import NIOCore
import NIOPosix
import NIOTLS

/// One connection to an NBD server, on SwiftNIO: connects to a URI, negotiates
/// (`NBDClientHandshake`), then sends requests — many in flight — and completes each as its reply
/// arrives (`NBDReplyAssembler`).
///
/// A connection that breaks (reset, closed by the server, a protocol violation, or no reply at all
/// for `requestTimeout` while requests are in flight) fails every request in flight and every
/// later one with the reason, naming the URI: a remote that stops answering never hangs its caller.
/// It is reset first (`NBDAbortiveClose`), so a request reported failed can no longer be sent on
/// from this host: it lands on the server before it is reported, or never.
public final class NBDClient: Sendable {
    /// The export negotiated.
    public let export: NBDClientHandshake.Export
    /// The server's URI.
    public let uri: NBDURI
    private let channel: any Channel
    private let handler: NIOLoopBound<NBDClientHandler>
    private let health: Health

    /// Why the connection broke, once it did (read from any thread).
    final class Health: Sendable {
        let broken = Mutex<String?>(nil)
    }

    private init(uri: NBDURI, channel: any Channel, handler: NIOLoopBound<NBDClientHandler>, health: Health,
                 export: NBDClientHandshake.Export) {
        self.uri = uri
        self.channel = channel
        self.handler = handler
        self.health = health
        self.export = export
    }

    /// The event loop the connection runs on.
    public var eventLoop: any EventLoop { channel.eventLoop }

    /// Whether the connection broke: every request on it fails from then on.
    public var isBroken: Bool { health.broken.withLock { $0 != nil } }

    /// Connects to `uri` and negotiates its export, each within `connectTimeout` (a server that
    /// accepts and then says nothing is given up on too). A TLS URI needs `tls` (`NBDClientTLS`
    /// of the `NBDTLS` module, made from the same URI).
    public static func connect(to uri: NBDURI, tls: (any NBDTLSProvider)? = nil, group: any EventLoopGroup,
                               connectTimeout: TimeAmount = .seconds(30),
                               requestTimeout: TimeAmount = .seconds(30)) async throws(NBDClientError) -> NBDClient {
        if uri.tls != nil && tls == nil { throw NBDClientError(uri: uri, reason: "the URI asks for TLS, and no TLS was set up for it") }
        let loop = group.next()
        // Made here and completed on every path (the handler ends the negotiation; a connection
        // that never comes up fails them below), so nobody waits on a handler that never was.
        let negotiated = loop.makePromise(of: NBDClientHandshake.Export.self)
        let added = loop.makePromise(of: NIOLoopBound<NBDClientHandler>.self)
        let health = Health()
        let tcp: Bool
        if case .tcp = uri.transport { tcp = true } else { tcp = false }
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                NBDAbortiveClose.arm(channel, tcp: tcp).flatMapThrowing {
                    let head = NBDAbortiveClose()
                    let handler = NBDClientHandler(uri: uri, tls: tls, requestTimeout: requestTimeout, health: health,
                                                   head: head, tcp: tcp, negotiated: negotiated)
                    try channel.pipeline.syncOperations.addHandler(head)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(handler.decoder))
                    try channel.pipeline.syncOperations.addHandler(handler)
                    added.succeed(NIOLoopBound(handler, eventLoop: channel.eventLoop))
                }
            }
        let channel: any Channel
        do {
            switch uri.transport {
            case let .tcp(host, port): channel = try await bootstrap.connect(host: host, port: port).get()
            case .unix(let path): channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            }
        } catch {
            let failure = NBDClientError(uri: uri, reason: "cannot connect: \(error)")
            negotiated.fail(failure)
            added.fail(failure)
            throw failure
        }
        let silence = loop.scheduleTask(in: connectTimeout) {
            negotiated.fail(NBDClientError(uri: uri, reason: "no answer to the negotiation within \(connectTimeout.nanoseconds / 1_000_000_000) s"))
        }
        defer { silence.cancel() }
        do {
            let handler = try await added.futureResult.get()
            let export = try await negotiated.futureResult.get()
            return NBDClient(uri: uri, channel: channel, handler: handler, health: health, export: export)
        } catch {
            channel.close(promise: nil)
            throw error as? NBDClientError ?? NBDClientError(uri: uri, reason: "\(error)")
        }
    }

    /// Sends a request and returns its reply; `payload` is a WRITE's data.
    public func request(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt32,
                        payload: ByteBuffer? = nil) -> EventLoopFuture<NBDReplyAssembler.Reply> {
        let handler = self.handler
        return channel.eventLoop.flatSubmit {
            handler.value.send(command, flags: flags, offset: offset, length: length, payload: payload)
        }
    }

    /// Sends DISC once the requests in flight are answered, and closes the connection.
    public func close() async {
        let handler = self.handler
        try? await channel.eventLoop.flatSubmit { handler.value.disconnect() }.get()
        try? await channel.closeFuture.get()
    }
}

/// Why a connection or a request to an NBD server failed; the message names the URI.
public struct NBDClientError: Error, Sendable, CustomStringConvertible {
    public let uri: NBDURI
    public let reason: String
    /// The server's error for a failed request (nil when the connection itself failed).
    public var failure: NBDRequestFailure?

    public init(uri: NBDURI, reason: String, failure: NBDRequestFailure? = nil) {
        self.uri = uri
        self.reason = reason
        self.failure = failure
    }

    public var description: String { "\(uri): \(reason)" }
}

/// The channel side of `NBDClient`: the negotiation, then requests and replies, on the channel's
/// event loop only.
final class NBDClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NBDServerMessage
    typealias OutboundOut = ByteBuffer

    let decoder: NBDReplyFrameDecoder
    private let uri: NBDURI
    /// With TLS: what STARTTLS's handshake uses.
    private let tls: (any NBDTLSProvider)?
    private let requestTimeout: TimeAmount
    private let health: NBDClient.Health
    /// Closes the socket below TLS, dropping what is unsent: how a broken connection ends.
    private let head: NBDAbortiveClose
    private let tcp: Bool
    private var handshake: NBDClientHandshake
    private var assembler = NBDReplyAssembler(baseAllocationID: nil)
    private var promises: [UInt64: (promise: EventLoopPromise<NBDReplyAssembler.Reply>, command: NBDCommand, offset: UInt64,
                                    deadline: Scheduled<Void>)] = [:]
    /// Armed while requests are in flight, re-armed by every reply: the connection is given up
    /// when the server answers nothing at all for `requestTimeout` — not when requests merely
    /// queue behind others (a slow link, a busy server).
    private var watchdog: Scheduled<Void>?
    /// A server that goes on answering others but never one request is given up on too, once
    /// that request waited this many times `requestTimeout`.
    static let starvedRequestFactor: Int64 = 10
    private var context: ChannelHandlerContext?
    /// Set once the connection broke: every request from then on fails with it.
    private var broken: NBDClientError?
    private var disconnecting: EventLoopPromise<Void>?
    /// The negotiation ended with an export: messages are replies from now on.
    private var transmitting = false
    /// Completed when the negotiation ends.
    private let negotiated: EventLoopPromise<NBDClientHandshake.Export>

    init(uri: NBDURI, tls: (any NBDTLSProvider)?, requestTimeout: TimeAmount, health: NBDClient.Health,
         head: NBDAbortiveClose, tcp: Bool, negotiated: EventLoopPromise<NBDClientHandshake.Export>) {
        self.health = health
        self.head = head
        self.tcp = tcp
        self.uri = uri
        self.tls = tls
        self.requestTimeout = requestTimeout
        self.negotiated = negotiated
        handshake = NBDClientHandshake(exportName: uri.exportName, tls: tls != nil)
        let lengths = ReadLengths()
        decoder = NBDReplyFrameDecoder(readLength: { lengths.of?($0) })
        lengths.of = { [unowned self] in assembler.readLength(of: $0) }
    }

    /// The decoder asks the assembler for the length of a simple READ reply through this box (the
    /// decoder is made before the handler can be referred to).
    private final class ReadLengths { var of: ((UInt64) -> Int?)? }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let message = unwrapInboundIn(data)
        guard broken == nil else { return }
        if transmitting {
            reply(message)
        } else {
            negotiate(message, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        breakConnection("the server closed the connection")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        breakConnection(error is NBDProtocolError ? "\(error)" : "connection error: \(error)")
    }

    /// The TLS handshake after STARTTLS ended: the negotiation goes on inside it.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, !transmitting, broken == nil {
            decoder.tlsStarted()
            run(handshake.tlsEstablished(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func negotiate(_ message: NBDServerMessage, context: ChannelHandlerContext) {
        run(handshake.receive(message), context: context)
    }

    private func run(_ actions: [NBDClientHandshake.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .send(let bytes):
                context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
            case .transmit(let export):
                assembler = NBDReplyAssembler(baseAllocationID: export.baseAllocationID)
                decoder.startTransmission()
                transmitting = true
                negotiated.succeed(export)
            case .startTLS:
                do {
                    guard let tls else { throw NBDClientHandshakeError.protocolViolation("STARTTLS without TLS settings") }
                    try context.pipeline.syncOperations.addHandler(try tls.makeHandler(), position: .after(head))
                } catch {
                    breakConnection("cannot start TLS: \(error)")
                }
            case .fail(let error):
                breakConnection("\(error)")
            }
        }
    }

    private func reply(_ message: NBDServerMessage) {
        do {
            guard let (cookie, outcome) = try assembler.receive(message), let entry = promises.removeValue(forKey: cookie) else { return }
            entry.deadline.cancel()
            rearmWatchdog()
            switch outcome {
            case .success(let reply): entry.promise.succeed(reply)
            case .failure(let failure): entry.promise.fail(NBDClientError(uri: uri, reason: "\(failure)", failure: failure))
            }
            if promises.isEmpty, let disconnecting { sendDisconnect(disconnecting) }
        } catch {
            breakConnection("\(error)")
        }
    }

    func send(_ command: NBDCommand, flags: NBDCommandFlags, offset: UInt64, length: UInt32,
              payload: ByteBuffer?) -> EventLoopFuture<NBDReplyAssembler.Reply> {
        if let broken { return negotiated.futureResult.eventLoop.makeFailedFuture(broken) }
        guard let context else { return failed("the connection is closed") }
        guard disconnecting == nil else { return failed("the connection is closing") }
        let request = assembler.register(command, flags: flags, offset: offset, length: length)
        let promise = context.eventLoop.makePromise(of: NBDReplyAssembler.Reply.self)
        let limit = TimeAmount.nanoseconds(requestTimeout.nanoseconds * Self.starvedRequestFactor)
        let deadline = context.eventLoop.assumeIsolated().scheduleTask(in: limit) { [self] in
            breakConnection("no reply to \(command) at offset \(offset) within \(limit.nanoseconds / 1_000_000_000) s, "
                            + "though the server answered others")
        }
        promises[request.cookie] = (promise, command, offset, deadline)
        if watchdog == nil { rearmWatchdog() }
        var header = context.channel.allocator.buffer(capacity: NBDRequest.wireSize)
        NBDCodec.writeRequest(request, into: &header)
        context.write(wrapOutboundOut(header), promise: nil)
        if let payload { context.write(wrapOutboundOut(payload), promise: nil) }
        context.flush()
        return promise.futureResult
    }

    /// Starts the watchdog's time again if requests are in flight, stops it if none is.
    private func rearmWatchdog() {
        watchdog?.cancel()
        watchdog = nil
        guard !promises.isEmpty, let context else { return }
        watchdog = context.eventLoop.assumeIsolated().scheduleTask(in: requestTimeout) { [self] in
            let oldest = promises.min { $0.key < $1.key }?.value
            breakConnection("no reply to any of \(promises.count) requests within \(requestTimeout.nanoseconds / 1_000_000_000) s"
                            + (oldest.map { " (the oldest: \($0.command) at offset \($0.offset))" } ?? ""))
        }
    }

    /// DISC once nothing is in flight; completes when it is sent.
    func disconnect() -> EventLoopFuture<Void> {
        guard let context, broken == nil else {
            head.abort()
            return (self.context?.eventLoop ?? negotiated.futureResult.eventLoop).makeSucceededVoidFuture()
        }
        if let disconnecting { return disconnecting.futureResult }
        let promise = context.eventLoop.makePromise(of: Void.self)
        disconnecting = promise
        if promises.isEmpty { sendDisconnect(promise) }
        return promise.futureResult
    }

    private func sendDisconnect(_ promise: EventLoopPromise<Void>) {
        guard let context else { return promise.succeed(()) }
        var header = context.channel.allocator.buffer(capacity: NBDRequest.wireSize)
        NBDCodec.writeRequest(NBDRequest(flags: [], command: .disconnect, cookie: 0, offset: 0, length: 0), into: &header)
        // Every request was answered: nothing unsent is in doubt, so the close delivers DISC (and
        // TLS's close_notify) instead of resetting the connection.
        let channel = context.channel, tcp = self.tcp
        context.writeAndFlush(wrapOutboundOut(header)).flatMap { NBDAbortiveClose.disarm(channel, tcp: tcp) }
            .assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
                promise.succeed(())
            }
    }

    private func failed(_ reason: String) -> EventLoopFuture<NBDReplyAssembler.Reply> {
        negotiated.futureResult.eventLoop.makeFailedFuture(NBDClientError(uri: uri, reason: reason))
    }

    /// The connection is unusable: the socket is closed at once, dropping what it had not sent
    /// (`NBDAbortiveClose`), and only then do the negotiation and every request in flight fail
    /// with `reason` — so a failed request can no longer reach the server from this host.
    private func breakConnection(_ reason: String) {
        guard broken == nil else { return }
        let error = NBDClientError(uri: uri, reason: reason)
        broken = error
        health.broken.withLock { $0 = reason }
        head.abort()
        if !transmitting { negotiated.fail(error) }
        let waiting = promises
        promises = [:]
        watchdog?.cancel()
        watchdog = nil
        for (_, entry) in waiting {
            entry.deadline.cancel()
            entry.promise.fail(error)
        }
        disconnecting?.succeed(())
        disconnecting = nil
    }
}
