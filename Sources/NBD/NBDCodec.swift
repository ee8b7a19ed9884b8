import NIOCore

/// Encoding and decoding of NBD messages on `ByteBuffer`s. No I/O and no state: the connection
/// handler owns the state machine and the transport. Decoders return nil when the buffer does not
/// hold a whole message yet and leave it untouched; they throw `NBDProtocolError` on garbage.
public enum NBDCodec {
    /// Longest string the spec allows (export names, queries, messages).
    public static let maximumStringLength = 4096

    // MARK: Handshake

    /// The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    public static func writeGreeting(_ flags: NBDHandshakeFlags, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDMagic.greeting)
        buffer.writeInteger(NBDMagic.option)
        buffer.writeInteger(flags.rawValue)
    }

    /// The client's flags (4 bytes), checked against the known set.
    public static func readClientFlags(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDClientFlags? {
        guard let raw = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        let flags = NBDClientFlags(rawValue: raw)
        guard NBDClientFlags.known.isSuperset(of: flags) else { throw .unknownClientFlags(raw) }
        buffer.moveReaderIndex(forwardBy: 4)
        return flags
    }

    /// An option request header (16 bytes); its data is left in the buffer.
    public static func readOptionHeader(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDOptionHeader? {
        guard let (magic, option, length) = buffer.peekMultipleIntegers(as: (UInt64, UInt32, UInt32).self) else { return nil }
        guard magic == NBDMagic.option else { throw .badMagic(expected: NBDMagic.option, received: magic) }
        buffer.moveReaderIndex(forwardBy: 16)
        return NBDOptionHeader(option: NBDOption(rawValue: option), length: length)
    }

    /// Client side of the above, for tests and tools.
    public static func writeOptionRequest(_ option: NBDOption, data: ByteBuffer, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDMagic.option)
        buffer.writeInteger(option.rawValue)
        buffer.writeInteger(UInt32(data.readableBytes))
        buffer.writeImmutableBuffer(data)
    }

    /// Parses the whole data of NBD_OPT_INFO / NBD_OPT_GO.
    public static func parseExportRequest(_ data: ByteBuffer, option: NBDOption) throws(NBDProtocolError) -> NBDExportRequest {
        var data = data
        let name = try readString(from: &data, option: option, what: "export name")
        guard let count = data.readInteger(as: UInt16.self), data.readableBytes == Int(count) * 2 else {
            throw .malformedOption(option, "information request count does not match the data length")
        }
        var infos: [NBDInfo] = []
        while let info = data.readInteger(as: UInt16.self) { infos.append(NBDInfo(rawValue: info)) }
        return NBDExportRequest(name: name, requestedInfo: infos)
    }

    /// Parses the whole data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
    public static func parseMetaContextRequest(_ data: ByteBuffer, option: NBDOption) throws(NBDProtocolError) -> NBDMetaContextRequest {
        var data = data
        let name = try readString(from: &data, option: option, what: "export name")
        guard let count = data.readInteger(as: UInt32.self) else {
            throw .malformedOption(option, "missing query count")
        }
        var queries: [String] = []
        for _ in 0..<count { queries.append(try readString(from: &data, option: option, what: "query")) }
        guard data.readableBytes == 0 else { throw .malformedOption(option, "\(data.readableBytes) trailing bytes") }
        return NBDMetaContextRequest(exportName: name, queries: queries)
    }

    /// A u32-length-prefixed UTF-8 string.
    private static func readString(from data: inout ByteBuffer, option: NBDOption, what: String) throws(NBDProtocolError) -> String {
        guard let length = data.readInteger(as: UInt32.self) else { throw .malformedOption(option, "missing \(what) length") }
        guard length <= maximumStringLength else { throw .malformedOption(option, "\(what) of \(length) bytes is too long") }
        guard let bytes = data.readBytes(length: Int(length)) else {
            throw .malformedOption(option, "\(what) length \(length) exceeds the option data")
        }
        guard !bytes.contains(0), let string = String(validating: bytes, as: UTF8.self) else {
            throw .malformedOption(option, "\(what) is not valid UTF-8")
        }
        return string
    }

    /// Writes a u32-length-prefixed string.
    public static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(string.utf8.count))
        buffer.writeString(string)
    }

    /// An option reply: magic, option, reply type, data length, data.
    public static func writeOptionReply(_ option: NBDOption, _ reply: NBDOptionReply, data: ByteBuffer? = nil, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDMagic.optionReply)
        buffer.writeInteger(option.rawValue)
        buffer.writeInteger(reply.rawValue)
        buffer.writeInteger(UInt32(data?.readableBytes ?? 0))
        if let data { buffer.writeImmutableBuffer(data) }
    }

    /// NBD_INFO_EXPORT data: size and transmission flags.
    public static func writeInfoExport(size: UInt64, flags: NBDTransmissionFlags, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDInfo.export.rawValue)
        buffer.writeInteger(size)
        buffer.writeInteger(flags.rawValue)
    }

    /// NBD_INFO_NAME or NBD_INFO_DESCRIPTION data (the string is not length-prefixed).
    public static func writeInfoString(_ info: NBDInfo, _ string: String, into buffer: inout ByteBuffer) {
        buffer.writeInteger(info.rawValue)
        buffer.writeString(string)
    }

    /// NBD_INFO_BLOCK_SIZE data.
    public static func writeInfoBlockSize(minimum: UInt32, preferred: UInt32, maximum: UInt32, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDInfo.blockSize.rawValue)
        buffer.writeInteger(minimum)
        buffer.writeInteger(preferred)
        buffer.writeInteger(maximum)
    }

    /// The reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES.
    public static func writeExportNameReply(size: UInt64, flags: NBDTransmissionFlags, noZeroes: Bool, into buffer: inout ByteBuffer) {
        buffer.writeInteger(size)
        buffer.writeInteger(flags.rawValue)
        if !noZeroes { buffer.writeRepeatingByte(0, count: 124) }
    }

    // MARK: Transmission

    /// A transmission request header (28 bytes); a WRITE's payload is left in the buffer.
    public static func readRequest(from buffer: inout ByteBuffer) throws(NBDProtocolError) -> NBDRequest? {
        guard let (magic, flags, command, cookie, offset, length) =
                buffer.peekMultipleIntegers(as: (UInt32, UInt16, UInt16, UInt64, UInt64, UInt32).self) else { return nil }
        guard magic == NBDMagic.request else { throw .badMagic(expected: UInt64(NBDMagic.request), received: UInt64(magic)) }
        buffer.moveReaderIndex(forwardBy: NBDRequest.wireSize)
        return NBDRequest(flags: NBDCommandFlags(rawValue: flags), command: NBDCommand(rawValue: command), cookie: cookie,
                          offset: offset, length: length)
    }

    /// Client side of the above, for tests and tools.
    public static func writeRequest(_ request: NBDRequest, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDMagic.request)
        buffer.writeInteger(request.flags.rawValue)
        buffer.writeInteger(request.command.rawValue)
        buffer.writeInteger(request.cookie)
        buffer.writeInteger(request.offset)
        buffer.writeInteger(request.length)
    }

    /// A simple reply header (16 bytes); a successful READ's data follows it.
    public static func writeSimpleReply(cookie: UInt64, error: NBDErrorCode, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDMagic.simpleReply)
        buffer.writeInteger(error.rawValue)
        buffer.writeInteger(cookie)
    }

    /// A structured reply chunk header (20 bytes); `length` bytes of chunk payload follow.
    public static func writeChunkHeader(cookie: UInt64, type: NBDChunkType, done: Bool, length: Int, into buffer: inout ByteBuffer) {
        buffer.writeInteger(NBDMagic.structuredReply)
        buffer.writeInteger(done ? NBDChunkType.flagDone : 0)
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(cookie)
        buffer.writeInteger(UInt32(length))
    }

    /// The header of a final OFFSET_DATA chunk carrying `dataLength` bytes read at `offset`.
    public static func writeOffsetDataHeader(cookie: UInt64, offset: UInt64, dataLength: Int, into buffer: inout ByteBuffer) {
        writeChunkHeader(cookie: cookie, type: .offsetData, done: true, length: 8 + dataLength, into: &buffer)
        buffer.writeInteger(offset)
    }

    /// A final ERROR chunk with a message for people (truncated to the spec's string limit).
    public static func writeErrorChunk(cookie: UInt64, error: NBDErrorCode, message: String, into buffer: inout ByteBuffer) {
        let text = truncated(message)
        writeChunkHeader(cookie: cookie, type: .error, done: true, length: 6 + text.utf8.count, into: &buffer)
        buffer.writeInteger(error.rawValue)
        buffer.writeInteger(UInt16(text.utf8.count))
        buffer.writeString(text)
    }

    /// An option error reply (`reply` has bit 31 set) carrying `message` for people, truncated to
    /// the spec's string limit.
    public static func writeOptionError(_ option: NBDOption, _ reply: NBDOptionReply, message: String, into buffer: inout ByteBuffer) {
        writeOptionReply(option, reply, data: ByteBuffer(string: truncated(message)), into: &buffer)
    }

    /// `message` cut to at most `limit` bytes at a character boundary: the spec's strings are
    /// UTF-8, and a cut inside a character would not be.
    public static func truncated(_ message: String, limit: Int = maximumStringLength) -> String {
        guard message.utf8.count > limit else { return message }
        var bytes = 0
        var end = message.unicodeScalars.startIndex
        for scalar in message.unicodeScalars {
            let width = UTF8.width(scalar)
            guard bytes + width <= limit else { break }
            bytes += width
            message.unicodeScalars.formIndex(after: &end)
        }
        return String(message.unicodeScalars[..<end])
    }

    /// A final BLOCK_STATUS chunk for one metadata context: (length, status flags) descriptors.
    public static func writeBlockStatusChunk(cookie: UInt64, contextID: UInt32, extents: [(length: UInt32, flags: UInt32)],
                                             into buffer: inout ByteBuffer) {
        writeChunkHeader(cookie: cookie, type: .blockStatus, done: true, length: 4 + 8 * extents.count, into: &buffer)
        buffer.writeInteger(contextID)
        for extent in extents {
            buffer.writeInteger(extent.length)
            buffer.writeInteger(extent.flags)
        }
    }
}
