import BlockExport
import BlockIO
import NIOCore
import NIOPosix

/// What a daemon process shares between the exports it serves: the event loops, libaio on them
/// (one context per loop, `AIOEngine.bind`) and their busy polling. One per process, however many
/// exports: a plan's volumes share it.
public final class DaemonRuntime: Sendable {
    public let aio: AIOEngine
    public let group: MultiThreadedEventLoopGroup
    /// The loops' pollers, which every NBD server tells about its connections.
    public let busyPolling: BusyPolling

    private init(aio: AIOEngine, group: MultiThreadedEventLoopGroup, busyPolling: BusyPolling) {
        self.aio = aio
        self.group = group
        self.busyPolling = busyPolling
    }

    /// One event loop per core, each with its libaio context; `busyPoll` is how long at most a
    /// loop spins after its I/O before it sleeps (`LoopPoller`; zero: never).
    public static func start(busyPoll: TimeAmount) async throws -> DaemonRuntime {
        let aio: AIOEngine
        do { aio = try AIOEngine(depth: 512) } catch {
            throw DaemonError("cannot set up libaio: \(error) (see /proc/sys/fs/aio-max-nr)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        do {
            let polling = try await aio.bind(to: group, busyPoll: busyPoll)
            return DaemonRuntime(aio: aio, group: group, busyPolling: polling)
        } catch {
            aio.shutdown()
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// Waits for the disk I/O in flight, then stops the loops. Every export must be closed.
    public func shutdown() async {
        aio.shutdown()
        try? await group.shutdownGracefully()
    }
}
