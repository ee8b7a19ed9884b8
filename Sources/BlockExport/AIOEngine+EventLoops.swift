import BlockIO
import NIOCore
import NIOPosix

extension AIOEngine {
    /// Gives every event loop of `group` its own libaio context, reaped on that loop.
    ///
    /// Each context's eventfd is watched by the loop as a pipe channel, so a request submitted from
    /// the loop completes on the loop: the promise is fulfilled without a thread hop, and the
    /// completions of a burst are processed together. Measured against the reaper thread alone
    /// (fio's nbd engine, 4k QD32, same run): random writes 63k -> 73k IOPS; random reads unchanged,
    /// being bound by the client-server round trip rather than by the server.
    public func bind(to group: any EventLoopGroup, depth: Int = 256) async throws {
        for loop in group.makeIterator() {
            let context = try AIOContext(depth: depth, delivery: .eventFD)
            let watched = dup(context.eventFD)
            guard watched >= 0 else { throw Errno.current }
            _ = try await NIOPipeBootstrap(group: loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(AIOCompletionHandler(context: context))
                    }
                }
                .takingOwnershipOfDescriptor(input: watched).get()
            try await loop.submit { self.registerForCurrentThread(context) }.get()
        }
    }
}

/// Reaps a context's completions whenever its eventfd turns readable (NIO has read the counter).
private final class AIOCompletionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let context: AIOContext

    init(context: AIOContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.context.reapCompleted()
    }
}
