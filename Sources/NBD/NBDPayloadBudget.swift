import BlockIO
import NIOCore

/// The payload bytes all connections of a server may hold at once (`NBDServerLimits.maximumPayloadBytes`).
///
/// A connection reserves a request's payload before it reads it (WRITE) or asks the disk for it
/// (READ), and releases it once the reply has been written to its socket. A reservation that does
/// not fit waits: the connection stops reading, and is woken when memory frees. Two exceptions
/// keep everyone moving: when nothing is reserved any request fits, so some request always
/// proceeds; and a connection that holds nothing may always start one request of up to
/// `guaranteedBytes`, so a few clients holding the budget with large requests cannot stall the
/// small I/O of the others (the budget is then exceeded by at most that much per connection).
final class NBDPayloadBudget: Sendable {
    /// What a connection holding nothing may always reserve.
    static let guaranteedBytes = 1 << 20

    private struct State {
        var reserved = 0
        var waiters: [@Sendable () -> Void] = []
    }
    private let state = Mutex(State())
    let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Reserves `bytes` for a connection that already holds `held` bytes, if they fit now.
    func reserve(_ bytes: Int, held: Int) -> Bool {
        reserve(bytes, held: held, orWait: nil)
    }

    /// Reserves `bytes` for a connection holding `held` and returns true, or returns false and
    /// calls `wake` (on any thread) the next time memory is released. Checking and waiting are one
    /// step, so no release is missed.
    func reserve(_ bytes: Int, held: Int, orWait wake: (@Sendable () -> Void)?) -> Bool {
        guard bytes > 0 else { return true }
        let guaranteed = held == 0 && bytes <= Self.guaranteedBytes
        return state.withLock { state in
            if state.reserved == 0 || state.reserved + bytes <= limit || guaranteed {
                state.reserved += bytes
                return true
            }
            if let wake { state.waiters.append(wake) }
            return false
        }
    }

    /// Returns `bytes` and wakes every connection that was waiting (each tries again).
    func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        let waiters: [@Sendable () -> Void] = state.withLock { state in
            state.reserved -= bytes
            defer { state.waiters = [] }
            return state.waiters
        }
        for wake in waiters { wake() }
    }

    /// Bytes reserved now.
    var reserved: Int { state.withLock { $0.reserved } }
}
