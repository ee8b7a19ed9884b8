import BlockIO
import NIOCore
import NIOPosix

extension AIOEngine {
    /// Gives every event loop of `group` its own libaio context, reaped on that loop, and with a
    /// `busyPoll` above zero a `LoopPoller` that spins up to that long after the loop's I/O.
    ///
    /// Each context's eventfd is watched by the loop as a pipe channel, so a request submitted from
    /// the loop completes on the loop: the promise is fulfilled without a thread hop, and the
    /// completions of a burst are processed together. The requests a loop submits while it handles
    /// its events are handed to the kernel together once it is done (`gathersSubmissions`): one
    /// `io_submit` per turn, not one per request. Measured against the reaper thread alone
    /// (fio's nbd engine, 4k QD32, same run): random writes 63k -> 73k IOPS; random reads unchanged,
    /// being bound by the client-server round trip rather than by the server. Returns the loops'
    /// pollers, which the NBD server tells about its connections.
    @discardableResult
    public func bind(to group: any EventLoopGroup, depth: Int = 256, busyPoll: TimeAmount = .zero) async throws -> BusyPolling {
        var pollers: [ObjectIdentifier: LoopPoller] = [:]
        for loop in group.makeIterator() {
            let context = try AIOContext(depth: depth, delivery: .eventFD)
            let poller = busyPoll.nanoseconds > 0
                ? try LoopPoller(loop: loop, context: context, maximum: UInt64(busyPoll.nanoseconds)) : nil
            pollers[ObjectIdentifier(loop)] = poller
            let watched = dup(context.eventFD)
            guard watched >= 0 else { throw Errno.current }
            _ = try await NIOPipeBootstrap(group: loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(AIOCompletionHandler(context: context, poller: poller))
                    }
                }
                .takingOwnershipOfDescriptor(input: watched).get()
            try await loop.submit {
                let submitter = GatheredSubmitter(loop: loop, context: context)
                context.gathersSubmissions = true
                context.onSubmit = {
                    submitter.schedule()
                    poller?.activity()
                }
                self.registerForCurrentThread(context)
            }.get()
        }
        return BusyPolling(pollers: pollers)
    }
}

/// The busy-polling event loops of a group (`AIOEngine.bind(to:busyPoll:)`): what a server tells
/// them of the connections it accepts, so that a spinning loop stops as soon as a client sends.
public final class BusyPolling: Sendable {
    private let pollers: [ObjectIdentifier: LoopPoller]

    fileprivate init(pollers: [ObjectIdentifier: LoopPoller]) { self.pollers = pollers }

    /// The poller of `loop`, nil if it does not poll.
    func poller(of loop: any EventLoop) -> LoopPoller? { pollers[ObjectIdentifier(loop)] }

    /// Adds a connection's socket to its loop's poller, if that loop polls. Call it on the
    /// channel's event loop (a channel initializer runs there).
    public func watch(_ channel: any Channel) throws {
        guard let poller = poller(of: channel.eventLoop) else { return }
        _ = try channel.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) {
            poller.watch(socket: $0)
        }
    }
}

/// Hands a loop's gathered submissions to the kernel once per turn: scheduled by the first
/// submission of a turn, it runs after the events and tasks that made them (and before a spin
/// `LoopPoller` started after it). Confined to the loop's thread.
private final class GatheredSubmitter: @unchecked Sendable {
    private let loop: any EventLoop
    private let context: AIOContext
    private var scheduled = false

    init(loop: any EventLoop, context: AIOContext) {
        self.loop = loop
        self.context = context
    }

    func schedule() {
        guard !scheduled else { return }
        scheduled = true
        loop.execute { [self] in
            scheduled = false
            context.submitGathered()
        }
    }
}

/// Reaps a context's completions whenever its eventfd turns readable (NIO has read the counter),
/// and tells the loop's poller, if any, that the loop is busy.
private final class AIOCompletionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let context: AIOContext
    let poller: LoopPoller?

    init(context: AIOContext, poller: LoopPoller?) {
        self.context = context
        self.poller = poller
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if self.context.reapCompleted() > 0 { poller?.activity() }
    }
}
