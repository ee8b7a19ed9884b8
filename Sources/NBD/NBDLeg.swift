import BlockIO
import Dispatch
import Logging
import NIOCore
import NIOPosix

/// A mirror leg that is an export of an NBD server elsewhere (nbdkit, qemu-nbd,
/// qemu-storage-daemon, another blockmirror), reached by its URI.
///
/// Requests are cut to what the server accepts (`NBDRequestSplit`: its minimum block size, its
/// maximum payload) and spread over the connections — several when the server offers
/// CAN_MULTI_CONN, which promises that a FLUSH on one covers the writes completed on all. Where the
/// server lacks a command the leg does what it means another way: FUA as a write then a FLUSH,
/// WRITE_ZEROES as zeroes written, TRIM and CACHE (hints) as nothing; a server without FLUSH has no
/// cache to flush (the NBD spec), so its acknowledged writes are taken as durable. BLOCK_STATUS
/// `base:allocation` gives the allocation map, so the copier skips what reads as zeroes.
///
/// A connection that breaks or a request that gets no reply within the request timeout fails
/// that I/O (and, through the mirror, the target) with an error naming the URI; nothing waits
/// forever on a remote that stopped answering.
public final class NBDLeg: Leg {
    /// How a remote leg connects.
    public struct Options: Sendable {
        /// Connections to open when the server offers CAN_MULTI_CONN (one otherwise).
        public var connections: Int
        /// How long connecting and negotiating may take.
        public var connectTimeout: TimeAmount
        /// How long a request may go unanswered before the connection is given up.
        public var requestTimeout: TimeAmount

        public init(connections: Int = 4, connectTimeout: TimeAmount = .seconds(30), requestTimeout: TimeAmount = .seconds(30)) {
            self.connections = max(1, connections)
            self.connectTimeout = connectTimeout
            self.requestTimeout = requestTimeout
        }
    }

    public let uri: NBDURI
    public var path: String { uri.description }
    public let size: UInt64
    /// The server's minimum block size: every request the leg sends is a multiple of it.
    public var alignment: Int { Int(split.minimum) }
    public var requiredAlignment: Int { Int(split.minimum) }
    public let identity: LegIdentity
    /// How requests are cut for this server.
    public let split: NBDRequestSplit
    /// What the server offers (its transmission flags).
    public let offers: NBDTransmissionFlags
    private let connections: [NBDClient]
    private let turn = Mutex(0)
    private let closed = Mutex(false)
    /// Zeroes to write where the server has no WRITE_ZEROES: one buffer, sliced.
    private let zeroes: ByteBuffer

    /// The event loops remote legs' connections run on: their own, so that a caller that must wait
    /// on a leg (`flushNow`, the blocking `allocationMap`) never blocks the loop that answers it.
    public static let eventLoops: any EventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: min(4, max(2, System.coreCount)))

    private init(uri: NBDURI, connections: [NBDClient]) {
        let export = connections[0].export
        self.uri = uri
        self.connections = connections
        size = export.size
        offers = export.flags
        split = NBDRequestSplit(blockSizes: export.blockSizes)
        identity = LegIdentity(kind: .nbd, path: uri.description, stableID: uri.location)
        let zeroChunk = max(split.minimum, min(split.maximumPayload, 1 << 20) / split.minimum * split.minimum)
        zeroes = ByteBuffer(repeating: 0, count: Int(zeroChunk))
    }

    /// Connects to `uri` — `options.connections` times when the server offers CAN_MULTI_CONN —
    /// and checks that the export can serve as a leg: writable unless `readOnly`, the same on
    /// every connection. A TLS URI needs `tls`. The error names the URI.
    public static func open(_ uri: NBDURI, tls: (any NBDTLSProvider)? = nil, readOnly: Bool, options: Options = Options(),
                            group: any EventLoopGroup = eventLoops, logger: Logger) async throws(NBDClientError) -> NBDLeg {
        let first = try await NBDClient.connect(to: uri, tls: tls, group: group, connectTimeout: options.connectTimeout,
                                                requestTimeout: options.requestTimeout)
        var connections = [first]
        do throws(NBDClientError) {
            if !readOnly && first.export.flags.contains(.readOnly) {
                throw NBDClientError(uri: uri, reason: "the export is read-only: a mirror writes both legs")
            }
            if first.export.flags.contains(.canMultiConn) {
                for _ in 1..<options.connections {
                    let more: NBDClient
                    do {
                        more = try await NBDClient.connect(to: uri, tls: tls, group: group, connectTimeout: options.connectTimeout,
                                                           requestTimeout: options.requestTimeout)
                    } catch {
                        // A server may take fewer connections than it could serve (a limit): the
                        // ones made are enough.
                        logger.notice("NBD export: fewer connections than asked",
                                      metadata: ["uri": "\(uri)", "connections": "\(connections.count)", "reason": "\(error.reason)"])
                        break
                    }
                    connections.append(more)
                    guard more.export == first.export else {
                        throw NBDClientError(uri: uri, reason: "the export differs from one connection to the next: "
                                             + Self.differences(first.export, more.export))
                    }
                }
            }
        } catch {
            for connection in connections { await connection.close() }
            throw error
        }
        let leg = NBDLeg(uri: uri, connections: connections)
        var notes: [String] = []
        if !leg.offers.contains(.sendFlush) { notes.append("no FLUSH: its acknowledged writes are taken as durable") }
        else if !leg.offers.contains(.sendFUA) { notes.append("no FUA: a durable write is sent as a write and a FLUSH") }
        if !leg.offers.contains(.sendWriteZeroes) { notes.append("no WRITE_ZEROES: zeroes are written as data") }
        if first.export.baseAllocationID == nil { notes.append("no base:allocation: every region is copied as data") }
        logger.info("NBD export opened", metadata: [
            "uri": "\(uri)", "size": "\(leg.size)", "connections": "\(connections.count)",
            "block-sizes": "\(leg.split.minimum)/\(leg.split.maximumPayload)",
            "notes": "\(notes.isEmpty ? "none" : notes.joined(separator: "; "))"])
        return leg
    }

    deinit { close() }

    public func writeTrace() -> LegWriteTrace {
        LegWriteTrace(size: size, untraceable: "an NBD export: its server reports no writes made by others")
    }

    /// nil: what stands behind a URI is the server's to know.
    public func replacement() -> String? { nil }

    // MARK: I/O

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let base = UInt(bitPattern: buffer)
        send(.read, offset: offset, length: UInt64(count), step: split.maximumPayload, completion: completion) { client, piece in
            client.request(.read, offset: piece.offset, length: piece.length).flatMapThrowing { reply in
                guard case .read(let parts) = reply else { throw NBDClientError(uri: client.uri, reason: "a READ answered with \(reply)") }
                let start = UnsafeMutableRawPointer(bitPattern: base)! + Int(piece.offset - offset)
                for part in parts {
                    switch part {
                    case let .data(at, data):
                        data.withUnsafeReadableBytes { (start + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                    case let .hole(at, length):
                        (start + at).initializeMemory(as: UInt8.self, repeating: 0, count: length)
                    }
                }
            }
        }
    }

    public func write(from buffer: UnsafeRawPointer, count: Int, offset: UInt64, durable: Bool,
                      completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let base = UInt(bitPattern: buffer)
        let fua = durable && offers.contains(.sendFUA)
        send(.write, offset: offset, length: UInt64(count), step: split.maximumPayload,
             completion: flushedAfter(durable && !fua, completion)) { client, piece in
            let data = ByteBuffer(bytes: UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base)! + Int(piece.offset - offset),
                                                                count: Int(piece.length)))
            return client.request(.write, flags: fua ? .fua : [], offset: piece.offset, length: piece.length, payload: data)
                .map { _ in }
        }
    }

    public func flush(completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard offers.contains(.sendFlush) else { return completion(ifOpen(.fdatasync, nil, nil)) }
        send(.fdatasync, offset: 0, length: 1, step: 1, checked: false, completion: completion) { client, _ in
            client.request(.flush, offset: 0, length: 0).map { _ in }
        }
    }

    public func flushNow() throws(BlockIOError) {
        try wait(.fdatasync) { flush(completion: $0) }
    }

    public func discard(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard offers.contains(.sendTrim) else { return completion(ifOpen(.discard, offset, length)) }
        send(.discard, offset: offset, length: length, step: split.maximumRange, completion: completion) { client, piece in
            client.request(.trim, offset: piece.offset, length: piece.length).map { _ in }
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                            completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        let fast = offers.isSuperset(of: [.sendWriteZeroes, .sendFastZero])
        if fastOnly && !fast {
            return completion(.failure(BlockIOError(path: path, operation: .zero, offset: offset, length: length, errno: .notSupported,
                                                    detail: "the export offers no fast zeroing")))
        }
        guard offers.contains(.sendWriteZeroes) else {
            let zeroes = self.zeroes
            return send(.zero, offset: offset, length: length, step: UInt32(zeroes.readableBytes), completion: completion) { client, piece in
                client.request(.write, offset: piece.offset, length: piece.length, payload: zeroes.getSlice(at: 0, length: Int(piece.length)))
                    .map { _ in }
            }
        }
        var flags: NBDCommandFlags = mayDeallocate ? [] : .noHole
        if fastOnly { flags.insert(.fastZero) }
        send(.zero, offset: offset, length: length, step: split.maximumRange, completion: completion) { [flags] client, piece in
            client.request(.writeZeroes, flags: flags, offset: piece.offset, length: piece.length).map { _ in }
        }
    }

    public func prefetch(offset: UInt64, length: UInt64, completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        guard offers.contains(.sendCache) else { return completion(ifOpen(.read, offset, length)) }
        send(.read, offset: offset, length: length, step: split.maximumRange, completion: completion) { client, piece in
            client.request(.cache, offset: piece.offset, length: piece.length).map { _ in }
        }
    }

    /// From BLOCK_STATUS `base:allocation`: an extent that reads as zeroes (NBD_STATE_ZERO) is a
    /// hole here, whether or not the server allocated it. A server without the context, or a range
    /// off its block size, reports data.
    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int,
                              completion: @escaping @Sendable (Result<[BlockDevice.Extent], BlockIOError>) -> Void) {
        let length = min(length, size &- min(size, offset), UInt64(split.maximumRange))
        guard connections[0].export.baseAllocationID != nil, split.misalignment(offset: offset, length: length) == nil,
              length > 0, maxExtents > 0 else {
            return completion(ifOpen(.seek, offset, length).map { [BlockDevice.Extent(length: length, isHole: false)] })
        }
        let extents = Mutex<[BlockDevice.Extent]>([])
        send(.seek, offset: offset, length: length, step: split.maximumRange, completion: { result in
            completion(result.map { extents.withLock { $0 } })
        }) { client, piece in
            client.request(.blockStatus, flags: maxExtents == 1 ? .requestOne : [], offset: piece.offset, length: piece.length)
                .flatMapThrowing { reply in
                    guard case .extents(let found) = reply else {
                        throw NBDClientError(uri: client.uri, reason: "a BLOCK_STATUS answered with \(reply)")
                    }
                    var map: [BlockDevice.Extent] = []
                    var covered: UInt64 = 0
                    for extent in found where covered < length && map.count < maxExtents {
                        let piece = min(UInt64(extent.length), length - covered)
                        let isHole = extent.flags & NBDMetaContext.stateZero != 0
                        if let last = map.last, last.isHole == isHole { map[map.count - 1].length += piece }
                        else { map.append(BlockDevice.Extent(length: piece, isHole: isHole)) }
                        covered += piece
                    }
                    extents.withLock { $0 = map }
                }
        }
    }

    public func allocationMap(offset: UInt64, length: UInt64, maxExtents: Int) throws(BlockIOError) -> [BlockDevice.Extent] {
        try wait(.seek) { allocationMap(offset: offset, length: length, maxExtents: maxExtents, completion: $0) }
    }

    /// Sends DISC on every connection once its requests in flight are answered; I/O asked from
    /// now on fails.
    public func close() {
        guard closed.withLock({ closed in defer { closed = true }; return !closed }) else { return }
        for connection in connections { Task { await connection.close() } }
    }

    // MARK: Requests

    /// Runs one leg request as NBD requests of at most `step` bytes each, spread over the
    /// connections, and completes once all are answered: with the first failure, if any.
    /// `checked`: the range must lie within the export and on its block size.
    private func send(_ operation: BlockOperation, offset: UInt64, length: UInt64, step: UInt32, checked: Bool = true,
                      completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void,
                      each: @escaping @Sendable (NBDClient, (offset: UInt64, length: UInt32)) -> EventLoopFuture<Void>) {
        if case .failure(let error) = ifOpen(operation, offset, length) { return completion(.failure(error)) }
        if checked {
            let problem = offset > size || length > size - offset ? "beyond the end of the \(size)-byte export"
                : split.misalignment(offset: offset, length: length)
            if let problem {
                return completion(.failure(BlockIOError(path: path, operation: operation, offset: offset, length: length,
                                                        errno: .invalidArgument, detail: problem)))
            }
        }
        let pieces = checked ? NBDRequestSplit.pieces(offset: offset, length: length, step: step) : [(offset, UInt32(0))]
        guard !pieces.isEmpty else { return completion(.success(())) }
        let join = Join(pieces.count, completion)
        for piece in pieces {
            each(nextConnection(), piece).whenComplete { [self] result in
                switch result {
                case .success: join.finish(nil)
                case .failure(let error):
                    join.finish(failure(error, operation, checked ? piece.offset : nil, checked ? UInt64(piece.length) : nil))
                }
            }
        }
    }

    /// `completion`, after a FLUSH when `flushing` and the request succeeded.
    private func flushedAfter(_ flushing: Bool, _ completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void)
        -> @Sendable (Result<Void, BlockIOError>) -> Void {
        guard flushing else { return completion }
        return { [self] result in
            guard case .success = result else { return completion(result) }
            flush(completion: completion)
        }
    }

    /// The next connection in turn that is not broken (a broken one fails every request; with all
    /// broken, any: the request then fails with its reason).
    private func nextConnection() -> NBDClient {
        let start = turn.withLock { turn in defer { turn = (turn + 1) % connections.count }; return turn }
        for step in 0..<connections.count {
            let connection = connections[(start + step) % connections.count]
            if !connection.isBroken { return connection }
        }
        return connections[start]
    }

    /// What differs between the exports two connections negotiated, for the error.
    private static func differences(_ a: NBDClientHandshake.Export, _ b: NBDClientHandshake.Export) -> String {
        var found: [String] = []
        if a.size != b.size { found.append("size \(a.size) then \(b.size) bytes") }
        if a.flags != b.flags { found.append("flags 0x\(String(a.flags.rawValue, radix: 16)) then 0x\(String(b.flags.rawValue, radix: 16))") }
        if a.structuredReplies != b.structuredReplies { found.append("structured replies \(a.structuredReplies) then \(b.structuredReplies)") }
        if a.baseAllocationID != b.baseAllocationID { found.append("base:allocation context \(a.baseAllocationID.map(String.init) ?? "none") then \(b.baseAllocationID.map(String.init) ?? "none")") }
        if a.blockSizes?.minimum != b.blockSizes?.minimum || a.blockSizes?.maximum != b.blockSizes?.maximum {
            found.append("block sizes \(a.blockSizes.map { "\($0.minimum)/\($0.maximum)" } ?? "none") then \(b.blockSizes.map { "\($0.minimum)/\($0.maximum)" } ?? "none")")
        }
        return found.isEmpty ? "block sizes" : found.joined(separator: ", ")
    }

    /// Success, or the error of I/O asked after `close()`.
    private func ifOpen(_ operation: BlockOperation, _ offset: UInt64?, _ length: UInt64?) -> Result<Void, BlockIOError> {
        guard closed.withLock({ $0 }) else { return .success(()) }
        return .failure(BlockIOError(path: path, operation: operation, offset: offset, length: length, errno: .badDescriptor,
                                     detail: "the leg was closed"))
    }

    /// A failed NBD request as the leg's error: the server's error number where it gave one
    /// (NBD's are Linux's), else EIO with what happened to the connection.
    private func failure(_ error: any Error, _ operation: BlockOperation, _ offset: UInt64?, _ length: UInt64?) -> BlockIOError {
        guard let error = error as? NBDClientError else {
            return BlockIOError(path: path, operation: operation, offset: offset, length: length, errno: .ioError, detail: "\(error)")
        }
        let errno = error.failure.map { Errno(rawValue: Int32(bitPattern: $0.error.rawValue)) } ?? .ioError
        return BlockIOError(path: path, operation: operation, offset: offset, length: length, errno: errno, detail: error.reason)
    }

    /// Runs `body` and waits on the calling thread for the result it completes with. On one of
    /// the connections' own event loops that would wait for itself: refused with an error.
    private func wait<T: Sendable>(_ operation: BlockOperation,
                                   _ body: (@escaping @Sendable (Result<T, BlockIOError>) -> Void) -> Void) throws(BlockIOError) -> T {
        if connections.contains(where: { $0.eventLoop.inEventLoop }) {
            throw BlockIOError(path: path, operation: operation, errno: .invalidArgument,
                               detail: "a blocking call on the leg's own event loop (it would wait for itself)")
        }
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<T, BlockIOError>?>(nil)
        body { result in
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        return try outcome.withLock { $0! }.get()
    }

    /// Completes a leg request made of several NBD requests once every one is answered.
    private final class Join: Sendable {
        private let state: Mutex<(left: Int, failure: BlockIOError?)>
        private let completion: @Sendable (Result<Void, BlockIOError>) -> Void

        init(_ count: Int, _ completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
            state = Mutex((count, nil))
            self.completion = completion
        }

        func finish(_ failure: BlockIOError?) {
            let (done, first): (Bool, BlockIOError?) = state.withLock { state in
                if state.failure == nil { state.failure = failure }
                state.left -= 1
                return (state.left == 0, state.failure)
            }
            guard done else { return }
            completion(first.map { .failure($0) } ?? .success(()))
        }
    }
}
