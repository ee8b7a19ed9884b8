import Logging
import NIOCore

/// The handlers of one client connection, set up the same way by the server and by the fuzz
/// targets: the `NBDNegotiationHandler`, which frames the byte stream (`NBDConnectionFraming`) and
/// gives its place to an `NBDTransmissionHandler` once an export is selected, handing it the
/// framing and the connection's `NBDConnectionClock`.
enum NBDConnectionPipeline {
    static func configure(_ channel: any Channel, environment: NBDConnectionEnvironment, logger: Logger) throws {
        let clock = NBDConnectionClock(timeouts: environment.timeouts)
        try channel.pipeline.syncOperations.addHandler(
            NBDNegotiationHandler(environment: environment, framing: NBDConnectionFraming(), clock: clock, logger: logger))
    }
}

/// Events the server sends down a connection's pipeline.
enum NBDConnectionEvent: Sendable {
    /// Stop reading; close once the requests in flight are answered (the server shuts down).
    case finish
}
