import BlockExport
import Logging
import NIOCore

/// One client connection: the fixed-newstyle negotiation, then transmission.
///
/// Owns the connection's state machine and its input buffer; message formats live in `NBDCodec`.
/// Requests are dispatched as soon as they are decoded, so many are in flight at once and replies go
/// out in completion order. Reading pauses while too many requests or payload bytes are in flight
/// (the channel runs with auto-read off), which bounds the memory one client can pin.
final class NBDConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Option data beyond this closes the connection: no legitimate option comes near it.
    static let maximumOptionLength: UInt32 = 64 << 10
    /// Reading pauses above this many requests in flight…
    static let maximumRequestsInFlight = 512
    /// …or this many payload bytes (written or to be read) in flight.
    static let maximumBytesInFlight = 128 << 20
    /// Extents returned by one BLOCK_STATUS reply at most.
    static let maximumExtents = 1024

    private enum Phase {
        case clientFlags
        case optionHeader
        case optionData(NBDOptionHeader)
        case request
        case payload(NBDRequest)
        /// Skipping the payload of a rejected WRITE so the stream stays in step, then replying `error`.
        case discarding(NBDRequest, remaining: Int, error: NBDErrorCode, message: String)
        case closing
    }

    private let registry: NBDExportRegistry
    private var logger: Logger
    private let tracker: NBDConnectionTracker
    private var phase = Phase.clientFlags
    private var input: ByteBuffer!
    private var context: ChannelHandlerContext?

    // Negotiated.
    private var noZeroes = false
    private var structuredReplies = false
    private var baseAllocationSelected = false
    private var export: (any BlockExport)?

    // Transmission.
    private var requestsInFlight = 0
    private var bytesInFlight = 0
    private var flushScheduled = false

    init(registry: NBDExportRegistry, logger: Logger, tracker: NBDConnectionTracker) {
        self.registry = registry
        self.logger = logger
        self.tracker = tracker
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        input = context.channel.allocator.buffer(capacity: 0)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if let peer = context.channel.remoteAddress { logger[metadataKey: "peer"] = "\(peer)" }
        logger.debug("client connected")
        tracker.register(context.channel, handler: self)
        var greeting = context.channel.allocator.buffer(capacity: 18)
        NBDCodec.writeGreeting([.fixedNewstyle, .noZeroes], into: &greeting)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch phase {
        case .payload, .discarding:
            logger.info("client disconnected in the middle of a request")
        case .clientFlags, .optionHeader, .optionData:
            logger.debug("client disconnected during negotiation")
        default:
            logger.debug("client disconnected", metadata: ["in-flight": "\(requestsInFlight)"])
        }
        phase = .closing
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if input.readableBytes == 0 {
            input = incoming
        } else {
            input.writeBuffer(&incoming)
        }
        process(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        flushScheduled = false
        readMoreIfAllowed(context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error: \(error)")
        context.close(promise: nil)
    }

    /// Asks the channel for more input unless closing, too much is in flight, or the client is not
    /// reading its replies (the outbound buffer is above its high-water mark).
    private func readMoreIfAllowed(context: ChannelHandlerContext) {
        if case .closing = phase { return }
        guard requestsInFlight < Self.maximumRequestsInFlight, bytesInFlight < Self.maximumBytesInFlight,
              context.channel.isWritable else { return }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        readMoreIfAllowed(context: context)
        context.fireChannelWritabilityChanged()
    }

    /// Stops negotiation or transmission: no more input is read; the channel closes once the
    /// requests in flight have been answered.
    func beginClose() {
        phase = .closing
        closeIfIdle()
    }

    private func closeIfIdle() {
        guard case .closing = phase, requestsInFlight == 0, let context else { return }
        context.flush()
        context.close(promise: nil)
    }

    // MARK: Input state machine

    private func process(context: ChannelHandlerContext) {
        do {
            while try step(context: context) {}
        } catch {
            logger.warning("closing connection: \(error)")
            phase = .closing
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

    /// Consumes one message if the input holds it; false when more input is needed.
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
            phase = .optionData(header)
        case .optionData(let header):
            guard let data = input.readSlice(length: Int(header.length)) else { return false }
            phase = .optionHeader
            try handleOption(header.option, data: data, context: context)
        case .request:
            guard let request = try NBDCodec.readRequest(from: &input) else { return false }
            handleRequest(request, context: context)
        case .payload(let request):
            guard let payload = input.readSlice(length: Int(request.length)) else { return false }
            phase = .request
            dispatch(request, payload: payload, context: context)
        case let .discarding(request, remaining, error, message):
            let skipped = min(remaining, input.readableBytes)
            guard skipped > 0 || remaining == 0 else { return false }
            input.moveReaderIndex(forwardBy: skipped)
            if remaining - skipped > 0 {
                phase = .discarding(request, remaining: remaining - skipped, error: error, message: message)
                return false
            }
            phase = .request
            replyError(request, error, message, context: context)
        case .closing:
            return false
        }
        return true
    }

    // MARK: Negotiation

    private func handleOption(_ option: NBDOption, data: ByteBuffer, context: ChannelHandlerContext) throws {
        logger.trace("option \(option), \(data.readableBytes) bytes")
        switch option {
        case .exportName:
            let name = data.getString(at: data.readerIndex, length: data.readableBytes) ?? ""
            guard let entry = registry.lookup(name) else {
                // This option has no error reply: the spec's only answer is to close.
                throw NBDProtocolError.malformedOption(option, "no export named \"\(name)\"")
            }
            var reply = context.channel.allocator.buffer(capacity: 134)
            let flags = entry.export.capabilities.transmissionFlags(structuredReplies: structuredReplies)
            NBDCodec.writeExportNameReply(size: entry.export.size, flags: flags, noZeroes: noZeroes, into: &reply)
            context.write(wrapOutboundOut(reply), promise: nil)
            startTransmission(entry)
        case .abort:
            if data.readableBytes == 0 { sendOptionReply(option, .ack, context: context) }
            logger.debug("client aborted negotiation")
            phase = .closing
            closeIfIdle()
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
                return sendOptionError(option, .errorUnknown, "no export named \"\(request.name)\"", context: context)
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

    private func handleMetaContext(_ option: NBDOption, data: ByteBuffer, context: ChannelHandlerContext) throws {
        if option == .setMetaContext && !structuredReplies {
            return sendOptionError(option, .errorInvalid, "SET_META_CONTEXT needs STRUCTURED_REPLY first", context: context)
        }
        let request: NBDMetaContextRequest
        do { request = try NBDCodec.parseMetaContextRequest(data, option: option) } catch {
            return sendOptionError(option, .errorInvalid, error.description, context: context)
        }
        guard registry.lookup(request.exportName) != nil else {
            return sendOptionError(option, .errorUnknown, "no export named \"\(request.exportName)\"", context: context)
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
    }

    private func sendOptionReply(_ option: NBDOption, _ reply: NBDOptionReply, data: ByteBuffer? = nil, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 20 + (data?.readableBytes ?? 0))
        NBDCodec.writeOptionReply(option, reply, data: data, into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func sendOptionError(_ option: NBDOption, _ reply: NBDOptionReply, _ message: String, context: ChannelHandlerContext) {
        logger.debug("refused \(option): \(message)")
        var payload = context.channel.allocator.buffer(capacity: message.utf8.count)
        payload.writeString(String(message.utf8.prefix(NBDCodec.maximumStringLength))!)
        sendOptionReply(option, reply, data: payload, context: context)
    }

    // MARK: Transmission

    private func handleRequest(_ request: NBDRequest, context: ChannelHandlerContext) {
        logger.trace("\(request.command) offset \(request.offset) length \(request.length)")
        if request.command == .disconnect {
            logger.debug("client sent DISC")
            beginClose()
            return
        }
        if let (error, message) = rejection(of: request) {
            if request.hasPayload && request.length > 0 {
                phase = .discarding(request, remaining: Int(request.length), error: error, message: message)
            } else {
                replyError(request, error, message, context: context)
            }
            return
        }
        if request.hasPayload && request.length > 0 {
            phase = .payload(request)
        } else {
            dispatch(request, payload: nil, context: context)
        }
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

    private func dispatch(_ request: NBDRequest, payload: ByteBuffer?, context: ChannelHandlerContext) {
        guard let export else { return }
        let loop = context.eventLoop
        let fua = request.flags.contains(.fua)
        let length = UInt64(request.length)
        requestsInFlight += 1
        bytesInFlight += Int(request.length)
        switch request.command {
        case .read:
            let future = export.read(offset: request.offset, length: Int(request.length), allocator: context.channel.allocator, on: loop)
            answer(request, when: future) { data, context in self.replyData(request, data, context: context) }
        case .blockStatus:
            let maxExtents = request.flags.contains(.requestOne) ? 1 : Self.maximumExtents
            let future = export.blockStatus(offset: request.offset, length: length, maxExtents: maxExtents, on: loop)
            answer(request, when: future) { extents, context in self.replyBlockStatus(request, extents, context: context) }
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
            answer(request, when: future) { _, context in self.replySuccess(request, context: context) }
        }
    }

    /// When `future` completes: the reply `success` writes, or an error reply.
    private func answer<Value>(_ request: NBDRequest, when future: EventLoopFuture<Value>,
                               success: @escaping (Value, ChannelHandlerContext) -> Void) {
        future.assumeIsolated().whenComplete { [self] result in
            finish(request) { context in
                switch result {
                case .success(let value): success(value, context)
                case .failure(let error): replyError(request, error, context: context)
                }
            }
        }
    }

    /// Accounts for a finished request, sends its reply if the channel is still there, and resumes
    /// reading or closes as the state asks.
    private func finish(_ request: NBDRequest, reply: (ChannelHandlerContext) -> Void) {
        requestsInFlight -= 1
        let wasThrottled = requestsInFlight + 1 >= Self.maximumRequestsInFlight || bytesInFlight >= Self.maximumBytesInFlight
        bytesInFlight -= Int(request.length)
        guard let context, context.channel.isActive else { return }
        reply(context)
        scheduleFlush(context: context)
        if case .closing = phase {
            closeIfIdle()
        } else if wasThrottled {
            readMoreIfAllowed(context: context)
        }
    }

    /// Flushes once after the replies completed in this event-loop tick, not once per reply.
    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            guard flushScheduled else { return }
            flushScheduled = false
            self.context?.flush()
        }
    }

    private func replySuccess(_ request: NBDRequest, context: ChannelHandlerContext) {
        var header = context.channel.allocator.buffer(capacity: 16)
        NBDCodec.writeSimpleReply(cookie: request.cookie, error: .ok, into: &header)
        context.write(wrapOutboundOut(header), promise: nil)
    }

    private func replyData(_ request: NBDRequest, _ data: ByteBuffer, context: ChannelHandlerContext) {
        var header = context.channel.allocator.buffer(capacity: 28)
        if structuredReplies && data.readableBytes == 0 {
            // OFFSET_DATA must carry data: an empty read is answered with a lone NONE chunk.
            NBDCodec.writeChunkHeader(cookie: request.cookie, type: .none, done: true, length: 0, into: &header)
            context.write(wrapOutboundOut(header), promise: nil)
            return
        } else if structuredReplies {
            NBDCodec.writeOffsetDataHeader(cookie: request.cookie, offset: request.offset, dataLength: data.readableBytes, into: &header)
        } else {
            NBDCodec.writeSimpleReply(cookie: request.cookie, error: .ok, into: &header)
        }
        context.write(wrapOutboundOut(header), promise: nil)
        context.write(wrapOutboundOut(data), promise: nil)
    }

    private func replyBlockStatus(_ request: NBDRequest, _ extents: [BlockExtent], context: ChannelHandlerContext) {
        let descriptors = extents.map { extent in
            (length: UInt32(clamping: extent.length),
             flags: (extent.isHole ? NBDMetaContext.stateHole : 0) | (extent.isZero ? NBDMetaContext.stateZero : 0))
        }
        var buffer = context.channel.allocator.buffer(capacity: 24 + 8 * descriptors.count)
        NBDCodec.writeBlockStatusChunk(cookie: request.cookie, contextID: NBDMetaContext.baseAllocationID,
                                       extents: descriptors, into: &buffer)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func replyError(_ request: NBDRequest, _ error: any Error, context: ChannelHandlerContext) {
        if let error = error as? BlockExportError {
            if error.kind == .io { logger.error("\(request.command) failed: \(error.message)") }
            replyError(request, error.kind.nbdError, error.message, context: context)
        } else {
            logger.error("\(request.command) failed: \(error)")
            replyError(request, .io, "\(error)", context: context)
        }
    }

    private func replyError(_ request: NBDRequest, _ error: NBDErrorCode, _ message: String, context: ChannelHandlerContext) {
        logger.debug("\(request.command) offset \(request.offset) length \(request.length): \(error): \(message)")
        var buffer = context.channel.allocator.buffer(capacity: 32 + message.utf8.count)
        if structuredReplies && (request.command == .read || request.command == .blockStatus) {
            NBDCodec.writeErrorChunk(cookie: request.cookie, error: error, message: message, into: &buffer)
        } else {
            NBDCodec.writeSimpleReply(cookie: request.cookie, error: error, into: &buffer)
        }
        context.write(wrapOutboundOut(buffer), promise: nil)
        scheduleFlush(context: context)
    }
}
