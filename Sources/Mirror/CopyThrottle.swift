import BlockIO
import MirrorModel

/// Paces the background copy (and check): the mirror's own `SpeedLimits.maximum` and the budgets
/// it shares with other mirrors (`CopyBudget`: a plan's total, a group's), a moving average of the
/// copy speed, and the yield rule under foreground I/O.
///
/// Each limit is a token bucket that may go into debt by one request: a request is admitted
/// whenever no bucket is negative, and the next one waits until the debt is paid back. So a limit
/// below one region per second still makes progress, one region at a time.
public final class CopyThrottle: Sendable {
    private struct State {
        var minimum: UInt64
        var meter = RateMeter()
    }
    private let state: Mutex<State>
    /// The mirror's own maximum.
    private let own: CopyBudget
    /// The mirror's own bucket first, then the shared ones.
    private let budgets: [CopyBudget]

    /// A throttle for `limits`, within the shared `budgets` too.
    public init(limits: SpeedLimits, budgets: [CopyBudget] = []) {
        state = Mutex(State(minimum: limits.minimum))
        own = CopyBudget(name: "speed-max", maximum: limits.maximum)
        self.budgets = [own] + budgets
    }

    public var limits: SpeedLimits {
        get { SpeedLimits(minimum: state.withLock { $0.minimum }, maximum: own.maximum) }
        set {
            state.withLock { $0.minimum = newValue.minimum }
            own.maximum = newValue.maximum
        }
    }

    /// Admits `bytes` of copying at `now` (monotonic nanoseconds), charging every bucket, or says
    /// how many nanoseconds to wait before asking again (the longest any bucket asks).
    public func admit(_ bytes: UInt64, now: UInt64) -> UInt64? {
        var longest: UInt64?
        for budget in budgets {
            if let wait = budget.wait(now: now) { longest = max(longest ?? 0, wait) }
        }
        if let longest { return longest }
        for budget in budgets { budget.charge(bytes) }
        return nil
    }

    /// Charges `bytes` a copy moved beyond what it was admitted for (a hole's run zeroed on a
    /// target that holds data there) to every bucket, in debt if need be: the copies after it wait.
    public func charge(_ bytes: UInt64) {
        for budget in budgets { budget.charge(bytes) }
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
            state.meter.bytesPerSecond(now: now) < Double(state.minimum) * 1024 ? full : max(1, full / 4)
        }
    }
}
