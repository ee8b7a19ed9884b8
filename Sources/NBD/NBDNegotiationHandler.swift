import BlockExport
import BlockIO
import Logging
import NIOCore
import NIOTLS

/// What a negotiation settled, for the transmission that follows it.
struct NBDNegotiated {
    let name: String
    let export: any BlockExport
    /// The client asked for structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    let structuredReplies: Bool
    /// `base:allocation` was selected (`NBD_OPT_SET_META_CONTEXT`), so BLOCK_STATUS may be asked.
    let baseAllocationSelected: Bool
}

/// The fixed-newstyle negotiation of one connection (the phase of nbdkit's
/// protocol-handshake-newstyle.c): greets the client and answers its options, framed by the
/// connection's `NBDConnectionFraming`. Once a GO or EXPORT_NAME selects an export it switches the
/// decoder to transmission and replaces itself in the pipeline with an `NBDTransmissionHandler`,
/// handing it what was negotiated, the framing and the connection's clock; requests that came in
/// the same read as the GO go to it from there.
///
/// A connection beyond the server's limit is greeted, then every option is refused with a text
/// naming the limit, then it is closed. Framing errors (`NBDProtocolError`: bad magic, unknown
/// client flags, option data too long, too many options) and an EXPORT_NAME of an unknown export
/// close the connection with a rate-limited warning; malformed data of other options gets
/// `NBD_REP_ERR_INVALID` and negotiation goes on (docs/ARCHITECTURE.md, "Error rules").
final class NBDNegotiationHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let environment: NBDConnectionEnvironment
    private let framing: NBDConnectionFraming
    private var logger: Logger
    private let clock: NBDConnectionClock
    /// Set when the server is at its connection limit: every option is refused with this text.
    private var refusal: String?
    private var noZeroes = false
    private var structuredReplies = false
    private var baseAllocationSelected = false
    private var closing = false
    /// STARTTLS succeeded: the stream is TLS (or its handshake runs).
    private var tlsActive = false
    /// The transmission handler that took over (and with it the clock), once one did.
    private var transmission: NBDTransmissionHandler?

    /// Negotiates for the connection whose stream `framing` frames, on its `clock`.
    init(environment: NBDConnectionEnvironment, framing: NBDConnectionFraming, clock: NBDConnectionClock, logger: Logger) {
        self.environment = environment
        self.framing = framing
        self.clock = clock
        self.logger = logger
    }

    private var registry: NBDExportRegistry { environment.registry }

    // MARK: Channel events

    func handlerRemoved(context: ChannelHandlerContext) {
        if transmission == nil { clock.stop() }
    }

    func channelActive(context: ChannelHandlerContext) {
        if let peer = context.channel.remoteAddress { logger[metadataKey: "peer"] = "\(peer)" }
        clock.progressed()
        if environment.tracker.register(context.channel) {
            logger.debug("client connected")
        } else {
            let limit = environment.tracker.limit
            refusal = "the server is at its limit of \(limit) connections; try again later"
            environment.logLimiter.log(.refused, .warning, "refused a connection: the limit of \(limit) connections is reached",
                                       to: logger, scheduleOn: context.eventLoop)
        }
        var greeting = context.channel.allocator.buffer(capacity: 18)
        NBDCodec.writeGreeting([.fixedNewstyle, .noZeroes], into: &greeting)
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        clock.watch(context: context, activity: { .negotiating }) { [self] why in
            environment.logLimiter.log(.timeout, .notice, "closing connection: \(why)", to: logger, scheduleOn: context.eventLoop)
            closing = true
            context.close(promise: nil)
        }
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        logger.debug("client disconnected during negotiation")
        closing = true
        clock.stop()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        do throws(NBDProtocolError) {
            try framing.process(unwrapInboundIn(data)) { message in
                if let transmission {
                    transmission.receive(message)
                } else if !closing {
                    handle(message, context: context)
                }
            }
        } catch {
            if let transmission { transmission.receive(violation: error) } else { close(after: error, context: context) }
        }
        if transmission != nil { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    private func handle(_ message: NBDClientMessage, context: ChannelHandlerContext) {
        switch message {
        case .clientFlags(let flags):
            noZeroes = flags.contains(.noZeroes)
            if !flags.contains(.fixedNewstyle) { logger.debug("client did not set FIXED_NEWSTYLE") }
        case let .option(header, data):
            do throws(NBDProtocolError) {
                try handleOption(header.option, data: data, context: context)
            } catch {
                close(after: error, context: context)
            }
        case .request, .payload:
            // The decoder frames requests only once a transmission handler took over.
            preconditionFailure("a transmission message reached the negotiation")
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        if !closing && context.channel.isWritable { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !closing && context.channel.isWritable { context.read() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !closing else { return }
        logger.debug("connection error: \(error)")
        closing = true
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case NBDConnectionEvent.finish = event {
            finish(context: context)
        } else if case TLSUserEvent.handshakeCompleted = event, tlsActive {
            logger.debug("TLS established")
            framing.decoder.tlsStarted()
            context.fireUserInboundEventTriggered(event)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Ends the negotiation: the replies written so far go out, then the connection closes.
    private func finish(context: ChannelHandlerContext) {
        closing = true
        context.flush()
        context.close(promise: nil)
    }

    /// Closes after a protocol violation, with a (rate-limited) warning naming it.
    private func close(after error: NBDProtocolError, context: ChannelHandlerContext) {
        environment.logLimiter.log(.protocolError, .warning, "closing connection: \(error)", to: logger, scheduleOn: context.eventLoop)
        finish(context: context)
    }

    // MARK: Options

    private func handleOption(_ option: NBDOption, data: ByteBuffer, context: ChannelHandlerContext) throws(NBDProtocolError) {
        logger.trace("option \(option), \(data.readableBytes) bytes")
        if let refusal {
            switch option {
            case .abort: sendOptionReply(option, .ack, context: context)
            case .exportName: break  // it has no error reply: closing is the answer
            default: sendOptionError(option, .errorPolicy, refusal, context: context)
            }
            return finish(context: context)
        }
        if environment.tls?.mode == .require && !tlsActive && option != .startTLS && option != .abort {
            // EXPORT_NAME has no error reply: closing is the answer.
            if option == .exportName { throw .malformedOption(option, "TLS is required: STARTTLS first") }
            return sendOptionError(option, .errorTLSRequired, "this server requires TLS: send STARTTLS first", context: context)
        }
        switch option {
        case .exportName:
            guard let entry = String(validating: data.readableBytesView, as: UTF8.self).flatMap(registry.lookup) else {
                // This option has no error reply: the spec's only answer is to close.
                throw .malformedOption(option, "no export named \"\(UntrustedText.escape(bytes: data.readableBytesView))\"")
            }
            var reply = context.channel.allocator.buffer(capacity: 134)
            let flags = entry.export.capabilities.transmissionFlags(structuredReplies: structuredReplies)
            NBDCodec.writeExportNameReply(size: entry.export.size, flags: flags, noZeroes: noZeroes, into: &reply)
            context.write(wrapOutboundOut(reply), promise: nil)
            startTransmission(entry, context: context)
        case .abort:
            if data.readableBytes == 0 { sendOptionReply(option, .ack, context: context) }
            logger.debug("client aborted negotiation")
            finish(context: context)
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
            if option == .go { startTransmission(entry, context: context) }
        case .structuredReply:
            guard data.readableBytes == 0 else {
                return sendOptionError(option, .errorInvalid, "STRUCTURED_REPLY takes no data", context: context)
            }
            structuredReplies = true
            sendOptionReply(option, .ack, context: context)
        case .listMetaContext, .setMetaContext:
            handleMetaContext(option, data: data, context: context)
        case .startTLS:
            startTLS(data: data, context: context)
        default:
            sendOptionError(option, .errorUnsupported, "\(option) is not supported", context: context)
        }
    }

    /// STARTTLS: ACK in the clear, then the TLS handler goes in front of the decoder, and what was
    /// negotiated before is forgotten (the NBD spec: nothing said in the clear carries over).
    private func startTLS(data: ByteBuffer, context: ChannelHandlerContext) {
        guard let tls = environment.tls else {
            return sendOptionError(.startTLS, .errorUnsupported, "TLS is not offered by this server", context: context)
        }
        guard !tlsActive else { return sendOptionError(.startTLS, .errorInvalid, "TLS is already active", context: context) }
        guard data.readableBytes == 0 else { return sendOptionError(.startTLS, .errorInvalid, "STARTTLS takes no data", context: context) }
        let handler: any ChannelHandler
        do { handler = try tls.provider.makeHandler() } catch {
            logger.error("cannot set up TLS: \(error)")
            return sendOptionError(.startTLS, .errorUnsupported, "TLS cannot be set up on this server", context: context)
        }
        sendOptionReply(.startTLS, .ack, context: context)
        context.flush()
        tlsActive = true
        structuredReplies = false
        baseAllocationSelected = false
        framing.decoder.awaitTLS()
        do {
            try context.pipeline.syncOperations.addHandler(handler, position: .first)
        } catch {
            logger.debug("cannot start TLS: \(error)")
            finish(context: context)
        }
    }

    /// The error text for an unknown export name (the client's bytes escaped and truncated).
    private static func noSuchExport(_ name: String) -> String {
        "no export named \"\(UntrustedText.escape(name))\""
    }

    private func handleMetaContext(_ option: NBDOption, data: ByteBuffer, context: ChannelHandlerContext) {
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

    // MARK: Hand-over

    /// The decoder reads requests from the next byte on, and a transmission handler takes this
    /// one's place once the read in hand is framed (the replies written so far stay queued in
    /// order; its first read completion flushes them).
    private func startTransmission(_ entry: NBDExportRegistry.Entry, context: ChannelHandlerContext) {
        framing.decoder.startTransmission()
        clock.stop()
        logger[metadataKey: "export"] = "\(entry.name)"
        logger.debug("transmission started", metadata: ["structured": "\(structuredReplies)"])
        let negotiated = NBDNegotiated(name: entry.name, export: entry.export, structuredReplies: structuredReplies,
                                       baseAllocationSelected: baseAllocationSelected)
        let transmission = NBDTransmissionHandler(environment: environment, negotiated: negotiated, framing: framing,
                                                  clock: clock, logger: logger)
        do {
            try context.pipeline.syncOperations.addHandler(transmission, position: .after(self))
        } catch {
            // Only a closed pipeline refuses a handler: the connection is gone.
            logger.debug("cannot start transmission: \(error)")
            return finish(context: context)
        }
        self.transmission = transmission
    }
}
