import NIOCore

/// The time limits of one connection as its handlers apply them: when it opened, when its client
/// last made progress, and the timer that asks `NBDConnectionTimeouts` again. Handed from the
/// negotiation handler to the transmission handler, so the connection keeps one clock.
///
/// Used on the connection's event loop only.
final class NBDConnectionClock {
    private let timeouts: NBDConnectionTimeouts
    let connectedAt: NIODeadline
    /// When the client last sent bytes or took replies (or the disk last answered for it).
    private(set) var lastProgress: NIODeadline
    /// Outbound bytes waiting at the previous check: fewer now means the client reads.
    private var outboundSample: Int?
    private var timer: Scheduled<Void>?

    init(timeouts: NBDConnectionTimeouts) {
        self.timeouts = timeouts
        connectedAt = .now()
        lastProgress = connectedAt
    }

    /// The client (or the disk, for it) made progress now.
    func progressed() {
        lastProgress = .now()
    }

    /// Applies the limits to a connection doing what `activity` says, now and at every check that
    /// follows: when one has run out, `expired` is called with the reason (for the log) and the
    /// checks stop; the handler then closes the connection. Replaces the checks of an earlier call.
    func watch(context: ChannelHandlerContext, activity: @escaping () -> NBDConnectionTimeouts.Activity,
               expired: @escaping (String) -> Void) {
        timer?.cancel()
        timer = nil
        switch timeouts.verdict(activity(), connectedAt: connectedAt, lastProgress: lastProgress, now: .now()) {
        case .never:
            return
        case .checkAgain(let deadline):
            timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
                guard context.channel.isActive else { return }
                // Replies draining from the outbound buffer, even slowly, are progress.
                let outbound = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
                if let previous = outboundSample, outbound < previous { progressed() }
                outboundSample = outbound
                watch(context: context, activity: activity, expired: expired)
            }
        case .close(let why):
            expired(why)
        }
    }

    /// Stops the checks (the handler leaves the pipeline, or the connection closed).
    func stop() {
        timer?.cancel()
        timer = nil
    }
}
