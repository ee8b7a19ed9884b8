import Logging
import NIOCore

/// The handlers of one client connection, set up the same way by the server and by the fuzz
/// targets: an `NBDFrameDecoder` framing the byte stream, then the `NBDNegotiationHandler`, which
/// gives its place to an `NBDTransmissionHandler` once an export is selected, handing it the
/// connection's `NBDConnectionClock`.
enum NBDConnectionPipeline {
    static func configure(_ channel: any Channel, environment: NBDConnectionEnvironment, logger: Logger) throws {
        let clock = NBDConnectionClock(timeouts: environment.timeouts)
        let decoder = NBDFrameDecoder()
        let operations = channel.pipeline.syncOperations
        try operations.addHandler(ByteToMessageHandler(decoder))
        try operations.addHandler(NBDNegotiationHandler(environment: environment, decoder: decoder, clock: clock, logger: logger))
    }
}

/// Events the server sends down a connection's pipeline.
enum NBDConnectionEvent: Sendable {
    /// Stop reading; close once the requests in flight are answered (the server shuts down).
    case finish
}
