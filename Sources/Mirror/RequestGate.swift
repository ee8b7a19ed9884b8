import BlockIO

/// Holds a mirror's new requests while its legs switch roles (`complete`, `reverse`): closing it
/// waits for the requests let through to finish; requests that arrive meanwhile wait and start
/// when it opens again (in the order they came; one arriving just then may go first, which NBD
/// allows), so clients see a pause, never an error or a reconnect.
///
/// Counts requests from the moment they are let through to their `leave()`; a pure lock and a
/// list, no I/O.
final class RequestGate: Sendable {
    private struct State {
        var closed = false
        /// Requests let through and not finished.
        var inside = 0
        /// Requests that arrived while closed, in order of arrival.
        var waiting: [@Sendable () -> Void] = []
        /// Fulfilled when the gate is closed and the last request inside has left.
        var emptied: OneShot<Void>?
    }

    private let state = Mutex(State())

    /// Lets a request through (the caller runs it at once), or, while closed, keeps the start
    /// `waiting()` makes for when the gate opens (the request then counts as inside from there).
    /// Either way the request calls `leave()` once it has finished. `waiting` runs under the
    /// gate's lock: it must only make the start, not run anything.
    func enter(otherwise waiting: () -> @Sendable () -> Void) {
        state.withLock { state in
            if state.closed {
                state.waiting.append(waiting())
            } else {
                state.inside += 1
            }
        }
    }

    /// A request let through has finished.
    func leave() {
        let emptied: OneShot<Void>? = state.withLock { state in
            state.inside -= 1
            guard state.inside == 0, let emptied = state.emptied else { return nil }
            state.emptied = nil
            return emptied
        }
        emptied?.fulfil()
    }

    /// Stops letting requests through and returns once none is inside; false (at once) if the
    /// gate is already closed: one switch at a time.
    func close() async -> Bool {
        let emptied: OneShot<Void>?? = state.withLock { state in
            guard !state.closed else { return .none }
            state.closed = true
            guard state.inside > 0 else { return .some(nil) }
            let emptied = OneShot<Void>()
            state.emptied = emptied
            return .some(emptied)
        }
        guard let emptied else { return false }
        await emptied?.wait()
        return true
    }

    /// Lets requests through again, starting those that waited, in order.
    func open() {
        let waiting: [@Sendable () -> Void] = state.withLock { state in
            state.closed = false
            defer { state.waiting = [] }
            state.inside += state.waiting.count
            return state.waiting
        }
        for start in waiting { start() }
    }
}
