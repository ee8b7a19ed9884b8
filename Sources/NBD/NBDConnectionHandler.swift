import BlockExport
import BlockIO
import Logging
import NIOCore

/// One client connection: the fixed-newstyle negotiation, then transmission.
///
/// Owns the connection's state machine and its input buffer; message formats live in `NBDCodec`.
/// Requests are dispatched as soon as they are decoded, so many are in flight at once and replies go
/// out in completion order.
///
/// What a client can make the server hold is bounded (`NBDServerLimits`): a request is admitted
/// only while this connection holds fewer than its limits of requests and payload bytes (counted
/// until the reply has been written to the socket, so unread replies count) and the server-wide
/// payload budget has room; otherwise the request waits and reading stops (the channel runs with
/// auto-read off). A WRITE's payload is gathered in one buffer of exactly its size. Time limits
/// (`NBDConnectionTimeouts`) close connections that never negotiate, stall, or (if asked) idle.
/// Every log line a client can cause goes through the server's `NBDLogLimiter`, and every byte of
/// its input that reaches a log line or an error message is escaped (`UntrustedText`).
final class NBDConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Option data beyond this closes the connection: no legitimate option comes near it.
    static let maximumOptionLength: UInt32 = 64 << 10
    /// Options one negotiation may send; real clients send a handful. Bounds the replies a client
    /// can queue by pipelining options without reading.
    static let maximumOptions = 256
    /// Extents returned by one BLOCK_STATUS reply at most.
    static let maximumExtents = 1024

    private enum Phase {
        case clientFlags
        case optionHeader
        case optionData(NBDOptionHeader)
        case request
        /// A decoded request waiting for room under this connection's limits or the server's budget.
        case admitting(NBDRequest)
        /// Receiving an admitted WRITE's payload (`cost` bytes reserved for it).
        case payload(NBDRequest, cost: Int)
        /// Skipping the payload of a rejected WRITE so the stream stays in step, then replying `error`.
        case discarding(NBDRequest, remaining: Int, error: NBDErrorCode, message: String)
        case closing
    }

    private let environment: NBDConnectionEnvironment
    private let timeouts: NBDConnectionTimeouts
    private var logger: Logger
    private var phase = Phase.clientFlags
    private var input = ByteBuffer()
    /// The part of a WRITE's payload received so far, when it arrives in pieces.
    private var partialPayload: ByteBuffer?
    private var context: ChannelHandlerContext?
    /// Set when the server is at its connection limit: every option is refused with this text.
    private var refusal: String?
    private var optionsReceived = 0

    // Negotiated.
    private var noZeroes = false
    private var structuredReplies = false
    private var baseAllocationSelected = false
    private var export: (any BlockExport)?

    // Transmission.
    private var load: NBDConnectionLoad
    private var flushScheduled = false
    /// Written after the replies of each flush; its completion releases them.
    private var marker = ByteBuffer()

    // Time limits.
    private var connectedAt = NIODeadline.now()
    /// When the client last sent bytes or took replies (or the disk last answered for it).
    private var lastProgress = NIODeadline.now()
    /// Outbound bytes waiting at the previous timer check: fewer now means the client reads.
    private var outboundSample: Int?
    private var timer: Scheduled<Void>?

    init(environment: NBDConnectionEnvironment, logger: Logger) {
        self.environment = environment
        self.timeouts = environment.timeouts
        self.logger = logger
        self.load = NBDConnectionLoad(maximumRequests: environment.limits.maximumRequestsPerConnection,
                                      maximumBytes: environment.limits.maximumPayloadBytesPerConnection)
    }

    private var registry: NBDExportRegistry { environment.registry }

    /// Logs a line a client can cause, through the server-wide rate limit.
    private func limitedLog(_ kind: NBDLogLimiter.Kind, _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message,
                            context: ChannelHandlerContext) {
        environment.logLimiter.log(kind, level, message(), to: logger, scheduleOn: context.eventLoop)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        input = context.channel.allocator.buffer(capacity: 0)
        marker = context.channel.allocator.buffer(capacity: 0)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if let peer = context.channel.remoteAddress { logger[metadataKey: "peer"] = "\(peer)" }
        connectedAt = .now()
        lastProgress = connectedAt
        if environment.tracker.register(context.channel) {
            logger.debug("client connected")
        } else {
            let limit = environment.tracker.limit
            refusal = "the server is at its limit of \(limit) connections; try again later"
            limitedLog(.refused, .warning, "refused a connection: the limit of \(limit) connections is reached", context: context)
        }
        var greeting = context.channel.allocator.buffer(capacity: 18)
        NBDCodec.writeGreeting([.fixedNewstyle, .noZeroes], into: &greeting)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        armTimer(context: context)
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch phase {
        case .payload, .discarding:
            limitedLog(.disconnect, .info, "client disconnected in the middle of a request", context: context)
        case .clientFlags, .optionHeader, .optionData:
            logger.debug("client disconnected during negotiation")
        default:
            logger.debug("client disconnected", metadata: ["in-flight": "\(load.held.requests)"])
        }
        enterClosing()
        // Replies queued since the last flush will never be written.
        if let unflushed = load.takeUnflushed() { release(unflushed) }
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        lastProgress = .now()
        if input.readableBytes == 0 {
            input = incoming
        } else {
            input.writeBuffer(&incoming)
        }
        process(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
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

    /// Stops negotiation or transmission: no more input is read; the channel closes once the
    /// requests in flight have been answered.
    func beginClose() {
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
        if let abandoned { release(abandoned) }
    }

    private func closeIfIdle() {
        guard case .closing = phase, load.atExport == 0, let context else { return }
        flushReplies(context: context)
        context.close(promise: nil)
    }

    // MARK: Input state machine

    private func process(context: ChannelHandlerContext) {
        do {
            while try step(context: context) {}
        } catch {
            limitedLog(.protocolError, .warning, "closing connection: \(error)", context: context)
            enterClosing()
            input.clear()
            closeIfIdle()
            return
        }
        if input.readableBytes == 0 {
            input.clear()
        } else if input.readerIndex > 1 << 20 {
            input.discardReadBytes()
        }
    }

    /// Consumes one message if the input holds it; false when more input (or room) is needed.
    private func step(context: ChannelHandlerContext) throws -> Bool {
        switch phase {
        case .clientFlags:
            guard let flags = try NBDCodec.readClientFlags(from: &input) else { return false }
            noZeroes = flags.contains(.noZeroes)
            if !flags.contains(.fixedNewstyle) { logger.debug("client did not set FIXED_NEWSTYLE") }
            phase = .optionHeader
        case .optionHeader:
            guard let header = try NBDCodec.readOptionHeader(from: &input) else { return false }
            guard header.length <= Self.maximumOptionLength else {
                throw NBDProtocolError.optionTooLong(option: header.option, length: header.length, limit: Self.maximumOptionLength)
            }
            optionsReceived += 1
            guard optionsReceived <= Self.maximumOptions else { throw NBDProtocolError.tooManyOptions(limit: Self.maximumOptions) }
            phase = .optionData(header)
        case .optionData(let header):
            guard let data = input.readSlice(length: Int(header.length)) else { return false }
            phase = .optionHeader
            try handleOption(header.option, data: data, context: context)
        case .request:
            guard let request = try NBDCodec.readRequest(from: &input) else { return false }
            logger.trace("\(request.command) offset \(request.offset) length \(request.length)")
            guard request.command != .disconnect else {
                logger.debug("client sent DISC")
                beginClose()
                return false
            }
            phase = .admitting(request)
        case .admitting(let request):
            return admit(request, context: context)
        case .payload(let request, let cost):
            return receivePayload(of: request, cost: cost, context: context)
        case let .discarding(request, remaining, error, message):
            let skipped = min(remaining, input.readableBytes)
            guard skipped > 0 || remaining == 0 else { return false }
            input.moveReaderIndex(forwardBy: skipped)
            if remaining - skipped > 0 {
                phase = .discarding(request, remaining: remaining - skipped, error: error, message: message)
                return false
            }
            phase = .request
            replyError(request, error, message, cost: 0, context: context)
        case .closing:
            return false
        }
        return true
    }

    // MARK: Negotiation

    private func handleOption(_ option: NBDOption, data: ByteBuffer, context: ChannelHandlerContext) throws {
        logger.trace("option \(option), \(data.readableBytes) bytes")
        if let refusal {
            switch option {
            case .abort: sendOptionReply(option, .ack, context: context)
            case .exportName: break  // it has no error reply: closing is the answer
            default: sendOptionError(option, .errorPolicy, refusal, context: context)
            }
            return beginClose()
        }
        switch option {
        case .exportName:
            guard let entry = String(validating: data.readableBytesView, as: UTF8.self).flatMap(registry.lookup) else {
                // This option has no error reply: the spec's only answer is to close.
                throw NBDProtocolError.malformedOption(option, "no export named \"\(UntrustedText.escape(bytes: data.readableBytesView))\"")
            }
            var reply = context.channel.allocator.buffer(capacity: 134)
            let flags = entry.export.capabilities.transmissionFlags(structuredReplies: structuredReplies)
            NBDCodec.writeExportNameReply(size: entry.export.size, flags: flags, noZeroes: noZeroes, into: &reply)
            context.write(wrapOutboundOut(reply), promise: nil)
            startTransmission(entry)
        case .abort:
            if data.readableBytes == 0 { sendOptionReply(option, .ack, context: context) }
            logger.debug("client aborted negotiation")
            beginClose()
        case .list:
            guard data.readableBytes == 0 else {
                return sendOptionError(option, .errorInvalid, "LIST takes no data", context: context)
            }
            for entry in registry.entries {
                var payload = context.channel.allocator.buffer(capacity: 64)
                NBDCodec.writeString(entry.name, into: &payload)
                payload.writeString(entry.export.exportDescription)
                sendOptionReply(option, .server, data: payload, context: context)
            }
            sendOptionReply(option, .ack, context: context)
        case .info, .go:
            let request: NBDExportRequest
            do { request = try NBDCodec.parseExportRequest(data, option: option) } catch {
                return sendOptionError(option, .errorInvalid, error.description, context: context)
            }
            guard let entry = registry.lookup(request.name) else {
                return sendOptionError(option, .errorUnknown, Self.noSuchExport(request.name), context: context)
            }
            sendExportInfo(option, entry: entry, requested: request.requestedInfo, context: context)
            sendOptionReply(option, .ack, context: context)
            if option == .go { startTransmission(entry) }
        case .structuredReply:
            guard data.readableBytes == 0 else {
                return sendOptionError(option, .errorInvalid, "STRUCTURED_REPLY takes no data", context: context)
            }
            structuredReplies = true
            sendOptionReply(option, .ack, context: context)
        case .listMetaContext, .setMetaContext:
            try handleMetaContext(option, data: data, context: context)
        case .startTLS:
            sendOptionError(option, .errorUnsupported, "TLS is not supported by this server", context: context)
        default:
            sendOptionError(option, .errorUnsupported, "\(option) is not supported", context: context)
        }
    }

    /// The error text for an unknown export name (the client's bytes escaped and truncated).
    private static func noSuchExport(_ name: String) -> String {
        "no export named \"\(UntrustedText.escape(name))\""
    }

    private func handleMetaContext(_ option: NBDOption, data: ByteBuffer, context: ChannelHandlerContext) throws {
        if option == .setMetaContext && !structuredReplies {
            return sendOptionError(option, .errorInvalid, "SET_META_CONTEXT needs STRUCTURED_REPLY first", context: context)
        }
        let request: NBDMetaContextRequest
        do { request = try NBDCodec.parseMetaContextRequest(data, option: option) } catch {
            return sendOptionError(option, .errorInvalid, error.description, context: context)
        }
        guard registry.lookup(request.exportName) != nil else {
            return sendOptionError(option, .errorUnknown, Self.noSuchExport(request.exportName), context: context)
        }
        // LIST with no query lists everything; "base:" lists the base namespace.
        let matches = request.queries.contains(NBDMetaContext.baseAllocation)
            || (option == .listMetaContext && (request.queries.isEmpty || request.queries.contains("base:")))
        if option == .setMetaContext { baseAllocationSelected = matches }
        if matches {
            var payload = context.channel.allocator.buffer(capacity: 32)
            payload.writeInteger(option == .setMetaContext ? NBDMetaContext.baseAllocationID : 0)
            payload.writeString(NBDMetaContext.baseAllocation)
            sendOptionReply(option, .metaContext, data: payload, context: context)
        }
        sendOptionReply(option, .ack, context: context)
    }

    private func sendExportInfo(_ option: NBDOption, entry: NBDExportRegistry.Entry, requested: [NBDInfo], context: ChannelHandlerContext) {
        let export = entry.export
        var payload = context.channel.allocator.buffer(capacity: 64)
        NBDCodec.writeInfoExport(size: export.size, flags: export.capabilities.transmissionFlags(structuredReplies: structuredReplies),
                                 into: &payload)
        sendOptionReply(option, .info, data: payload, context: context)
        // Block sizes go out whether asked or not: they tell every client the largest payload.
        let sizes = export.capabilities.blockSizes
        payload.clear()
        NBDCodec.writeInfoBlockSize(minimum: sizes.minimum, preferred: sizes.preferred, maximum: sizes.maximum, into: &payload)
        sendOptionReply(option, .info, data: payload, context: context)
        if requested.contains(.name) {
            payload.clear()
            NBDCodec.writeInfoString(.name, entry.name, into: &payload)
            sendOptionReply(option, .info, data: payload, context: context)
        }
        if requested.contains(.description) {
            payload.clear()
            NBDCodec.writeInfoString(.description, export.exportDescription, into: &payload)
            sendOptionReply(option, .info, data: payload, context: context)
        }
    }

    private func startTransmission(_ entry: NBDExportRegistry.Entry) {
        export = entry.export
        logger[metadataKey: "export"] = "\(entry.name)"
        logger.debug("transmission started", metadata: ["structured": "\(structuredReplies)"])
        phase = .request
        // The handshake deadline no longer applies: look again with transmission's limits.
        timer?.cancel()
        if let context { armTimer(context: context) }
    }

    private func sendOptionReply(_ option: NBDOption, _ reply: NBDOptionReply, data: ByteBuffer? = nil, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 20 + (data?.readableBytes ?? 0))
        NBDCodec.writeOptionReply(option, reply, data: data, into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    /// An error reply; `message` must already have the client's bytes escaped.
    private func sendOptionError(_ option: NBDOption, _ reply: NBDOptionReply, _ message: String, context: ChannelHandlerContext) {
        logger.debug("refused \(option): \(message)")
        var buffer = context.channel.allocator.buffer(capacity: 20 + min(message.utf8.count, NBDCodec.maximumStringLength))
        NBDCodec.writeOptionError(option, reply, message: message, into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    // MARK: Transmission

    /// Starts `request` if this connection's limits and the server's payload budget have room for
    /// it; otherwise it stays in `.admitting` (reading stops) until replies are written or memory
    /// frees elsewhere, and false is returned.
    private func admit(_ request: NBDRequest, context: ChannelHandlerContext) -> Bool {
        let rejection = rejection(of: request)
        let cost = rejection == nil && (request.command == .read || request.command == .write) ? Int(request.length) : 0
        guard load.fits(cost), reserve(cost, context: context) else { return false }
        load.admit(cost)
        if let (error, message) = rejection {
            if request.hasPayload && request.length > 0 {
                phase = .discarding(request, remaining: Int(request.length), error: error, message: message)
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
    private func receivePayload(of request: NBDRequest, cost: Int, context: ChannelHandlerContext) -> Bool {
        let length = Int(request.length)
        if partialPayload == nil, let whole = input.readSlice(length: length) {
            phase = .request
            dispatch(request, payload: whole, cost: cost, context: context)
            return true
        }
        // In pieces: one buffer of exactly the payload's size, so the memory is what was reserved.
        var payload = partialPayload ?? context.channel.allocator.buffer(capacity: length)
        partialPayload = nil
        if var piece = input.readSlice(length: min(length - payload.readableBytes, input.readableBytes)) {
            payload.writeBuffer(&piece)
        }
        guard payload.readableBytes == length else {
            partialPayload = payload
            return false
        }
        phase = .request
        dispatch(request, payload: payload, cost: cost, context: context)
        return true
    }

    /// The error a request gets before it reaches the export, if any.
    private func rejection(of request: NBDRequest) -> (NBDErrorCode, String)? {
        guard let export else { return (.invalid, "no export selected") }
        guard NBDCommandFlags.known.isSuperset(of: request.flags) else {
            return (.invalid, "unknown command flags 0x\(String(request.flags.rawValue, radix: 16))")
        }
        let maximum = UInt64(export.capabilities.blockSizes.maximum)
        let command: ExportCommand
        switch request.command {
        case .read:
            if request.length > maximum {
                let error: NBDErrorCode = structuredReplies && request.flags.contains(.dontFragment) ? .overflow : .invalid
                return (error, "read of \(request.length) bytes exceeds the maximum payload of \(maximum)")
            }
            command = .read
        case .write:
            if request.length > maximum {
                return (.invalid, "write of \(request.length) bytes exceeds the maximum payload of \(maximum)")
            }
            command = .write
        case .flush:
            return nil
        case .trim:
            command = .trim
        case .writeZeroes:
            if request.flags.contains(.fastZero) && !export.capabilities.canFastZero {
                return (.invalid, "FAST_ZERO is not offered by this export")
            }
            command = .writeZeroes
        case .cache:
            command = .cache
        case .blockStatus:
            guard baseAllocationSelected else { return (.invalid, "BLOCK_STATUS without a metadata context") }
            guard request.length > 0 else { return (.invalid, "BLOCK_STATUS of length 0") }
            command = .blockStatus
        default:
            return (.invalid, "unsupported \(request.command)")
        }
        do throws(BlockExportError) {
            try export.checkRange(offset: request.offset, length: UInt64(request.length), for: command)
        } catch {
            return (error.kind.nbdError, error.message)
        }
        return nil
    }

    private func dispatch(_ request: NBDRequest, payload: ByteBuffer?, cost: Int, context: ChannelHandlerContext) {
        guard let export else { return }
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
        lastProgress = .now()
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
        lastProgress = .now()
        switch phase {
        case .admitting: resumeAdmission()
        case .closing: closeIfIdle()
        default: break
        }
    }

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
        if structuredReplies && data.readableBytes == 0 {
            // OFFSET_DATA must carry data: an empty read is answered with a lone NONE chunk.
            NBDCodec.writeChunkHeader(cookie: request.cookie, type: .none, done: true, length: 0, into: &header)
            return queueReply(header, cost: cost, context: context)
        } else if structuredReplies {
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
        if structuredReplies && (request.command == .read || request.command == .blockStatus) {
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
        case .clientFlags, .optionHeader, .optionData:
            return .negotiating
        case .payload, .discarding:
            return .waitingForClient
        case .request, .admitting, .closing:
            if load.atExport > 0 { return .serverBusy }
            if load.waitsForClient { return .waitingForClient }
            if case .admitting = phase { return .serverBusy }
            return .idle
        }
    }

    /// Asks `timeouts` what to do now, and does it: close, or look again later.
    private func armTimer(context: ChannelHandlerContext) {
        timer = nil
        switch timeouts.verdict(activity, connectedAt: connectedAt, lastProgress: lastProgress, now: .now()) {
        case .never:
            return
        case .checkAgain(let deadline):
            timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in timerFired() }
        case .close(let why):
            limitedLog(.timeout, .notice, "closing connection: \(why)", context: context)
            enterClosing()
            context.close(promise: nil)
        }
    }

    private func timerFired() {
        guard let context, context.channel.isActive else { return }
        // Replies draining from the outbound buffer, even slowly, are progress.
        let outbound = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        if let previous = outboundSample, outbound < previous { lastProgress = .now() }
        outboundSample = outbound
        armTimer(context: context)
    }
}
