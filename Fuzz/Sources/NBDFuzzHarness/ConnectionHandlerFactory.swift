import Logging
import NIOCore
@testable import NBD

/// The handlers `NBDServer` puts on each accepted connection (`NBDConnectionPipeline`), with the
/// environment `NBDServer.init` makes (default limits). The only place the fuzz targets use the NBD
/// module's internals (`@testable`): when the pipeline's set-up changes, this is the code to
/// follow it.
enum ConnectionHandlerFactory {
    static func configure(_ channel: any Channel, registry: NBDExportRegistry, tls: NBDServerTLSPolicy?, logger: Logger) throws {
        let limits = NBDServerLimits()
        let environment = NBDConnectionEnvironment(
            registry: registry, limits: limits, tracker: NBDConnectionTracker(limit: limits.maximumConnections),
            budget: NBDPayloadBudget(limit: limits.maximumPayloadBytes), logLimiter: NBDLogLimiter(logger: logger), tls: tls)
        try NBDConnectionPipeline.configure(channel, environment: environment, logger: logger)
    }
}
