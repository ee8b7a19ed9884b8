import Logging
import NIOCore
@testable import NBD

/// The handler `NBDServer` puts on each accepted connection, made the way `NBDServer.init` and
/// `NBDServer.listen` make it (default limits). The only place the fuzz targets use the NBD
/// module's internals (`@testable`): when the handler's initialiser changes, this is the code to
/// follow it.
enum ConnectionHandlerFactory {
    static func makeHandler(registry: NBDExportRegistry, logger: Logger) -> any ChannelHandler {
        let limits = NBDServerLimits()
        let environment = NBDConnectionEnvironment(
            registry: registry, limits: limits, tracker: NBDConnectionTracker(limit: limits.maximumConnections),
            budget: NBDPayloadBudget(limit: limits.maximumPayloadBytes), logLimiter: NBDLogLimiter(logger: logger))
        return NBDConnectionHandler(environment: environment, logger: logger)
    }
}
