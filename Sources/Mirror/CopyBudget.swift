import BlockIO

/// A copy rate several mirrors share, like md's system-wide `speed_limit_max`: the copiers of
/// every mirror given the budget (`MirrorExport(budgets:)`) together stay within `maximum` KiB/s.
///
/// A token bucket, as `CopyThrottle`'s own: it starts empty, holds at most `burstSeconds` of the
/// rate, and may go into debt by one request (a copy is admitted whenever the balance is not
/// negative), so the sum of the copies over any window of a few seconds is the rate times the
/// window plus at most one region per copier and the burst. A mirror's copy asks its own
/// throttle first, then each budget it shares (a plan's total, its group's); it is admitted only
/// if all have room, and charged to all. `maximum` changes live (`blockmirror speed PLAN`).
public final class CopyBudget: Sendable {
    private struct State {
        var maximum: UInt64?
        var tokens: Double = 0
        var refilledAt: UInt64?
    }
    /// What the budget is (a plan's total, a group's name), for messages.
    public let name: String
    private let state: Mutex<State>
    /// Seconds of the rate the bucket holds at most.
    static let burstSeconds = 0.2

    /// A budget of `maximum` KiB/s (nil: unlimited).
    public init(name: String, maximum: UInt64?) {
        self.name = name
        state = Mutex(State(maximum: maximum))
    }

    /// KiB/s; nil: unlimited.
    public var maximum: UInt64? {
        get { state.withLock { $0.maximum } }
        set { state.withLock { $0.maximum = newValue } }
    }

    /// Nanoseconds to wait before `bytes` of copying may start at `now` (monotonic nanoseconds),
    /// nil if they may start now. Charges nothing: `charge` does, once every budget agreed.
    func wait(now: UInt64) -> UInt64? {
        state.withLock { state in
            guard let rate = Self.rate(state) else { return nil }
            Self.refill(&state, rate: rate, now: now)
            // Past the debt by up to 2 ms, at random: copiers of several mirrors that wait for the
            // same refill do not all ask at once, and none is always first.
            return state.tokens >= 0 ? nil : UInt64(-state.tokens / rate * 1e9) + UInt64.random(in: 1_000_000...2_000_000)
        }
    }

    /// Takes `bytes` from the bucket (it may go into debt).
    func charge(_ bytes: UInt64) {
        state.withLock { state in
            guard Self.rate(state) != nil else { return }
            state.tokens -= Double(bytes)
        }
    }

    private static func rate(_ state: State) -> Double? {
        state.maximum.map { Double(max($0, 1)) * 1024 }
    }

    /// Adds what the rate earned since the last refill, up to the burst. A `now` older than the
    /// last refill (a caller that read the clock before the lock) adds nothing.
    private static func refill(_ state: inout State, rate: Double, now: UInt64) {
        guard let refilledAt = state.refilledAt else {
            state.refilledAt = now
            return
        }
        guard now > refilledAt else { return }
        state.tokens = min(rate * burstSeconds, state.tokens + rate * Double(now - refilledAt) / 1e9)
        state.refilledAt = now
    }
}
