import BlockIO
import Logging
import NIOCore

/// A server-wide rate limit on the log lines clients can cause, one token bucket per kind of
/// message: a burst of `burst` lines, then `perSecond` a second. What the bucket drops is counted
/// and reported in one line ("suppressed N similar messages") once the flood has lasted
/// `summaryDelay`, so a thousand bad clients cost a dozen lines, not a thousand.
final class NBDLogLimiter: Sendable {
    /// What a line is about; each kind has its own bucket.
    enum Kind: String, Sendable {
        case protocolError = "protocol errors"
        case refused = "refused connections"
        case timeout = "timed-out connections"
        case disconnect = "mid-request disconnects"
        case requestError = "request errors"
    }

    private struct Bucket {
        var tokens: Double
        var updated: NIODeadline
        var suppressed = 0
        var summaryScheduled = false
    }

    private let buckets: Mutex<[Kind: Bucket]>
    private let logger: Logger
    let burst: Double
    let perSecond: Double
    let summaryDelay: TimeAmount

    /// `logger` writes the summary lines (the server's, without a connection's metadata).
    init(logger: Logger, burst: Int = 10, perSecond: Double = 1, summaryDelay: TimeAmount = .seconds(5)) {
        self.logger = logger
        self.burst = Double(burst)
        self.perSecond = perSecond
        self.summaryDelay = summaryDelay
        buckets = Mutex([:])
    }

    /// Logs `message` through `logger` at `level` unless `kind`'s bucket is empty; a dropped line
    /// is counted, and the count reported after `summaryDelay` through a task on `eventLoop`.
    func log(_ kind: Kind, _ level: Logger.Level, _ message: @autoclosure () -> Logger.Message,
             metadata: Logger.Metadata? = nil, to logger: Logger, scheduleOn eventLoop: any EventLoop) {
        guard logger.logLevel <= level else { return }
        let (allowed, scheduleSummary) = take(kind)
        if allowed {
            logger.log(level: level, message(), metadata: metadata)
        } else if scheduleSummary {
            eventLoop.scheduleTask(in: summaryDelay) { self.reportSuppressed(kind, level) }
        }
    }

    /// Whether a line of `kind` may be written now, and whether a summary must be scheduled.
    private func take(_ kind: Kind) -> (allowed: Bool, scheduleSummary: Bool) {
        let now = NIODeadline.now()
        return buckets.withLock { buckets in
            var bucket = buckets[kind] ?? Bucket(tokens: burst, updated: now)
            defer { buckets[kind] = bucket }
            let elapsed = Double((now - bucket.updated).nanoseconds) / 1e9
            bucket.tokens = min(burst, bucket.tokens + elapsed * perSecond)
            bucket.updated = now
            if bucket.tokens >= 1 {
                bucket.tokens -= 1
                return (true, false)
            }
            bucket.suppressed += 1
            guard !bucket.summaryScheduled else { return (false, false) }
            bucket.summaryScheduled = true
            return (false, true)
        }
    }

    private func reportSuppressed(_ kind: Kind, _ level: Logger.Level) {
        let count: Int = buckets.withLock { buckets in
            defer { buckets[kind]?.suppressed = 0; buckets[kind]?.summaryScheduled = false }
            return buckets[kind]?.suppressed ?? 0
        }
        guard count > 0 else { return }
        logger.log(level: level, "suppressed \(count) similar messages (\(kind.rawValue)) in the last \(summaryDelay.nanoseconds / 1_000_000_000) s")
    }
}
