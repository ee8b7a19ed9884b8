import BlockIO
import NIOCore

/// A client's requests in flight and the replies that finish them, as a pure state: each request
/// gets a cookie; the server's replies (simple, or structured chunks until the one marked done)
/// are matched to it, checked against what it asked, and turned into one outcome.
///
/// The checks are the protocol's promises a client relies on: a reply for a request in flight,
/// data and holes only for a READ and only inside its range, a READ that succeeds covered entirely
/// (no byte of it left unwritten in the caller's buffer), extents only for BLOCK_STATUS and of the
/// negotiated context, nothing more after the last chunk. A server that breaks one gets a
/// `NBDProtocolError` (the connection is then unusable); an error the server reports for a request
/// fails that request alone.
public struct NBDReplyAssembler: Sendable {
    /// What one reply brought.
    public enum Reply: Sendable, Equatable {
        /// A READ's bytes: pieces at offsets from the start of the request (data or a hole: zeroes),
        /// covering it entirely.
        case read([Piece])
        /// BLOCK_STATUS extents from the request's offset: (length, NBD state flags).
        case extents([(length: UInt32, flags: UInt32)])
        /// Any other request: done.
        case done

        public static func == (a: Reply, b: Reply) -> Bool {
            switch (a, b) {
            case let (.read(x), .read(y)): x == y
            case let (.extents(x), .extents(y)): x.map(\.length) == y.map(\.length) && x.map(\.flags) == y.map(\.flags)
            case (.done, .done): true
            default: false
            }
        }
    }

    /// Part of a READ's reply.
    public enum Piece: Sendable, Equatable {
        case data(at: Int, ByteBuffer)
        case hole(at: Int, length: Int)
    }

    /// How a request ended: its reply, or the error the server gave (with its message, if any).
    public typealias Outcome = Result<Reply, NBDRequestFailure>

    private struct InFlight: Sendable {
        var command: NBDCommand
        var offset: UInt64
        var length: UInt32
        var pieces: [Piece] = []
        var covered = 0
        var extents: [(length: UInt32, flags: UInt32)]?
        var failure: NBDRequestFailure?
    }

    private var inFlight: [UInt64: InFlight] = [:]
    private var nextCookie: UInt64 = 1
    /// The context id of `base:allocation`, whose extents BLOCK_STATUS replies carry.
    public let baseAllocationID: UInt32?

    public init(baseAllocationID: UInt32?) {
        self.baseAllocationID = baseAllocationID
    }

    /// Requests sent and not finished.
    public var count: Int { inFlight.count }

    /// Registers a request about to be sent; returns it with its cookie.
    public mutating func register(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt32) -> NBDRequest {
        let cookie = nextCookie
        nextCookie &+= 1
        inFlight[cookie] = InFlight(command: command, offset: offset, length: length)
        return NBDRequest(flags: flags, command: command, cookie: cookie, offset: offset, length: length)
    }

    /// The data length a simple reply to `cookie` carries (a READ's), for `NBDReplyFrameDecoder`.
    public func readLength(of cookie: UInt64) -> Int? {
        guard let request = inFlight[cookie], request.command == .read else { return nil }
        return Int(request.length)
    }

    /// Takes one message of the server; returns the request it finished, if it finished one.
    public mutating func receive(_ message: NBDServerMessage) throws(NBDProtocolError) -> (cookie: UInt64, outcome: Outcome)? {
        switch message {
        case let .simpleReply(cookie, error, data):
            guard let request = inFlight.removeValue(forKey: cookie) else { throw .unexpectedReply(cookie: cookie) }
            guard error == .ok else { return (cookie, .failure(NBDRequestFailure(error: error, message: nil))) }
            switch request.command {
            case .read: return (cookie, .success(.read([.data(at: 0, data ?? ByteBuffer())])))
            case .blockStatus: throw .malformedReply("a simple reply to BLOCK_STATUS, which needs structured replies")
            default: return (cookie, .success(.done))
            }
        case let .chunk(header, payload):
            guard var request = inFlight[header.cookie] else { throw .unexpectedReply(cookie: header.cookie) }
            try Self.take(header, payload, into: &request, baseAllocationID: baseAllocationID)
            guard header.done else {
                inFlight[header.cookie] = request
                return nil
            }
            inFlight[header.cookie] = nil
            return (header.cookie, try Self.outcome(of: request))
        case .greeting, .optionReply:
            throw .malformedReply("negotiation message during transmission")
        }
    }

    /// Adds a chunk to its request, checking that it belongs there.
    private static func take(_ header: NBDChunkHeader, _ payload: ByteBuffer, into request: inout InFlight,
                             baseAllocationID: UInt32?) throws(NBDProtocolError) {
        var payload = payload
        switch header.type {
        case .none:
            guard header.done, payload.readableBytes == 0 else { throw .malformedReply("a NONE chunk that is not the last, or has data") }
        case .offsetData, .offsetHole:
            guard request.command == .read else { throw .malformedReply("\(header.type == .offsetData ? "data" : "a hole") in a reply to \(request.command)") }
            guard let offset = payload.readInteger(as: UInt64.self) else { throw .malformedReply("a data or hole chunk without an offset") }
            let length: Int
            if header.type == .offsetHole {
                guard payload.readableBytes == 4, let holeLength = payload.readInteger(as: UInt32.self) else {
                    throw .malformedReply("a hole chunk of \(header.length) bytes (12 expected)")
                }
                length = Int(holeLength)
            } else {
                length = payload.readableBytes
            }
            guard length > 0, offset >= request.offset, offset - request.offset <= UInt64(request.length),
                  UInt64(length) <= UInt64(request.length) - (offset - request.offset) else {
                throw .malformedReply("\(length) bytes at offset \(offset), outside the READ of \(request.length) at \(request.offset)")
            }
            // Pieces may not overlap (checked whole at the end); more bytes than the READ asked for
            // is a violation now, before a hostile server piles chunks up without bound.
            guard request.covered + length <= Int(request.length) else {
                throw .malformedReply("more than the \(request.length) bytes the READ at \(request.offset) asked for")
            }
            let at = Int(offset - request.offset)
            request.pieces.append(header.type == .offsetData ? .data(at: at, payload) : .hole(at: at, length: length))
            request.covered += length
        case .blockStatus:
            guard request.command == .blockStatus else { throw .malformedReply("extents in a reply to \(request.command)") }
            guard let id = payload.readInteger(as: UInt32.self), payload.readableBytes % 8 == 0, payload.readableBytes > 0 else {
                throw .malformedReply("a BLOCK_STATUS chunk of \(header.length) bytes")
            }
            guard id == baseAllocationID else { throw .malformedReply("extents of context \(id), which was not negotiated") }
            guard request.extents == nil else { throw .malformedReply("a second BLOCK_STATUS chunk for one context") }
            var extents: [(length: UInt32, flags: UInt32)] = []
            while let (length, flags) = payload.readMultipleIntegers(as: (UInt32, UInt32).self) {
                guard length > 0 else { throw .malformedReply("an extent of length 0") }
                extents.append((length, flags))
            }
            request.extents = extents
        case .error, .errorOffset:
            guard let (code, messageLength) = payload.readMultipleIntegers(as: (UInt32, UInt16).self),
                  let message = payload.readSlice(length: Int(messageLength)) else {
                throw .malformedReply("an error chunk of \(header.length) bytes")
            }
            guard code != 0 else { throw .malformedReply("an error chunk with error 0") }
            if request.failure == nil {
                let text = message.readableBytes > 0 ? UntrustedText.escape(bytes: message.readableBytesView) : nil
                request.failure = NBDRequestFailure(error: NBDErrorCode(rawValue: code), message: text)
            }
        default:
            // Unknown types: an error one (bit 15) fails the request, any other breaks the stream.
            guard header.type.rawValue & (1 << 15) != 0 else { throw .malformedReply("a chunk of unknown type \(header.type.rawValue)") }
            if request.failure == nil { request.failure = NBDRequestFailure(error: .io, message: "error chunk type \(header.type.rawValue)") }
        }
    }

    /// What a request's chunks add up to, once the last arrived.
    private static func outcome(of request: InFlight) throws(NBDProtocolError) -> Outcome {
        if let failure = request.failure { return .failure(failure) }
        switch request.command {
        case .read:
            guard request.covered == Int(request.length), !overlap(request.pieces) else {
                throw .malformedReply("a successful READ of \(request.length) bytes answered with \(request.covered) "
                                      + "bytes of data and holes (or overlapping ones)")
            }
            return .success(.read(request.pieces))
        case .blockStatus:
            guard let extents = request.extents else { throw .malformedReply("a successful BLOCK_STATUS without extents") }
            return .success(.extents(extents))
        default:
            return .success(.done)
        }
    }

    private static func overlap(_ pieces: [Piece]) -> Bool {
        let ranges = pieces.map { piece -> Range<Int> in
            switch piece {
            case let .data(at, data): at..<(at + data.readableBytes)
            case let .hole(at, length): at..<(at + length)
            }
        }.sorted { $0.lowerBound < $1.lowerBound }
        return zip(ranges, ranges.dropFirst()).contains { $0.upperBound > $1.lowerBound }
    }
}

/// A request the server failed, with its error and message.
public struct NBDRequestFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var error: NBDErrorCode
    /// The server's message (escaped), if it sent one.
    public var message: String?
    public var description: String { message.map { "\(error): \($0)" } ?? "\(error)" }
}
