import NIOCore
import Testing
@testable import NBD

/// Unit tests of the codec: byte-exact encodings and the decoders' handling of partial and bad input.
@Suite struct NBDCodecTests {
    let allocator = ByteBufferAllocator()

    /// The greeting is NBDMAGIC, IHAVEOPT, then the u16 flags, big-endian.
    @Test func greetingIsByteExact() {
        var buffer = allocator.buffer(capacity: 18)
        NBDCodec.writeGreeting([.fixedNewstyle, .noZeroes], into: &buffer)
        #expect(Array(buffer.readableBytesView) == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
    }

    /// A request survives a round trip, and a partial one is left untouched until complete.
    @Test func requestRoundTripAndPartialInput() throws {
        let request = NBDRequest(flags: [.fua], command: .write, cookie: 0xdead_beef_0102_0304, offset: 1 << 40, length: 65536)
        var wire = allocator.buffer(capacity: 28)
        NBDCodec.writeRequest(request, into: &wire)
        #expect(wire.readableBytes == NBDRequest.wireSize)
        var partial = wire.getSlice(at: 0, length: 27)!
        #expect(try NBDCodec.readRequest(from: &partial) == nil)
        #expect(partial.readableBytes == 27)
        #expect(try NBDCodec.readRequest(from: &wire) == request)
        #expect(wire.readableBytes == 0)
    }

    /// A request with the wrong magic is a protocol error naming what it got.
    @Test func requestWithBadMagicThrows() {
        var wire = allocator.buffer(capacity: 28)
        wire.writeInteger(UInt32(0x1234_5678))
        wire.writeRepeatingByte(0, count: 24)
        #expect(throws: NBDProtocolError.badMagic(expected: UInt64(NBDMagic.request), received: 0x1234_5678)) {
            try NBDCodec.readRequest(from: &wire)
        }
    }

    /// Unknown client flag bits are refused, as the spec requires.
    @Test func unknownClientFlagsThrow() throws {
        var wire = allocator.buffer(capacity: 4)
        wire.writeInteger(UInt32(0x8000_0001))
        #expect(throws: NBDProtocolError.unknownClientFlags(0x8000_0001)) { try NBDCodec.readClientFlags(from: &wire) }
        wire.clear()
        wire.writeInteger(UInt32(3))
        #expect(try NBDCodec.readClientFlags(from: &wire) == [.fixedNewstyle, .noZeroes])
    }

    /// An option header needs IHAVEOPT; its data stays in the buffer.
    @Test func optionHeader() throws {
        var data = allocator.buffer(capacity: 4)
        data.writeString("abcd")
        var wire = allocator.buffer(capacity: 20)
        NBDCodec.writeOptionRequest(.go, data: data, into: &wire)
        #expect(try NBDCodec.readOptionHeader(from: &wire) == NBDOptionHeader(option: .go, length: 4))
        #expect(wire.readString(length: 4) == "abcd")
        var bad = allocator.buffer(capacity: 16)
        bad.writeString("IHAVEOPX")
        bad.writeRepeatingByte(0, count: 8)
        #expect(throws: NBDProtocolError.self) { try NBDCodec.readOptionHeader(from: &bad) }
    }

    /// GO data parses; counts that disagree with the length are malformed.
    @Test func exportRequestParsing() throws {
        var data = allocator.buffer(capacity: 32)
        NBDCodec.writeString("disk", into: &data)
        data.writeInteger(UInt16(2))
        data.writeInteger(NBDInfo.name.rawValue)
        data.writeInteger(NBDInfo.blockSize.rawValue)
        #expect(try NBDCodec.parseExportRequest(data, option: .go) == NBDExportRequest(name: "disk", requestedInfo: [.name, .blockSize]))
        var short = data
        short.moveWriterIndex(to: data.writerIndex - 1)
        #expect(throws: NBDProtocolError.self) { try NBDCodec.parseExportRequest(short, option: .go) }
        var lying = allocator.buffer(capacity: 8)
        lying.writeInteger(UInt32(1000))
        lying.writeString("x")
        #expect(throws: NBDProtocolError.self) { try NBDCodec.parseExportRequest(lying, option: .info) }
    }

    /// Meta-context requests parse; trailing bytes and oversize strings are refused.
    @Test func metaContextParsing() throws {
        var data = allocator.buffer(capacity: 64)
        NBDCodec.writeString("", into: &data)
        data.writeInteger(UInt32(2))
        NBDCodec.writeString("base:allocation", into: &data)
        NBDCodec.writeString("qemu:dirty-bitmap:x", into: &data)
        let parsed = try NBDCodec.parseMetaContextRequest(data, option: .setMetaContext)
        #expect(parsed == NBDMetaContextRequest(exportName: "", queries: ["base:allocation", "qemu:dirty-bitmap:x"]))
        var trailing = data
        trailing.writeInteger(UInt8(0))
        #expect(throws: NBDProtocolError.self) { try NBDCodec.parseMetaContextRequest(trailing, option: .setMetaContext) }
        var huge = allocator.buffer(capacity: 8)
        huge.writeInteger(UInt32(NBDCodec.maximumStringLength + 1))
        #expect(throws: NBDProtocolError.self) { try NBDCodec.parseMetaContextRequest(huge, option: .listMetaContext) }
    }

    /// Structured chunks: header fields, DONE flag, error and block-status payloads.
    @Test func structuredChunks() {
        var buffer = allocator.buffer(capacity: 64)
        NBDCodec.writeErrorChunk(cookie: 7, error: .invalid, message: "bad", into: &buffer)
        #expect(buffer.readInteger(as: UInt32.self) == NBDMagic.structuredReply)
        #expect(buffer.readInteger(as: UInt16.self) == NBDChunkType.flagDone)
        #expect(buffer.readInteger(as: UInt16.self) == NBDChunkType.error.rawValue)
        #expect(buffer.readInteger(as: UInt64.self) == 7)
        #expect(buffer.readInteger(as: UInt32.self) == 9)
        #expect(buffer.readInteger(as: UInt32.self) == 22)
        #expect(buffer.readInteger(as: UInt16.self) == 3)
        #expect(buffer.readString(length: 3) == "bad")

        buffer.clear()
        NBDCodec.writeBlockStatusChunk(cookie: 1, contextID: 1, extents: [(4096, 0), (8192, 3)], into: &buffer)
        #expect(buffer.readableBytes == 20 + 4 + 16)
        #expect(buffer.getInteger(at: 16, as: UInt32.self) == 20)
        #expect(buffer.getInteger(at: 32, as: UInt32.self) == 8192)
        #expect(buffer.getInteger(at: 36, as: UInt32.self) == 3)
    }

    /// EXPORT_NAME's reply carries 124 zero bytes unless the client set NO_ZEROES.
    @Test func exportNameReplyPadding() {
        var buffer = allocator.buffer(capacity: 134)
        NBDCodec.writeExportNameReply(size: 1, flags: [.hasFlags], noZeroes: false, into: &buffer)
        #expect(buffer.readableBytes == 134)
        buffer.clear()
        NBDCodec.writeExportNameReply(size: 1, flags: [.hasFlags], noZeroes: true, into: &buffer)
        #expect(buffer.readableBytes == 10)
    }

    /// Error texts are cut at a character boundary, never inside one: the spec's strings are UTF-8.
    /// (The handler's old cut, `String(utf8.prefix(4096))!`, trapped on a 4096-byte name of "é".)
    @Test func errorTextsAreTruncatedAtCharacterBoundaries() throws {
        let name = String(repeating: "é", count: 2048)
        var buffer = allocator.buffer(capacity: 5000)
        NBDCodec.writeOptionError(.go, .errorUnknown, message: "no export named \"\(name)\"", into: &buffer)
        let length = try #require(buffer.getInteger(at: 16, as: UInt32.self))
        #expect(length <= UInt32(NBDCodec.maximumStringLength))
        #expect(buffer.readableBytes == 20 + Int(length))
        let text = try #require(buffer.getBytes(at: 20, length: Int(length)))
        #expect(String(validating: text, as: UTF8.self)?.hasPrefix("no export named \"éé") == true)

        buffer.clear()
        NBDCodec.writeErrorChunk(cookie: 1, error: .invalid, message: String(repeating: "a", count: 4095) + "é", into: &buffer)
        let chunkLength = try #require(buffer.getInteger(at: 24, as: UInt16.self))
        let chunkText = try #require(buffer.getBytes(at: 26, length: Int(chunkLength)))
        #expect(String(validating: chunkText, as: UTF8.self) == String(repeating: "a", count: 4095))
        #expect(buffer.getInteger(at: 16, as: UInt32.self) == 6 + UInt32(chunkLength))

        #expect(NBDCodec.truncated("ab😀", limit: 5) == "ab")
        #expect(NBDCodec.truncated("ab😀", limit: 6) == "ab😀")
        #expect(NBDCodec.truncated("short") == "short")
    }

    /// The reproducer's GO data (a 4096-byte name of two-byte characters) parses; one byte more is refused.
    @Test func longestExportNameOfMultibyteCharactersParses() throws {
        let name = String(repeating: "é", count: 2048)
        var data = allocator.buffer(capacity: 4200)
        NBDCodec.writeString(name, into: &data)
        data.writeInteger(UInt16(0))
        #expect(try NBDCodec.parseExportRequest(data, option: .go) == NBDExportRequest(name: name, requestedInfo: []))
        var longer = allocator.buffer(capacity: 4200)
        NBDCodec.writeString(name + "x", into: &longer)
        longer.writeInteger(UInt16(0))
        #expect(throws: NBDProtocolError.self) { try NBDCodec.parseExportRequest(longer, option: .info) }
    }

    /// Extreme header values decode as they are (range checks belong to the export, not the codec).
    @Test func extremeRequestFieldsDecode() throws {
        let request = NBDRequest(flags: NBDCommandFlags(rawValue: 0xffff), command: NBDCommand(rawValue: 0xffff),
                                 cookie: .max, offset: .max - 511, length: .max)
        var wire = allocator.buffer(capacity: 28)
        NBDCodec.writeRequest(request, into: &wire)
        #expect(try NBDCodec.readRequest(from: &wire) == request)
        #expect(NBDCommand(rawValue: 0xffff).description == "command 65535")
    }
}
