import NIOCore

/// When a connection has taken too long, decided from what it is doing (no I/O, no state of its
/// own: the connection handler asks it each time its timer fires, and acts on the verdict).
struct NBDConnectionTimeouts: Sendable {
    /// What a connection is doing, as far as time limits care.
    enum Activity: Sendable, Equatable {
        /// Still negotiating: the handshake timeout runs from the connection's start.
        case negotiating
        /// Waiting for the client: the rest of a request's payload, or for it to read its replies.
        case waitingForClient
        /// The disk, or the server-wide memory budget, has the next move: no limit runs.
        case serverBusy
        /// Nothing in flight, between requests.
        case idle
    }

    enum Verdict: Sendable, Equatable {
        /// Close the connection; the text says why, for the log.
        case close(String)
        /// Nothing to do before this time; ask again then.
        case checkAgain(at: NIODeadline)
        /// No limit applies, now or later.
        case never
    }

    let handshake: TimeAmount?
    let idle: TimeAmount?
    let stall: TimeAmount?

    init(_ limits: NBDServerLimits) {
        handshake = limits.handshakeTimeout
        idle = limits.idleTimeout
        stall = limits.stallTimeout
    }

    /// The verdict for a connection doing `activity`, opened at `connectedAt`, whose client last
    /// made progress (sent bytes, took replies) at `lastProgress`.
    func verdict(_ activity: Activity, connectedAt: NIODeadline, lastProgress: NIODeadline, now: NIODeadline) -> Verdict {
        switch activity {
        case .negotiating:
            return deadline(connectedAt, handshake, now) { "the client did not finish the handshake within \($0)" }
        case .waitingForClient:
            return deadline(lastProgress, stall, now) { "the client stopped sending its request or reading its replies for \($0)" }
        case .idle:
            return deadline(lastProgress, idle, now) { "the connection was idle for \($0)" }
        case .serverBusy:
            return recheck(now)
        }
    }

    /// Close once `limit` has passed since `start` (`why` says so, given the limit as text).
    private func deadline(_ start: NIODeadline, _ limit: TimeAmount?, _ now: NIODeadline, why: (String) -> String) -> Verdict {
        guard let limit else { return recheck(now) }
        let end = start + limit
        guard now >= end else { return .checkAgain(at: end) }
        return .close(why(Self.seconds(limit)))
    }

    /// While no limit runs, look again after the shortest one that applies to transmission, so a
    /// change of activity is noticed.
    private func recheck(_ now: NIODeadline) -> Verdict {
        guard let shortest = [idle, stall].compactMap({ $0 }).min() else { return .never }
        return .checkAgain(at: now + shortest)
    }

    /// "10 s", "1.5 s".
    static func seconds(_ amount: TimeAmount) -> String {
        let milliseconds = amount.nanoseconds / 1_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(Double(milliseconds) / 1000) s"
    }
}
