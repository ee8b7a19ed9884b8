import BlockExport
import BlockIO
import Logging
import NIOCore

/// The transmission phase of one connection (nbdkit's protocol.c): requests framed by the
/// connection's `NBDConnectionFraming`, checked (`NBDRequestValidation`), sent to the export, and answered.
/// Requests are dispatched as soon as they are admitted, so many are in flight at once and replies
/// go out in completion order, flushed once per event-loop tick.
///
/// What a client can make the server hold is bounded (`NBDServerLimits`): a request is admitted
/// only while this connection holds fewer than its limits of requests and payload bytes (counted
/// until the reply has been written to the socket, so unread replies count) and the server-wide
/// payload budget has room; otherwise the request waits and reading stops (the channel runs with
/// auto-read off): what the decoder framed after it from bytes already read waits in order behind
/// it. A WRITE's payload is gathered in one buffer of exactly its size. Time limits
/// (`NBDConnectionTimeouts`, through the connection's clock) close connections that stall or (if
/// asked) idle. Every log line a client can cause goes through the server's `NBDLogLimiter`.
final class NBDTransmissionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Extents returned by one BLOCK_STATUS reply at most.
    static let maximumExtents = 1024

    private enum Phase {
        case request
        /// A request waiting for room under this connection's limits or the server's budget.
        case admitting(NBDRequest)
        /// Receiving an admitted WRITE's payload (`cost` bytes reserved for it).
        case payload(NBDRequest, cost: Int)
        /// Skipping the payload of a rejected WRITE so the stream stays in step, then replying `error`.
        case discarding(NBDRequest, error: NBDErrorCode, message: String)
        case closing
    }

    /// What the decoder passed on and this handler has not handled yet, in order.
    private enum Input {
        case message(NBDClientMessage)
        /// The stream broke here (bad magic): close after what came before it.
        case violation(NBDProtocolError)
    }

    private let environment: NBDConnectionEnvironment
    private let negotiated: NBDNegotiated
    private let framing: NBDConnectionFraming
    private let clock: NBDConnectionClock
    private let logger: Logger
    private var phase = Phase.request
    /// Inputs behind a request waiting for room.
    private var pending = CircularBuffer<Input>()
    /// The part of a WRITE's payload received so far, when it arrives in pieces.
    private var partialPayload: ByteBuffer?
    private var context: ChannelHandlerContext?
    private var load: NBDConnectionLoad
    private var flushScheduled = false
    /// Written after the replies of each flush; its completion releases them.
    private var marker = ByteBuffer()

    init(environment: NBDConnectionEnvironment, negotiated: NBDNegotiated, framing: NBDConnectionFraming,
         clock: NBDConnectionClock, logger: Logger) {
        self.environment = environment
        self.negotiated = negotiated
        self.framing = framing
        self.clock = clock
        self.logger = logger
        load = NBDConnectionLoad(maximumRequests: environment.limits.maximumRequestsPerConnection,
                                 maximumBytes: environment.limits.maximumPayloadBytesPerConnection)
    }

    private var export: any BlockExport { negotiated.export }

    /// Logs a line a client can cause, through the server-wide rate limit.
    private func limitedLog(_ kind: NBDLogLimiter.Kind, _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message,
                            context: ChannelHandlerContext) {
        environment.logLimiter.log(kind, level, message(), to: logger, scheduleOn: context.eventLoop)
    }

    // MARK: Channel events

    /// Added by the negotiation handler with the connection already active: the clock now
    /// applies transmission's limits.
    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        marker = context.channel.allocator.buffer(capacity: 0)
        clock.watch(context: context, activity: { [self] in activity }) { [self] why in
            limitedLog(.timeout, .notice, "closing connection: \(why)", context: context)
            enterClosing()
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        clock.stop()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch phase {
        case .payload, .discarding:
            limitedLog(.disconnect, .info, "client disconnected in the middle of a request", context: context)
        default:
            logger.debug("client disconnected", metadata: ["in-flight": "\(load.held.requests)"])
        }
        enterClosing()
        // Replies queued since the last flush will never be written.
        if let unflushed = load.takeUnflushed() { release(unflushed) }
        clock.stop()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do throws(NBDProtocolError) {
            try framing.process(unwrapInboundIn(data)) { message in receive(.message(message), context: context) }
        } catch {
            receive(.violation(error), context: context)
        }
    }

    /// A message framed from the read in which the negotiation handed over (bytes behind the GO).
    func receive(_ message: NBDClientMessage) {
        guard let context else { return }
        receive(.message(message), context: context)
    }

    /// The stream broke in the read in which the negotiation handed over.
    func receive(violation: NBDProtocolError) {
        guard let context else { return }
        receive(.violation(violation), context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Bytes came in (whole messages or not): the client makes progress.
        clock.progressed()
        // Cleared first: a reply queued while flushing (a release admits a waiting request) schedules its own flush.
        flushScheduled = false
        flushReplies(context: context)
        readMoreIfAllowed(context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error: \(error)")
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        readMoreIfAllowed(context: context)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case NBDConnectionEvent.finish = event {
            beginClose()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Asks the channel for more input unless closing, a request waits for room, or the client is
    /// not reading its replies (the outbound buffer is above its high-water mark).
    private func readMoreIfAllowed(context: ChannelHandlerContext) {
        switch phase {
        case .closing, .admitting: return
        default: break
        }
        guard context.channel.isWritable else { return }
        context.read()
    }

    /// Stops transmission: no more input is read; the channel closes once the requests in flight
    /// have been answered.
    private func beginClose() {
        enterClosing()
        closeIfIdle()
    }

    /// Enters `.closing`; a request whose payload was still arriving is dropped, and what it held
    /// is released.
    private func enterClosing() {
        let abandoned: NBDConnectionLoad.Batch?
        switch phase {
        case .payload(_, let cost): abandoned = .init(requests: 1, bytes: cost)
        case .discarding: abandoned = .init(requests: 1, bytes: 0)
        default: abandoned = nil
        }
        phase = .closing
        partialPayload = nil
        pending.removeAll()
        if let abandoned { release(abandoned) }
    }

    private func closeIfIdle() {
        guard case .closing = phase, load.atExport == 0, let context else { return }
        flushReplies(context: context)
        context.close(promise: nil)
    }

    // MARK: Input

    /// Handles `input` now, or queues it behind a request that waits for room.
    private func receive(_ input: Input, context: ChannelHandlerContext) {
        switch phase {
        case .closing: return
        case .admitting: pending.append(input)
        default: handle(input, context: context)
        }
        process(context: context)
    }

    /// Admits the waiting request and handles the inputs queued behind it, until one waits again.
    private func process(context: ChannelHandlerContext) {
        while true {
            switch phase {
            case .closing:
                return
            case .admitting(let request):
                guard admit(request, context: context) else { return }
            default:
                guard let input = pending.popFirst() else { return }
                handle(input, context: context)
            }
        }
    }

    private func handle(_ input: Input, context: ChannelHandlerContext) {
        switch (phase, input) {
        case (_, .violation(let error)):
            limitedLog(.protocolError, .warning, "closing connection: \(error)", context: context)
            beginClose()
        case (.request, .message(.request(let request))):
            logger.trace("\(request.command) offset \(request.offset) length \(request.length)")
            guard request.command != .disconnect else {
                logger.debug("client sent DISC")
                return beginClose()
            }
            phase = .admitting(request)
        case let (.payload(request, cost), .message(.payload(piece, last))):
            receivePayload(piece, last: last, of: request, cost: cost, context: context)
        case let (.discarding(request, error, message), .message(.payload(_, last))):
            guard last else { return }
            phase = .request
            replyError(request, error, message, cost: 0, context: context)
        default:
            // The decoder frames a request's payload right behind it, and nothing else.
            preconditionFailure("\(input) in transmission phase \(phase)")
        }
    }

    // MARK: Admission

    /// Starts `request` if this connection's limits and the server's payload budget have room for
    /// it; otherwise it stays in `.admitting` (reading stops) until replies are written or memory
    /// frees elsewhere, and false is returned.
    private func admit(_ request: NBDRequest, context: ChannelHandlerContext) -> Bool {
        let rejection = NBDRequestValidation.rejection(of: request, negotiated: negotiated)
        let cost = rejection == nil && (request.command == .read || request.command == .write) ? Int(request.length) : 0
        guard load.fits(cost), reserve(cost, context: context) else { return false }
        load.admit(cost)
        if let (error, message) = rejection {
            if request.hasPayload && request.length > 0 {
                phase = .discarding(request, error: error, message: message)
            } else {
                phase = .request
                replyError(request, error, message, cost: 0, context: context)
            }
        } else if request.hasPayload && request.length > 0 {
            phase = .payload(request, cost: cost)
        } else {
            phase = .request
            dispatch(request, payload: nil, cost: cost, context: context)
        }
        return true
    }

    /// Reserves `cost` bytes of the server's budget, or arranges to retry when memory frees.
    private func reserve(_ cost: Int, context: ChannelHandlerContext) -> Bool {
        let budget = environment.budget
        let held = load.held.bytes
        if budget.reserve(cost, held: held) { return true }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        return budget.reserve(cost, held: held) { handler.eventLoop.execute { handler.value.resumeAdmission() } }
    }

    /// Memory freed somewhere: the request waiting in `.admitting` tries again.
    private func resumeAdmission() {
        guard let context, case .admitting = phase else { return }
        process(context: context)
        readMoreIfAllowed(context: context)
    }

    /// Gathers a WRITE's payload; dispatches the request once it is complete.
    private func receivePayload(_ piece: ByteBuffer, last: Bool, of request: NBDRequest, cost: Int, context: ChannelHandlerContext) {
        if partialPayload == nil && last {
            phase = .request
            return dispatch(request, payload: piece, cost: cost, context: context)
        }
        // In pieces: one buffer of exactly the payload's size, so the memory is what was reserved.
        var payload = partialPayload ?? context.channel.allocator.buffer(capacity: Int(request.length))
        partialPayload = nil
        payload.writeImmutableBuffer(piece)
        guard last else {
            partialPayload = payload
            return
        }
        phase = .request
        dispatch(request, payload: payload, cost: cost, context: context)
    }

    // MARK: Serving

    private func dispatch(_ request: NBDRequest, payload: ByteBuffer?, cost: Int, context: ChannelHandlerContext) {
        let loop = context.eventLoop
        let fua = request.flags.contains(.fua)
        let length = UInt64(request.length)
        load.dispatched()
        switch request.command {
        case .read:
            let future = export.read(offset: request.offset, length: Int(request.length), allocator: context.channel.allocator, on: loop)
            answer(request, cost: cost, when: future) { data, context in self.replyData(request, data, cost: cost, context: context) }
        case .blockStatus:
            let maxExtents = request.flags.contains(.requestOne) ? 1 : Self.maximumExtents
            let future = export.blockStatus(offset: request.offset, length: length, maxExtents: maxExtents, on: loop)
            answer(request, cost: cost, when: future) { extents, context in self.replyBlockStatus(request, extents, context: context) }
        default:
            let future: EventLoopFuture<Void>
            switch request.command {
            case .write:
                future = export.write(offset: request.offset, data: payload ?? ByteBuffer(), fua: fua, on: loop)
            case .flush:
                future = export.flush(on: loop)
            case .trim:
                future = export.trim(offset: request.offset, length: length, fua: fua, on: loop)
            case .writeZeroes:
                future = export.writeZeroes(offset: request.offset, length: length, mayTrim: !request.flags.contains(.noHole),
                                            fastOnly: request.flags.contains(.fastZero), fua: fua, on: loop)
            default:
                future = export.cache(offset: request.offset, length: length, on: loop)
            }
            answer(request, cost: cost, when: future) { _, context in self.replySuccess(request, cost: cost, context: context) }
        }
    }

    /// When `future` completes: the reply `success` writes, or an error reply.
    private func answer<Value>(_ request: NBDRequest, cost: Int, when future: EventLoopFuture<Value>,
                               success: @escaping (Value, ChannelHandlerContext) -> Void) {
        future.assumeIsolated().whenComplete { [self] result in
            finish(request, cost: cost) { context in
                switch result {
                case .success(let value): success(value, context)
                case .failure(let error): replyError(request, error, cost: cost, context: context)
                }
            }
        }
    }

    /// Accounts for a request the export finished, sends its reply if the channel is still there
    /// (else releases what it held at once), and closes if closing.
    private func finish(_ request: NBDRequest, cost: Int, reply: (ChannelHandlerContext) -> Void) {
        load.completed()
        clock.progressed()
        guard let context, context.channel.isActive else { return release(.init(requests: 1, bytes: cost)) }
        reply(context)
        scheduleFlush(context: context)
        if case .closing = phase { closeIfIdle() }
    }

    /// Forgets requests whose replies have been written (or never will be): their bytes go back to
    /// the server's budget, and a request waiting for room tries again.
    private func release(_ batch: NBDConnectionLoad.Batch) {
        load.release(batch)
        environment.budget.release(batch.bytes)
        clock.progressed()
        switch phase {
        case .admitting: resumeAdmission()
        case .closing: closeIfIdle()
        default: break
        }
    }

    // MARK: Replies

    /// Flushes once after the replies completed in this event-loop tick, not once per reply.
    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            guard flushScheduled, let context = self.context else { return }
            flushScheduled = false
            flushReplies(context: context)
        }
    }

    /// Flushes the replies queued so far, followed by a marker whose completion (the socket writes
    /// in order) releases them.
    private func flushReplies(context: ChannelHandlerContext) {
        if let batch = load.takeUnflushed() {
            let written = context.eventLoop.makePromise(of: Void.self)
            context.write(wrapOutboundOut(marker), promise: written)
            written.futureResult.assumeIsolated().whenComplete { [self] _ in release(batch) }
        }
        context.flush()
    }

    /// Writes one request's reply (a header, and data if any), counted until a flush marker
    /// completes behind it.
    private func queueReply(_ header: ByteBuffer, data: ByteBuffer? = nil, cost: Int, context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(header), promise: nil)
        if let data { context.write(wrapOutboundOut(data), promise: nil) }
        load.replyQueued(cost: cost)
    }

    private func replySuccess(_ request: NBDRequest, cost: Int, context: ChannelHandlerContext) {
        var header = context.channel.allocator.buffer(capacity: 16)
        NBDCodec.writeSimpleReply(cookie: request.cookie, error: .ok, into: &header)
        queueReply(header, cost: cost, context: context)
    }

    private func replyData(_ request: NBDRequest, _ data: ByteBuffer, cost: Int, context: ChannelHandlerContext) {
        var header = context.channel.allocator.buffer(capacity: 28)
        if negotiated.structuredReplies && data.readableBytes == 0 {
            // OFFSET_DATA must carry data: an empty read is answered with a lone NONE chunk.
            NBDCodec.writeChunkHeader(cookie: request.cookie, type: .none, done: true, length: 0, into: &header)
            return queueReply(header, cost: cost, context: context)
        } else if negotiated.structuredReplies {
            NBDCodec.writeOffsetDataHeader(cookie: request.cookie, offset: request.offset, dataLength: data.readableBytes, into: &header)
        } else {
            NBDCodec.writeSimpleReply(cookie: request.cookie, error: .ok, into: &header)
        }
        queueReply(header, data: data, cost: cost, context: context)
    }

    private func replyBlockStatus(_ request: NBDRequest, _ extents: [BlockExtent], context: ChannelHandlerContext) {
        let descriptors = extents.map { extent in
            (length: UInt32(clamping: extent.length),
             flags: (extent.isHole ? NBDMetaContext.stateHole : 0) | (extent.isZero ? NBDMetaContext.stateZero : 0))
        }
        var buffer = context.channel.allocator.buffer(capacity: 24 + 8 * descriptors.count)
        NBDCodec.writeBlockStatusChunk(cookie: request.cookie, contextID: NBDMetaContext.baseAllocationID,
                                       extents: descriptors, into: &buffer)
        queueReply(buffer, cost: 0, context: context)
    }

    private func replyError(_ request: NBDRequest, _ error: any Error, cost: Int, context: ChannelHandlerContext) {
        if let error = error as? BlockExportError {
            if error.kind == .io { limitedLog(.requestError, .error, "\(request.command) failed: \(error.message)", context: context) }
            replyError(request, error.kind.nbdError, error.message, cost: cost, context: context)
        } else {
            limitedLog(.requestError, .error, "\(request.command) failed: \(error)", context: context)
            replyError(request, .io, "\(error)", cost: cost, context: context)
        }
    }

    private func replyError(_ request: NBDRequest, _ error: NBDErrorCode, _ message: String, cost: Int, context: ChannelHandlerContext) {
        logger.debug("\(request.command) offset \(request.offset) length \(request.length): \(error): \(message)")
        var buffer = context.channel.allocator.buffer(capacity: 32 + min(message.utf8.count, NBDCodec.maximumStringLength))
        if negotiated.structuredReplies && (request.command == .read || request.command == .blockStatus) {
            NBDCodec.writeErrorChunk(cookie: request.cookie, error: error, message: message, into: &buffer)
        } else {
            NBDCodec.writeSimpleReply(cookie: request.cookie, error: error, into: &buffer)
        }
        queueReply(buffer, cost: cost, context: context)
        scheduleFlush(context: context)
    }

    // MARK: Time limits

    /// What the connection is doing, for `NBDConnectionTimeouts`.
    private var activity: NBDConnectionTimeouts.Activity {
        switch phase {
        case .payload, .discarding:
            return .waitingForClient
        case .request, .admitting, .closing:
            if load.atExport > 0 { return .serverBusy }
            if load.waitsForClient { return .waitingForClient }
            if case .admitting = phase { return .serverBusy }
            return .idle
        }
    }
}
