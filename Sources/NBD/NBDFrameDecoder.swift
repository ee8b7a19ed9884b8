import NIOCore

/// A message from an NBD client, as `NBDFrameDecoder` frames its byte stream.
public enum NBDClientMessage: Sendable, Equatable {
    /// The client's flags: its first 4 bytes.
    case clientFlags(NBDClientFlags)
    /// An option request with all its data.
    case option(NBDOptionHeader, data: ByteBuffer)
    /// A transmission request header; a WRITE's payload follows as `.payload` pieces.
    case request(NBDRequest)
    /// The next piece of the payload of the WRITE decoded last, as it arrived (never empty);
    /// `last` on the piece that completes it.
    case payload(ByteBuffer, last: Bool)
}

/// Frames a client's byte stream: the client flags, then option requests until the negotiation
/// calls `startTransmission()` (a GO or EXPORT_NAME selected an export), then requests and their
/// payload. Formats are `NBDCodec`'s; this type only knows what comes next and the framing limits.
///
/// An option is passed on whole, once its data has arrived; its header is checked first, so option
/// data beyond `maximumOptionLength` (or more than `maximumOptions` options) is refused before a
/// byte of it is waited for. A WRITE's payload is passed on in the pieces it arrives in, so the
/// transmission handler can reserve its memory before it is read and gather it in one buffer of
/// its size (a whole payload already read is one piece, sliced, not copied).
///
/// A class, so the negotiation handler can switch it to transmission while it handles the option
/// that starts it: the connection's `NBDConnectionFraming` decodes the next message only after
/// the handler returned from this one, so the bytes that follow the option are read as requests.
///
/// Public (with `init`, `startTransmission()` and `next(from:)`) so that the micro-benchmarks in
/// Benchmarks/, a separate package built without `-enable-testing`, measure the decoder the server runs.
public final class NBDFrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = NBDClientMessage

    /// Option data beyond this closes the connection: no legitimate option comes near it.
    static let maximumOptionLength: UInt32 = 64 << 10
    /// Options one negotiation may send; real clients send a handful. Bounds the replies a client
    /// can queue by pipelining options without reading.
    static let maximumOptions = 256

    private enum Expecting {
        case clientFlags
        case optionHeader
        case optionData(NBDOptionHeader)
        case request
        case payload(remaining: Int)
        /// STARTTLS was acknowledged: nothing may come until TLS carries the stream.
        case tlsBarrier
    }

    private var expecting = Expecting.clientFlags
    private var optionsReceived = 0

    public init() {}

    /// From the next message on, the stream holds transmission requests.
    public func startTransmission() {
        expecting = .request
    }

    /// STARTTLS is acknowledged: bytes already received in the clear behind it are a protocol
    /// error (the STARTTLS injection attack), not options TLS brought; `tlsStarted()` lifts it.
    func awaitTLS() {
        expecting = .tlsBarrier
    }

    /// TLS carries the stream: options come again.
    func tlsStarted() {
        expecting = .optionHeader
    }

    public func decode(buffer: inout ByteBuffer) throws -> NBDClientMessage? {
        try next(from: &buffer)
    }

    /// Consumed bytes are dropped from the front of the buffer (moving what is left) only once a
    /// mebibyte of them has gathered. NIO's default, 2 KiB, moved the unread tail after nearly
    /// every read of a client streaming writes, and copied the whole buffer when a WRITE payload
    /// sliced from it was still at the disk (perf, 4k random writes: memmove took 2.9% of the
    /// server's samples with the default, 2.3% with this rule, 2.1% with the framing by hand before).
    public func shouldReclaimBytes(buffer: ByteBuffer) -> Bool {
        buffer.readerIndex > 1 << 20
    }

    /// At the end of the stream a partial message is dropped: the connection is gone.
    public func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> NBDClientMessage? {
        nil
    }

    /// The next message `buffer` holds (consumed from it), or nil if it does not hold one whole yet
    /// (option headers are consumed as soon as they are whole and checked).
    public func next(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDClientMessage? {
        while true {
            switch expecting {
            case .clientFlags:
                guard let flags = try NBDCodec.readClientFlags(from: &buffer) else { return nil }
                expecting = .optionHeader
                return .clientFlags(flags)
            case .optionHeader:
                guard let header = try NBDCodec.readOptionHeader(from: &buffer) else { return nil }
                guard header.length <= Self.maximumOptionLength else {
                    throw .optionTooLong(option: header.option, length: header.length, limit: Self.maximumOptionLength)
                }
                optionsReceived += 1
                guard optionsReceived <= Self.maximumOptions else { throw .tooManyOptions(limit: Self.maximumOptions) }
                expecting = .optionData(header)
            case .optionData(let header):
                guard let data = buffer.readSlice(length: Int(header.length)) else { return nil }
                expecting = .optionHeader
                return .option(header, data: data)
            case .request:
                guard let request = try NBDCodec.readRequest(from: &buffer) else { return nil }
                if request.hasPayload && request.length > 0 { expecting = .payload(remaining: Int(request.length)) }
                return .request(request)
            case .tlsBarrier:
                guard buffer.readableBytes == 0 else {
                    throw .malformedOption(.startTLS, "\(buffer.readableBytes) bytes sent in the clear after STARTTLS")
                }
                return nil
            case .payload(let remaining):
                guard buffer.readableBytes > 0 else { return nil }
                let piece = buffer.readSlice(length: min(remaining, buffer.readableBytes))!
                let left = remaining - piece.readableBytes
                expecting = left == 0 ? .request : .payload(remaining: left)
                return .payload(piece, last: left == 0)
            }
        }
    }
}
