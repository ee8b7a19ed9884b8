import NIOCore
import Testing
@testable import NBD

/// The framing of a server's byte stream, as a client leg reads it: whole messages whatever the
/// reads, a simple READ reply as long as its request, the limits checked before data is waited for.
@Suite struct NBDReplyFrameDecoderTests {
    /// Every message `bytes` holds, fed `chunk` bytes at a time; transmission starts after the
    /// first ACK of GO, as a client switches.
    private func decode(_ bytes: ByteBuffer, chunk: Int, reads: [UInt64: Int] = [:]) throws -> [NBDServerMessage] {
        let decoder = NBDReplyFrameDecoder(readLength: { reads[$0] })
        var messages: [NBDServerMessage] = []
        var input = ByteBuffer()
        var bytes = bytes
        while let piece = bytes.readSlice(length: min(chunk, bytes.readableBytes)), piece.readableBytes > 0 {
            input.writeImmutableBuffer(piece)
            while let message = try decoder.next(from: &input) {
                messages.append(message)
                if case .optionReply(let header, _) = message, header.option == .go, header.reply == .ack { decoder.startTransmission() }
            }
        }
        return messages
    }

    /// A negotiation (greeting, INFO replies, ACK of GO) and replies of each kind come out the
    /// same whole, in 7-byte reads and byte by byte.
    @Test func aServersStreamIsFramedWholeWhateverTheReads() throws {
        var stream = ByteBuffer()
        NBDCodec.writeGreeting([.fixedNewstyle, .noZeroes], into: &stream)
        var info = ByteBuffer()
        NBDCodec.writeInfoExport(size: 1 << 20, flags: [.hasFlags, .sendFlush], into: &info)
        NBDCodec.writeOptionReply(.go, .info, data: info, into: &stream)
        var sizes = ByteBuffer()
        NBDCodec.writeInfoBlockSize(minimum: 512, preferred: 4096, maximum: 1 << 25, into: &sizes)
        NBDCodec.writeOptionReply(.go, .info, data: sizes, into: &stream)
        NBDCodec.writeOptionReply(.go, .ack, into: &stream)
        NBDCodec.writeSimpleReply(cookie: 1, error: .ok, into: &stream)                    // a WRITE's
        NBDCodec.writeSimpleReply(cookie: 2, error: .ok, into: &stream)                    // a READ's, 8 bytes follow
        stream.writeBytes([1, 2, 3, 4, 5, 6, 7, 8])
        NBDCodec.writeSimpleReply(cookie: 3, error: NBDErrorCode(rawValue: 5), into: &stream)  // a failed READ: no data
        NBDCodec.writeOffsetDataHeader(cookie: 4, offset: 4096, dataLength: 3, into: &stream)
        stream.writeBytes([9, 9, 9])
        NBDCodec.writeErrorChunk(cookie: 5, error: NBDErrorCode(rawValue: 28), message: "full", into: &stream)
        let expectedPrefix: [NBDServerMessage] = [
            .greeting([.fixedNewstyle, .noZeroes]),
            .optionReply(NBDOptionReplyHeader(option: .go, reply: .info, length: UInt32(info.readableBytes)), data: info),
            .optionReply(NBDOptionReplyHeader(option: .go, reply: .info, length: UInt32(sizes.readableBytes)), data: sizes),
            .optionReply(NBDOptionReplyHeader(option: .go, reply: .ack, length: 0), data: ByteBuffer()),
            .simpleReply(cookie: 1, error: .ok, data: nil),
            .simpleReply(cookie: 2, error: .ok, data: ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8])),
            .simpleReply(cookie: 3, error: NBDErrorCode(rawValue: 5), data: nil),
        ]
        for chunk in [stream.readableBytes, 7, 1] {
            let messages = try decode(stream, chunk: chunk, reads: [2: 8, 3: 8])
            #expect(Array(messages.prefix(expectedPrefix.count)) == expectedPrefix, "reads of \(chunk) bytes")
            #expect(messages.count == expectedPrefix.count + 2, "reads of \(chunk) bytes")
            guard messages.count == expectedPrefix.count + 2,
                  case let .chunk(data, payload) = messages[expectedPrefix.count],
                  case let .chunk(error, message) = messages[expectedPrefix.count + 1] else { continue }
            #expect(data.type == .offsetData && data.done && data.cookie == 4 && payload.readableBytes == 8 + 3)
            #expect(error.type == .error && error.done && error.cookie == 5 && message.readableBytes == 6 + 4)
        }
    }

    /// What is not a fixed-newstyle server's greeting is refused: another magic, or an oldstyle /
    /// plain newstyle server (no FIXED_NEWSTYLE flag).
    @Test func onlyAFixedNewstyleGreetingIsTaken() throws {
        var wrongMagic = ByteBuffer()
        wrongMagic.writeInteger(UInt64(0x4e42_444d_4147_4943))
        wrongMagic.writeInteger(UInt64(0x0000_4202_8186_1253))  // oldstyle's magic where IHAVEOPT belongs
        wrongMagic.writeInteger(UInt16(0))
        #expect(throws: NBDProtocolError.badMagic(expected: NBDMagic.option, received: 0x0000_4202_8186_1253)) {
            try decode(wrongMagic, chunk: 18)
        }
        var plainNewstyle = ByteBuffer()
        NBDCodec.writeGreeting([], into: &plainNewstyle)
        #expect(throws: NBDProtocolError.notFixedNewstyle) { try decode(plainNewstyle, chunk: 18) }
    }

    /// Lengths a server sends beyond the limits are refused from the header, before any data.
    @Test func tooLongRepliesAreRefusedFromTheirHeader() throws {
        var option = ByteBuffer()
        NBDCodec.writeGreeting(.fixedNewstyle, into: &option)
        option.writeInteger(NBDMagic.optionReply)
        option.writeInteger(NBDOption.go.rawValue)
        option.writeInteger(NBDOptionReply.info.rawValue)
        option.writeInteger(NBDReplyFrameDecoder.maximumOptionReplyLength + 1)
        #expect(throws: NBDProtocolError.replyTooLong(what: "reply to GO", length: NBDReplyFrameDecoder.maximumOptionReplyLength + 1,
                                                      limit: NBDReplyFrameDecoder.maximumOptionReplyLength)) {
            try decode(option, chunk: option.readableBytes)
        }
        var chunk = ByteBuffer()
        NBDCodec.writeGreeting(.fixedNewstyle, into: &chunk)
        NBDCodec.writeOptionReply(.go, .ack, into: &chunk)
        NBDCodec.writeChunkHeader(cookie: 1, type: .offsetData, done: true, length: Int(NBDReplyFrameDecoder.maximumChunkLength) + 1,
                                  into: &chunk)
        #expect(throws: NBDProtocolError.replyTooLong(what: "reply chunk", length: NBDReplyFrameDecoder.maximumChunkLength + 1,
                                                      limit: NBDReplyFrameDecoder.maximumChunkLength)) {
            try decode(chunk, chunk: chunk.readableBytes)
        }
    }

    /// A reply with neither magic breaks the stream; a partial header consumes nothing.
    @Test func aBadReplyMagicIsAnErrorAndPartialHeadersWait() throws {
        var stream = ByteBuffer()
        NBDCodec.writeGreeting(.fixedNewstyle, into: &stream)
        NBDCodec.writeOptionReply(.go, .ack, into: &stream)
        stream.writeInteger(UInt32(0xdead_beef))
        stream.writeBytes([UInt8](repeating: 0, count: 12))
        #expect(throws: NBDProtocolError.badMagic(expected: UInt64(NBDMagic.simpleReply), received: 0xdead_beef)) {
            try decode(stream, chunk: 1)
        }
        var partial = ByteBuffer()
        NBDCodec.writeSimpleReply(cookie: 9, error: .ok, into: &partial)
        partial.moveWriterIndex(to: 15)
        let before = partial.readerIndex
        #expect(try NBDCodec.readReplyHeader(from: &partial) == nil)
        #expect(partial.readerIndex == before)
    }
}
