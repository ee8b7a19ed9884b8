import BlockIO
import NIOCore

/// The server's open connections, so a shutdown can ask each to finish and wait for it to close,
/// and so no more than `limit` are served at once.
final class NBDConnectionTracker: Sendable {
    private struct Entry {
        let channel: any Channel
        let served: Bool
    }
    private struct State {
        var entries: [ObjectIdentifier: Entry] = [:]
        var served = 0
    }
    private let state = Mutex(State())
    /// Connections served at once; beyond it a connection is only told so.
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Records a new connection; returns whether it is served (false: the limit is reached, and the
    /// connection is to be refused). Either way it is forgotten when it closes.
    func register(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        let served: Bool = state.withLock { state in
            let served = state.served < limit
            state.entries[id] = Entry(channel: channel, served: served)
            if served { state.served += 1 }
            return served
        }
        channel.closeFuture.whenComplete { [self] _ in
            state.withLock { state in
                if state.entries.removeValue(forKey: id)?.served == true { state.served -= 1 }
            }
        }
        return served
    }

    /// Asks every connection to stop reading and close once its requests in flight are answered,
    /// and returns when all have closed.
    func closeAll() async {
        let open = state.withLock { $0.entries.values.map(\.channel) }
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(NBDConnectionEvent.finish)
        }
        for channel in open { try? await channel.closeFuture.get() }
    }

    /// Connections open now (served and refused).
    var count: Int { state.withLock { $0.entries.count } }
    /// Connections served now.
    var served: Int { state.withLock { $0.served } }
}
