import NIOCore
import Testing
@testable import NBD

/// The framing of a client's byte stream: whole messages whatever the reads, the limits checked
/// before data is waited for, payload in the pieces it arrives in.
@Suite struct NBDFrameDecoderTests {
    /// Every message `bytes` holds, fed `chunk` bytes at a time.
    private func decode(_ bytes: ByteBuffer, chunk: Int, decoder: NBDFrameDecoder = NBDFrameDecoder()) throws -> [NBDClientMessage] {
        var messages: [NBDClientMessage] = []
        var input = ByteBuffer()
        var bytes = bytes
        while let piece = bytes.readSlice(length: min(chunk, bytes.readableBytes)), piece.readableBytes > 0 {
            input.writeImmutableBuffer(piece)
            while let message = try decoder.next(from: &input) { messages.append(message) }
        }
        return messages
    }

    private func option(_ option: NBDOption, _ data: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        NBDCodec.writeOptionRequest(option, data: ByteBuffer(bytes: data), into: &buffer)
        return buffer
    }

    /// Flags and options come out the same whether the stream arrives whole or byte by byte.
    @Test func negotiationIsFramedWholeWhateverTheReads() throws {
        var stream = ByteBuffer()
        stream.writeInteger(NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
        stream.writeImmutableBuffer(option(.structuredReply, []))
        stream.writeImmutableBuffer(option(.go, [0, 0, 0, 4, 100, 105, 115, 107, 0, 0]))
        let expected: [NBDClientMessage] = [
            .clientFlags([.fixedNewstyle, .noZeroes]),
            .option(NBDOptionHeader(option: .structuredReply, length: 0), data: ByteBuffer()),
            .option(NBDOptionHeader(option: .go, length: 10), data: ByteBuffer(bytes: [0, 0, 0, 4, 100, 105, 115, 107, 0, 0])),
        ]
        for chunk in [stream.readableBytes, 7, 1] {
            #expect(try decode(stream, chunk: chunk) == expected, "reads of \(chunk) bytes")
        }
    }

    /// Option data over 64 KiB is refused from its header alone, before any of it arrives.
    @Test func tooLongOptionIsRefusedFromItsHeader() throws {
        var stream = ByteBuffer()
        stream.writeInteger(NBDClientFlags.fixedNewstyle.rawValue)
        stream.writeInteger(NBDMagic.option)
        stream.writeInteger(NBDOption.go.rawValue)
        stream.writeInteger(NBDFrameDecoder.maximumOptionLength + 1)
        #expect(throws: NBDProtocolError.optionTooLong(option: .go, length: NBDFrameDecoder.maximumOptionLength + 1,
                                                       limit: NBDFrameDecoder.maximumOptionLength)) {
            try decode(stream, chunk: stream.readableBytes)
        }
    }

    /// The 257th option closes the connection; 256 are framed.
    @Test func moreThanTheOptionLimitIsRefused() throws {
        var stream = ByteBuffer()
        stream.writeInteger(NBDClientFlags.fixedNewstyle.rawValue)
        for _ in 0..<NBDFrameDecoder.maximumOptions { stream.writeImmutableBuffer(option(.list, [])) }
        #expect(try decode(stream, chunk: stream.readableBytes).count == 1 + NBDFrameDecoder.maximumOptions)
        stream.writeImmutableBuffer(option(.list, []))
        #expect(throws: NBDProtocolError.tooManyOptions(limit: NBDFrameDecoder.maximumOptions)) {
            try decode(stream, chunk: stream.readableBytes)
        }
    }

    /// Garbage where a magic belongs is a protocol error, in either phase.
    @Test func badMagicIsAProtocolError() throws {
        var flags = ByteBuffer()
        flags.writeInteger(NBDClientFlags.fixedNewstyle.rawValue)
        var options = flags
        options.writeBytes([UInt8](repeating: 0x41, count: 16))
        #expect(throws: NBDProtocolError.self) { try decode(options, chunk: 16) }

        var unknownFlags = ByteBuffer()
        unknownFlags.writeInteger(UInt32(1 << 7))
        #expect(throws: NBDProtocolError.unknownClientFlags(1 << 7)) { try decode(unknownFlags, chunk: 4) }

        let decoder = NBDFrameDecoder()
        decoder.startTransmission()
        #expect(throws: NBDProtocolError.self) { try decode(ByteBuffer(bytes: [UInt8](repeating: 0x41, count: 28)), chunk: 28, decoder: decoder) }
    }

    /// After `startTransmission` the same bytes are requests; a WRITE's payload follows it in the
    /// pieces the reads brought (one slice when it came whole), and a zero-length WRITE has none.
    @Test func requestsAndPayloadPieces() throws {
        let payload = (0..<1000).map { UInt8(truncatingIfNeeded: $0) }
        var stream = ByteBuffer()
        NBDCodec.writeRequest(NBDRequest(command: .write, cookie: 1, offset: 4096, length: UInt32(payload.count)), into: &stream)
        stream.writeBytes(payload)
        NBDCodec.writeRequest(NBDRequest(command: .write, cookie: 2, offset: 0, length: 0), into: &stream)
        NBDCodec.writeRequest(NBDRequest(flags: .fua, command: .flush, cookie: 3, offset: 0, length: 0), into: &stream)
        for chunk in [stream.readableBytes, 100, 1] {
            let decoder = NBDFrameDecoder()
            decoder.startTransmission()
            let messages = try decode(stream, chunk: chunk, decoder: decoder)
            var requests: [NBDRequest] = []
            var gathered: [UInt8] = []
            var lasts: [Bool] = []
            for message in messages {
                switch message {
                case .request(let request): requests.append(request)
                case let .payload(piece, last):
                    #expect(piece.readableBytes > 0)
                    gathered += piece.readableBytesView
                    lasts.append(last)
                default: Issue.record("\(message) in transmission")
                }
            }
            #expect(requests.map(\.cookie) == [1, 2, 3], "reads of \(chunk) bytes")
            #expect(gathered == payload)
            #expect(lasts.last == true && lasts.dropLast().allSatisfy { !$0 })
            if chunk == stream.readableBytes { #expect(lasts.count == 1) }
            if case .request(let second) = messages[messages.count - 2] { #expect(second.cookie == 2) } else {
                Issue.record("the zero-length WRITE was followed by \(messages[messages.count - 2])")
            }
        }
    }

    /// A partial message is not passed on; it waits for the rest.
    @Test func partialMessagesWait() throws {
        let decoder = NBDFrameDecoder()
        decoder.startTransmission()
        var header = ByteBuffer()
        NBDCodec.writeRequest(NBDRequest(command: .read, cookie: 9, offset: 0, length: 512), into: &header)
        var input = header.getSlice(at: 0, length: 27)!
        #expect(try decoder.next(from: &input) == nil)
        #expect(input.readableBytes == 27)
        input.writeBytes(header.getSlice(at: 27, length: 1)!.readableBytesView)
        #expect(try decoder.next(from: &input) == .request(NBDRequest(command: .read, cookie: 9, offset: 0, length: 512)))
    }
}
