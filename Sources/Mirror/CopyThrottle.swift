import BlockIO
import MirrorModel

/// Paces the background copy (and check): a token bucket for `SpeedLimits.maximum`, a moving
/// average of the copy speed, and the yield rule under foreground I/O.
///
/// The bucket may go into debt by one request: a request is admitted whenever the balance is not
/// negative, and the next one waits until the debt is paid back. So a limit below one region per
/// second still makes progress, one region at a time.
public final class CopyThrottle: Sendable {
    private struct State {
        var limits: SpeedLimits
        var tokens: Double = 0
        var refilledAt: UInt64?
        var meter = RateMeter()
    }
    private let state: Mutex<State>
    /// Seconds of `maximum` the bucket holds at most: the largest burst after an idle spell.
    private static let burstSeconds = 0.2

    public init(limits: SpeedLimits) {
        state = Mutex(State(limits: limits))
    }

    public var limits: SpeedLimits {
        get { state.withLock { $0.limits } }
        set { state.withLock { $0.limits = newValue } }
    }

    /// Admits `bytes` of copying at `now` (monotonic nanoseconds), or says how many nanoseconds to
    /// wait before asking again.
    public func admit(_ bytes: UInt64, now: UInt64) -> UInt64? {
        state.withLock { state in
            guard let maximum = state.limits.maximum else { return nil }
            let rate = Double(max(maximum, 1)) * 1024
            let capacity = rate * Self.burstSeconds
            // The bucket starts empty, so the first second copies at the limit, not limit + burst.
            // Callers read the clock before taking the lock: a `now` older than the last refill adds nothing.
            if let refilledAt = state.refilledAt {
                if now > refilledAt {
                    state.tokens = min(capacity, state.tokens + rate * Double(now - refilledAt) / 1e9)
                    state.refilledAt = now
                }
            } else {
                state.refilledAt = now
            }
            guard state.tokens >= 0 else { return UInt64(-state.tokens / rate * 1e9) + 1_000_000 }
            state.tokens -= Double(bytes)
            return nil
        }
    }

    /// Counts bytes the copy completed (for the speed shown and the yield rule).
    public func completed(_ bytes: UInt64, now: UInt64) {
        state.withLock { $0.meter.add(bytes, now: now) }
    }

    /// The copy speed, bytes per second, averaged over the last seconds.
    public func bytesPerSecond(now: UInt64) -> Double {
        state.withLock { $0.meter.bytesPerSecond(now: now) }
    }

    /// How many copies may be in flight: all of `full` when the devices are otherwise idle or the
    /// copy is below its minimum speed; a quarter (at least one) while foreground I/O runs.
    public func depth(full: Int, foregroundBusy: Bool, now: UInt64) -> Int {
        guard foregroundBusy else { return full }
        return state.withLock { state in
            state.meter.bytesPerSecond(now: now) < Double(state.limits.minimum) * 1024 ? full : max(1, full / 4)
        }
    }
}
