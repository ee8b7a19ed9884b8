import BlockExport
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing
@testable import NBD

/// An export in memory that answers at once on the caller's event loop (so a connection on an
/// `EmbeddedChannel` runs to its end in one call), records what it was asked, and fails the
/// requests `failures` names. What the handlers are tested against, not a disk.
final class MemoryExport: BlockExport {
    /// One call the export received.
    enum Call: Equatable {
        case read(offset: UInt64, length: Int)
        case write(offset: UInt64, bytes: [UInt8], fua: Bool)
        case flush
        case trim(offset: UInt64, length: UInt64, fua: Bool)
        case writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fastOnly: Bool, fua: Bool)
        case cache(offset: UInt64, length: UInt64)
        case blockStatus(offset: UInt64, length: UInt64, maxExtents: Int)
    }

    private struct State {
        var bytes: [UInt8]
        var calls: [Call] = []
        var held: [EventLoopPromise<Void>] = []
    }

    let size: UInt64
    let capabilities: ExportCapabilities
    let exportDescription = "memory export"
    /// Requests at these offsets fail with this kind of error.
    let failures: [UInt64: BlockExportError.Kind]
    /// While set, flushes are not answered until `release()`.
    let holdFlushes: Bool
    private let state: Mutex<State>

    init(size: UInt64 = 1 << 20, readOnly: Bool = false, canFastZero: Bool = true, minimumBlockSize: UInt32 = 1,
         maximumPayload: UInt32 = 64 << 10, failures: [UInt64: BlockExportError.Kind] = [:], holdFlushes: Bool = false) {
        self.size = size
        capabilities = ExportCapabilities(isReadOnly: readOnly, canTrim: true, canWriteZeroes: true, canFastZero: canFastZero,
                                          canMultiConnect: true,
                                          blockSizes: BlockSizeConstraints(minimum: minimumBlockSize, preferred: max(4096, minimumBlockSize),
                                                                                           maximum: maximumPayload))
        self.failures = failures
        self.holdFlushes = holdFlushes
        state = Mutex(State(bytes: (0..<Int(size)).map { UInt8(truncatingIfNeeded: $0 % 251) }))
    }

    var calls: [Call] { state.withLock { $0.calls } }
    func bytes(at offset: Int, count: Int) -> [UInt8] { state.withLock { Array($0.bytes[offset..<offset + count]) } }

    /// Answers the flushes held so far.
    func release() {
        for promise in state.withLock({ state in defer { state.held = [] }; return state.held }) { promise.succeed() }
    }

    private func run<T: Sendable>(_ call: Call, offset: UInt64, on eventLoop: any EventLoop, _ body: (inout [UInt8]) -> T) -> EventLoopFuture<T> {
        if let kind = failures[offset] {
            state.withLock { $0.calls.append(call) }
            return eventLoop.makeFailedFuture(BlockExportError(kind, "injected at offset \(offset)"))
        }
        return eventLoop.makeSucceededFuture(state.withLock { state in
            state.calls.append(call)
            return body(&state.bytes)
        })
    }

    func read(offset: UInt64, length: Int, allocator: ByteBufferAllocator, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer> {
        run(.read(offset: offset, length: length), offset: offset, on: eventLoop) { bytes in
            ByteBuffer(bytes: bytes[Int(offset)..<Int(offset) + length])
        }
    }

    func write(offset: UInt64, data: ByteBuffer, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let written = Array(data.readableBytesView)
        return run(.write(offset: offset, bytes: written, fua: fua), offset: offset, on: eventLoop) { bytes in
            bytes.replaceSubrange(Int(offset)..<Int(offset) + written.count, with: written)
        }
    }

    func flush(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        guard holdFlushes else { return run(.flush, offset: .max, on: eventLoop) { _ in } }
        let promise = eventLoop.makePromise(of: Void.self)
        state.withLock { $0.calls.append(.flush); $0.held.append(promise) }
        return promise.futureResult
    }

    func trim(offset: UInt64, length: UInt64, fua: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        run(.trim(offset: offset, length: length, fua: fua), offset: offset, on: eventLoop) { _ in }
    }

    func writeZeroes(offset: UInt64, length: UInt64, mayTrim: Bool, fastOnly: Bool, fua: Bool,
                     on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        run(.writeZeroes(offset: offset, length: length, mayTrim: mayTrim, fastOnly: fastOnly, fua: fua), offset: offset, on: eventLoop) {
            $0.replaceSubrange(Int(offset)..<Int(offset + length), with: repeatElement(0, count: Int(length)))
        }
    }

    func cache(offset: UInt64, length: UInt64, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        run(.cache(offset: offset, length: length), offset: offset, on: eventLoop) { _ in }
    }

    /// Two extents: data for the first half of the range, a hole for the rest (one when asked).
    func blockStatus(offset: UInt64, length: UInt64, maxExtents: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[BlockExtent]> {
        run(.blockStatus(offset: offset, length: length, maxExtents: maxExtents), offset: offset, on: eventLoop) { _ in
            let first = BlockExtent(length: max(1, length / 2), isHole: false, isZero: false)
            guard maxExtents > 1, length > 1 else { return [first] }
            return [first, BlockExtent(length: length - first.length, isHole: true, isZero: true)]
        }
    }

    func close() async throws {}
}

/// One client connection to the server's real pipeline (`NBDConnectionPipeline`) on an
/// `EmbeddedChannel`: the test writes what a client sends and reads what the server flushed,
/// message by message, with the wire formats written out here from the protocol document.
final class NBDTestConnection {
    let channel = EmbeddedChannel()
    /// What the server flushed and the test has not read yet.
    private var received = ByteBuffer()

    /// Connects to a server exporting `exports` (name, export), at most `maximumConnections`
    /// served (a `tracker` shared by several connections counts them all).
    init(exports: [(name: String, export: any BlockExport)], tracker: NBDConnectionTracker? = nil, tls: NBDServerTLSPolicy? = nil) throws {
        let limits = NBDServerLimits()
        let logger = Logger(label: "nbd-test") { _ in SwiftLogNoOpLogHandler() }
        let environment = NBDConnectionEnvironment(
            registry: NBDExportRegistry(exports), limits: limits,
            tracker: tracker ?? NBDConnectionTracker(limit: limits.maximumConnections),
            budget: NBDPayloadBudget(limit: limits.maximumPayloadBytes), logLimiter: NBDLogLimiter(logger: logger), tls: tls)
        try NBDConnectionPipeline.configure(channel, environment: environment, logger: logger)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 10809)).wait()
    }

    var isOpen: Bool { channel.isActive }

    /// Sends `bytes` as one read, or in reads of `chunk` bytes.
    func send(_ bytes: ByteBuffer, chunk: Int? = nil) throws {
        var bytes = bytes
        while bytes.readableBytes > 0, channel.isActive {
            try channel.writeInbound(bytes.readSlice(length: min(chunk ?? bytes.readableBytes, bytes.readableBytes))!)
        }
        channel.embeddedEventLoop.run()
    }

    func sendFlags(_ flags: NBDClientFlags = [.fixedNewstyle, .noZeroes]) throws {
        var buffer = ByteBuffer()
        buffer.writeInteger(flags.rawValue)
        try send(buffer)
    }

    func sendOption(_ option: NBDOption, _ data: ByteBuffer = ByteBuffer()) throws {
        var buffer = ByteBuffer()
        NBDCodec.writeOptionRequest(option, data: data, into: &buffer)
        try send(buffer)
    }

    func sendRequest(_ command: NBDCommand, flags: NBDCommandFlags = [], cookie: UInt64 = 7, offset: UInt64 = 0, length: UInt32 = 0,
                     payload: [UInt8]? = nil, chunk: Int? = nil) throws {
        var buffer = ByteBuffer()
        NBDCodec.writeRequest(NBDRequest(flags: flags, command: command, cookie: cookie, offset: offset,
                                         length: payload.map { UInt32($0.count) } ?? length), into: &buffer)
        if let payload { buffer.writeBytes(payload) }
        try send(buffer, chunk: chunk)
    }

    /// The data of GO/INFO for `name`, asking for `infos`.
    static func exportRequest(_ name: String, infos: [NBDInfo] = []) -> ByteBuffer {
        var data = ByteBuffer()
        NBDCodec.writeString(name, into: &data)
        data.writeInteger(UInt16(infos.count))
        for info in infos { data.writeInteger(info.rawValue) }
        return data
    }

    /// The data of LIST/SET_META_CONTEXT.
    static func metaContextRequest(_ name: String, queries: [String]) -> ByteBuffer {
        var data = ByteBuffer()
        NBDCodec.writeString(name, into: &data)
        data.writeInteger(UInt32(queries.count))
        for query in queries { NBDCodec.writeString(query, into: &data) }
        return data
    }

    // MARK: Reading what the server sent

    private func collect() {
        channel.embeddedEventLoop.run()
        while let buffer = try? channel.readOutbound(as: ByteBuffer.self) { received.writeImmutableBuffer(buffer) }
    }

    /// Bytes the server sent and the test has not read.
    var unread: Int {
        collect()
        return received.readableBytes
    }

    /// The next `count` bytes the server sent; fails the test if it sent fewer.
    func bytes(_ count: Int, sourceLocation: SourceLocation = #_sourceLocation) throws -> ByteBuffer {
        collect()
        let slice = received.readSlice(length: count)
        return try #require(slice, "the server sent \(received.readableBytes) of \(count) bytes", sourceLocation: sourceLocation)
    }

    /// The greeting: NBDMAGIC, IHAVEOPT, handshake flags.
    func readGreeting() throws -> NBDHandshakeFlags {
        var greeting = try bytes(18)
        #expect(greeting.readInteger(as: UInt64.self) == NBDMagic.greeting)
        #expect(greeting.readInteger(as: UInt64.self) == NBDMagic.option)
        return NBDHandshakeFlags(rawValue: greeting.readInteger()!)
    }

    struct OptionReply {
        var option: NBDOption
        var type: NBDOptionReply
        var data: ByteBuffer
        /// The text of an error reply.
        var text: String { String(buffer: data) }
    }

    func readOptionReply(sourceLocation: SourceLocation = #_sourceLocation) throws -> OptionReply {
        var header = try bytes(20, sourceLocation: sourceLocation)
        #expect(header.readInteger(as: UInt64.self) == NBDMagic.optionReply, sourceLocation: sourceLocation)
        let option = NBDOption(rawValue: header.readInteger()!)
        let type = NBDOptionReply(rawValue: header.readInteger()!)
        let data = try bytes(Int(header.readInteger(as: UInt32.self)!), sourceLocation: sourceLocation)
        return OptionReply(option: option, type: type, data: data)
    }

    /// Reads the replies to one INFO or GO up to its ACK; returns the INFO replies by type.
    func readExportInfo(_ option: NBDOption) throws -> [NBDInfo: ByteBuffer] {
        var infos: [NBDInfo: ByteBuffer] = [:]
        while true {
            var reply = try readOptionReply()
            #expect(reply.option == option)
            if reply.type == .ack { return infos }
            try #require(reply.type == .info, "reply \(reply.type.rawValue) to \(option): \(reply.text)")
            infos[NBDInfo(rawValue: reply.data.readInteger()!)] = reply.data
        }
    }

    /// Greets, negotiates (structured replies and base:allocation if asked) and starts transmission
    /// on `name` with GO.
    func negotiate(_ name: String = "disk", structured: Bool = false, blockStatus: Bool = false) throws {
        _ = try readGreeting()
        try sendFlags()
        if structured || blockStatus {
            try sendOption(.structuredReply)
            #expect(try readOptionReply().type == .ack)
        }
        if blockStatus {
            try sendOption(.setMetaContext, Self.metaContextRequest(name, queries: [NBDMetaContext.baseAllocation]))
            #expect(try readOptionReply().type == .metaContext)
            #expect(try readOptionReply().type == .ack)
        }
        try sendOption(.go, Self.exportRequest(name))
        _ = try readExportInfo(.go)
    }

    struct SimpleReply: Equatable {
        var error: NBDErrorCode
        var cookie: UInt64
    }

    func readSimpleReply(sourceLocation: SourceLocation = #_sourceLocation) throws -> SimpleReply {
        var reply = try bytes(16, sourceLocation: sourceLocation)
        #expect(reply.readInteger(as: UInt32.self) == NBDMagic.simpleReply, sourceLocation: sourceLocation)
        return SimpleReply(error: NBDErrorCode(rawValue: reply.readInteger()!), cookie: reply.readInteger()!)
    }

    struct Chunk {
        var done: Bool
        var type: NBDChunkType
        var cookie: UInt64
        var data: ByteBuffer
    }

    func readChunk(sourceLocation: SourceLocation = #_sourceLocation) throws -> Chunk {
        var header = try bytes(20, sourceLocation: sourceLocation)
        #expect(header.readInteger(as: UInt32.self) == NBDMagic.structuredReply, sourceLocation: sourceLocation)
        let flags = header.readInteger(as: UInt16.self)!
        let type = NBDChunkType(rawValue: header.readInteger()!)
        let cookie = header.readInteger(as: UInt64.self)!
        let data = try bytes(Int(header.readInteger(as: UInt32.self)!), sourceLocation: sourceLocation)
        return Chunk(done: flags & NBDChunkType.flagDone != 0, type: type, cookie: cookie, data: data)
    }
}
