import NIOCore

/// A message from an NBD server, as `NBDReplyFrameDecoder` frames its byte stream.
public enum NBDServerMessage: Sendable, Equatable {
    /// The greeting: the handshake flags of a fixed-newstyle server.
    case greeting(NBDHandshakeFlags)
    /// A reply to an option, with all its data.
    case optionReply(NBDOptionReplyHeader, data: ByteBuffer)
    /// A simple reply; `data` is a successful READ's payload (nil for any other request).
    case simpleReply(cookie: UInt64, error: NBDErrorCode, data: ByteBuffer?)
    /// A structured reply chunk with its whole payload.
    case chunk(NBDChunkHeader, payload: ByteBuffer)
}

/// Frames what an NBD server sends a client (the client side of `NBDFrameDecoder`): the greeting,
/// option replies until the client calls `startTransmission()` (its GO was acknowledged), then
/// transmission replies. Formats are `NBDCodec`'s; this type only knows what comes next and the
/// framing limits.
///
/// A simple reply carries no length: after a successful reply to a READ, the data the READ asked
/// for follows. `readLength(cookie)` says how long that is for the request with this cookie (nil
/// for a request that is not a READ in flight: its reply carries nothing). With structured replies
/// negotiated, a server answers READs in chunks, each with its length.
///
/// Every length a server sends is checked against a limit before a byte of its data is waited
/// for, so a broken or hostile server cannot make the client buffer without bound.
public final class NBDReplyFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = NBDServerMessage

    /// Option reply data beyond this is a protocol error: real ones are a few hundred bytes (an
    /// error message is at most 4 KiB).
    public static let maximumOptionReplyLength: UInt32 = 1 << 20
    /// A chunk payload beyond this is a protocol error: the client asks at most 32 MiB per request.
    public static let maximumChunkLength: UInt32 = 64 << 20

    private enum Expecting {
        case greeting
        case optionReplyHeader
        case optionReplyData(NBDOptionReplyHeader)
        case replyHeader
        case readData(cookie: UInt64, length: Int)
        case chunkPayload(NBDChunkHeader)
        /// STARTTLS was acknowledged: nothing may come until TLS carries the stream.
        case tlsBarrier
    }

    private var expecting = Expecting.greeting
    private let readLength: (UInt64) -> Int?

    /// A decoder whose simple READ replies are as long as `readLength` says for their cookie.
    public init(readLength: @escaping (UInt64) -> Int?) {
        self.readLength = readLength
    }

    /// From the next message on, the stream holds transmission replies.
    public func startTransmission() {
        expecting = .replyHeader
    }

    /// TLS now carries the stream (after STARTTLS's ACK): option replies come again.
    public func tlsStarted() {
        expecting = .optionReplyHeader
    }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = try next(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }

    /// At the end of the stream a partial message is dropped: the connection is gone.
    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        .needMoreData
    }

    /// The next message `buffer` holds (consumed from it), or nil if it does not hold one whole yet
    /// (headers are consumed as soon as they are whole and checked).
    public func next(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDServerMessage? {
        while true {
            switch expecting {
            case .greeting:
                guard let flags = try NBDCodec.readGreeting(from: &buffer) else { return nil }
                expecting = .optionReplyHeader
                return .greeting(flags)
            case .optionReplyHeader:
                guard let header = try NBDCodec.readOptionReplyHeader(from: &buffer) else { return nil }
                guard header.length <= Self.maximumOptionReplyLength else {
                    throw .replyTooLong(what: "reply to \(header.option)", length: header.length, limit: Self.maximumOptionReplyLength)
                }
                expecting = .optionReplyData(header)
            case .optionReplyData(let header):
                guard let data = buffer.readSlice(length: Int(header.length)) else { return nil }
                // After STARTTLS's ACK, bytes already received in the clear are not taken as if
                // TLS had brought them (the STARTTLS injection attack).
                expecting = header.option == .startTLS && header.reply == .ack ? .tlsBarrier : .optionReplyHeader
                return .optionReply(header, data: data)
            case .tlsBarrier:
                guard buffer.readableBytes == 0 else {
                    throw .malformedReply("\(buffer.readableBytes) bytes sent in the clear after STARTTLS was acknowledged")
                }
                return nil
            case .replyHeader:
                guard let header = try NBDCodec.readReplyHeader(from: &buffer) else { return nil }
                switch header {
                case let .simple(cookie, error):
                    guard error == .ok, let length = readLength(cookie) else {
                        return .simpleReply(cookie: cookie, error: error, data: nil)
                    }
                    expecting = .readData(cookie: cookie, length: length)
                case .chunk(let chunk):
                    guard chunk.length <= Self.maximumChunkLength else {
                        throw .replyTooLong(what: "reply chunk", length: chunk.length, limit: Self.maximumChunkLength)
                    }
                    expecting = .chunkPayload(chunk)
                }
            case let .readData(cookie, length):
                guard let data = buffer.readSlice(length: length) else { return nil }
                expecting = .replyHeader
                return .simpleReply(cookie: cookie, error: .ok, data: data)
            case .chunkPayload(let chunk):
                guard let payload = buffer.readSlice(length: Int(chunk.length)) else { return nil }
                expecting = .replyHeader
                return .chunk(chunk, payload: payload)
            }
        }
    }
}
