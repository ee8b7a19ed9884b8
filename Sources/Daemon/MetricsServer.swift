import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus

/// `--metrics HOST:PORT`: serves the process's swift-metrics as Prometheus text on
/// `GET /metrics`, refreshing the sampled values (`refresh`) before each scrape.
public final class MetricsServer: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let refresh: @Sendable () -> Void
    private let channel: any Channel

    /// Makes Prometheus the swift-metrics backend of this process. Call once, before creating any
    /// export (metrics objects bind to the backend when they are created).
    public static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Block I/O latencies: 50 µs to 1 s.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
            .microseconds(2500), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(100),
            .milliseconds(250), .seconds(1),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// Listens on `host:port` (port 0: any free port; `boundPort` says which).
    init(host: String, port: Int, group: any EventLoopGroup, registry: PrometheusCollectorRegistry,
         refresh: @escaping @Sendable () -> Void) async throws {
        self.registry = registry
        self.refresh = refresh
        let serve: @Sendable () -> [UInt8] = {
            refresh()
            return registry.emitToBuffer()
        }
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(serve: serve))
                }
            }
            .bind(host: host, port: port).get()
    }

    var boundPort: Int { channel.localAddress?.port ?? 0 }

    func shutdown() async {
        try? await channel.close()
    }
}

/// Answers `GET /metrics` with the Prometheus text; anything else with 404. One request per connection.
private final class MetricsHTTPHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let serve: @Sendable () -> [UInt8]
    init(serve: @escaping @Sendable () -> [UInt8]) { self.serve = serve }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = unwrapInboundIn(data) else { return }
        let found = request.method == .GET && (request.uri == "/metrics" || request.uri.hasPrefix("/metrics?"))
        let body = found ? serve() : Array("not found: try GET /metrics\n".utf8)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: found ? .ok : .notFound, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
