import BlockExport
import BlockIO
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// An NBD server on SwiftNIO: fixed-newstyle negotiation and transmission for the exports of a
/// registry, on unix sockets and TCP, many clients at once, each held within `NBDServerLimits`.
public final class NBDServer: Sendable {
    /// Why a server could not start listening.
    public struct ListenError: Error, CustomStringConvertible, Sendable {
        public let address: ListenAddress
        public let reason: String
        public var description: String { "cannot listen on \(address): \(reason)" }
    }

    public let registry: NBDExportRegistry
    public let limits: NBDServerLimits
    private let group: any EventLoopGroup
    private let logger: Logger
    private let environment: NBDConnectionEnvironment
    private let acceptBackoff: NBDAcceptBackoff
    private let busyPolling: BusyPolling?
    private let listeners = Mutex<[(address: ListenAddress, channel: any Channel)]>([])

    /// What several servers of one process share of `NBDServerLimits`, so that the limits hold for
    /// the process rather than for each (a plan serves every volume on a server of its own): the
    /// connections (`maximumConnections`) and the payload memory (`maximumPayloadBytes`).
    public final class SharedLimits: Sendable {
        let tracker: NBDConnectionTracker
        let budget: NBDPayloadBudget
        public init(_ limits: NBDServerLimits) {
            tracker = NBDConnectionTracker(limit: limits.maximumConnections)
            budget = NBDPayloadBudget(limit: limits.maximumPayloadBytes)
        }
    }

    /// A server for `registry`'s exports, offering TLS as `tls` says (nil: none); each connection's
    /// socket is given to `busyPolling`, the loops' pollers, if they poll. Its connections and
    /// payload memory count against `shared` (nil: limits of its own). Raises the process's soft
    /// limit on open descriptors to the hard limit: every connection takes one.
    public init(registry: NBDExportRegistry, group: any EventLoopGroup, logger: Logger, limits: NBDServerLimits = NBDServerLimits(),
                tls: NBDServerTLSPolicy? = nil, busyPolling: BusyPolling? = nil, shared: SharedLimits? = nil) {
        self.busyPolling = busyPolling
        self.registry = registry
        self.limits = limits
        self.group = group
        self.logger = logger
        let shared = shared ?? SharedLimits(limits)
        let tracker = shared.tracker
        environment = NBDConnectionEnvironment(registry: registry, limits: limits, tracker: tracker, budget: shared.budget,
                                               logLimiter: NBDLogLimiter(logger: logger), tls: tls)
        acceptBackoff = NBDAcceptBackoff(logger: logger) { tracker.count }
        OpenFileLimit.raiseToHardLimit()
    }

    /// Starts listening; returns the address actually bound (a TCP port 0 becomes the real port).
    /// A leftover unix socket whose server is gone is removed; one with a live server is refused.
    @discardableResult
    public func listen(on address: ListenAddress) async throws -> ListenAddress {
        let environment = self.environment
        let acceptBackoff = self.acceptBackoff
        let busyPolling = self.busyPolling
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 128)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(acceptBackoff.makeHandler())
                }
            }
            .childChannelOption(.autoRead, value: false)
            // At most 4 reads of up to 1 MiB per turn: what a connection reads ahead of the
            // request it waits to admit stays small.
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 << 20, high: 64 << 20))
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: 1 << 20))
            .childChannelInitializer { channel in
                acceptBackoff.accepted()
                var connectionLogger = logger
                connectionLogger[metadataKey: "connection"] = "\(UInt(bitPattern: ObjectIdentifier(channel).hashValue) % 100000)"
                return channel.eventLoop.makeCompletedFuture {
                    try busyPolling?.watch(channel)
                    try NBDConnectionPipeline.configure(channel, environment: environment, logger: connectionLogger)
                }
            }
        let channel: any Channel
        let bound: ListenAddress
        switch address {
        case .unix(let path):
            try Self.removeStaleSocket(at: path, address: address)
            do {
                channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
            } catch {
                throw ListenError(address: address, reason: "\(error)")
            }
            bound = address
        case let .tcp(host, port):
            do {
                channel = try await bootstrap.childChannelOption(.socketOption(.tcp_nodelay), value: 1).bind(host: host, port: port).get()
            } catch {
                throw ListenError(address: address, reason: "\(error)")
            }
            bound = .tcp(host: host, port: channel.localAddress?.port ?? port)
        }
        listeners.withLock { $0.append((bound, channel)) }
        logger.info("listening", metadata: [
            "address": "\(bound)", "max-connections": "\(limits.maximumConnections)",
            "open-file-limit": "\(OpenFileLimit.current.soft)",
        ])
        return bound
    }

    /// Removes a unix socket left by a dead server; refuses if a server still answers on it or the
    /// path is something other than a socket.
    private static func removeStaleSocket(at path: String, address: ListenAddress) throws {
        switch UnixSocket.state(of: path) {
        case .absent: return
        case .stale: unlink(path)
        case .notASocket: throw ListenError(address: address, reason: "\(path) exists and is not a socket")
        case .live: throw ListenError(address: address, reason: "a server is already listening on \(path)")
        case .unreachable(let errno): throw ListenError(address: address, reason: "\(path): \(errno)")
        }
    }

    /// Stops accepting, lets every connection finish the requests it has in flight, closes them,
    /// and removes unix sockets.
    public func shutdown() async {
        let bound = listeners.withLock { listeners in
            defer { listeners = [] }
            return listeners
        }
        for listener in bound {
            try? await listener.channel.close()
            if case .unix(let path) = listener.address { unlink(path) }
        }
        await environment.tracker.closeAll()
    }

    /// Connections open now (served, and refused ones not closed yet).
    public var connectionCount: Int { environment.tracker.count }
    /// Payload bytes the connections hold now (requests in flight and replies not yet written).
    public var payloadBytesHeld: Int { environment.budget.reserved }
}
