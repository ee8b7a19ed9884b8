import NBD
import NIOCore
import NIOTLS

/// Stands where the TLS handler goes after STARTTLS, so the fuzz targets reach the negotiation's
/// TLS rules (`--tls on|require`, the barrier against bytes sent in the clear, the state forgotten)
/// without a TLS library: it passes bytes through unchanged and says the handshake completed on the
/// event loop's next turn — as a real handshake does, a round trip later, never within the read
/// that carried STARTTLS. Real TLS is tested with real clients (ServerTLSTests).
public struct TLSStandIn: NBDTLSProvider {
    public init() {}

    public func makeHandler() throws -> any ChannelHandler { Handler() }

    final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer

        func handlerAdded(context: ChannelHandlerContext) {
            context.eventLoop.assumeIsolated().execute {
                context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
            }
        }
    }
}
