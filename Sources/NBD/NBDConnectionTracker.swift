import NIOCore
import Synchronization

/// The server's open connections, so a shutdown can ask each to finish and wait for it to close.
final class NBDConnectionTracker: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func register(_ channel: any Channel, handler: NBDConnectionHandler) {
        let id = ObjectIdentifier(channel)
        channels.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { [self] _ in _ = channels.withLock { $0.removeValue(forKey: id) } }
    }

    /// Asks every connection to stop reading and close once its requests in flight are answered,
    /// and returns when all have closed.
    func closeAll() async {
        let open = channels.withLock { Array($0.values) }
        for channel in open {
            channel.eventLoop.execute {
                try? channel.pipeline.syncOperations.handler(type: NBDConnectionHandler.self).beginClose()
            }
        }
        for channel in open { try? await channel.closeFuture.get() }
    }

    var count: Int { channels.withLock { $0.count } }
}
