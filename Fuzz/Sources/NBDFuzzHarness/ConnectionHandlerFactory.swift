import Logging
import NIOCore
@testable import NBD

/// The handler `NBDServer` puts on each accepted connection, made the way `NBDServer.listen` makes
/// it. The only place the fuzz targets use the NBD module's internals (`@testable`): when the
/// handler's initialiser changes, this is the line to follow it.
enum ConnectionHandlerFactory {
    static func makeHandler(registry: NBDExportRegistry, logger: Logger) -> any ChannelHandler {
        NBDConnectionHandler(registry: registry, logger: logger, tracker: NBDConnectionTracker())
    }
}
