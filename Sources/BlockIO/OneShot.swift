/// A value set once and awaited by any number of tasks: the first `fulfil` wins, every `wait`
/// returns that value (at once when it is already set). The one place where continuations are
/// kept and resumed, so that each is resumed exactly once, outside the lock, whatever the order of
/// `wait` and `fulfil`.
///
/// For an event that can happen again (a mirror settling, recovering, settling again), keep a new
/// `OneShot` per occurrence: whoever fulfils one replaces it.
public final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiters: [CheckedContinuation<Value, Never>] = []
    }
    private let state = Mutex(State())

    /// An unfulfilled one-shot.
    public init() {}

    /// Sets the value and resumes every waiter. Returns false (and changes nothing) when the
    /// value was set before.
    @discardableResult
    public func fulfil(_ value: Value) -> Bool {
        let waiters: [CheckedContinuation<Value, Never>]? = state.withLock { state in
            guard state.value == nil else { return nil }
            state.value = value
            defer { state.waiters = [] }
            return state.waiters
        }
        guard let waiters else { return false }
        for waiter in waiters { waiter.resume(returning: value) }
        return true
    }

    /// The value, if it was set.
    public var value: Value? { state.withLock { $0.value } }

    /// Returns the value once it is set.
    public func wait() async -> Value {
        await withCheckedContinuation { continuation in
            let value: Value? = state.withLock { state in
                if let value = state.value { return value }
                state.waiters.append(continuation)
                return nil
            }
            if let value { continuation.resume(returning: value) }
        }
    }
}

extension OneShot where Value == Void {
    /// Sets the (empty) value: see `fulfil(_:)`.
    @discardableResult
    public func fulfil() -> Bool { fulfil(()) }
}
