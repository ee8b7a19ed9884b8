import NIOCore
import Testing
@testable import NBD

/// The time limits' verdicts, for each thing a connection can be doing.
@Suite struct NBDConnectionTimeoutsTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let timeouts = NBDConnectionTimeouts(NBDServerLimits())  // handshake 10 s, stall 30 s, no idle timeout

    static func limits(handshake: TimeAmount? = nil, idle: TimeAmount? = nil, stall: TimeAmount? = nil) -> NBDServerLimits {
        var limits = NBDServerLimits()
        limits.handshakeTimeout = handshake
        limits.idleTimeout = idle
        limits.stallTimeout = stall
        return limits
    }

    /// Negotiation gets the handshake timeout from the start of the connection, whatever it sent since.
    @Test func handshakeRunsFromTheConnectionsStart() {
        let later = start + .seconds(9)
        #expect(timeouts.verdict(.negotiating, connectedAt: start, lastProgress: later, now: later) == .checkAgain(at: start + .seconds(10)))
        guard case .close(let why) = timeouts.verdict(.negotiating, connectedAt: start, lastProgress: later, now: start + .seconds(10)) else {
            Issue.record("a negotiation 10 s old is not closed")
            return
        }
        #expect(why.contains("handshake") && why.contains("10 s"))
    }

    /// A client that stopped mid-request or stopped reading is closed a stall timeout after its last progress.
    @Test func stallRunsFromTheLastProgress() {
        let progress = start + .seconds(100)
        #expect(timeouts.verdict(.waitingForClient, connectedAt: start, lastProgress: progress, now: progress + .seconds(29))
                == .checkAgain(at: progress + .seconds(30)))
        guard case .close(let why) = timeouts.verdict(.waitingForClient, connectedAt: start, lastProgress: progress,
                                                      now: progress + .seconds(30)) else {
            Issue.record("a client stalled for 30 s is not closed")
            return
        }
        #expect(why.contains("30 s"))
    }

    /// Idle connections stay (no idle timeout by default) and busy ones are never blamed; both are
    /// looked at again after the shortest transmission limit, so a change of activity is noticed.
    @Test func idleAndBusyConnectionsStay() {
        let now = start + .seconds(3600)
        #expect(timeouts.verdict(.idle, connectedAt: start, lastProgress: start, now: now) == .checkAgain(at: now + .seconds(30)))
        #expect(timeouts.verdict(.serverBusy, connectedAt: start, lastProgress: start, now: now) == .checkAgain(at: now + .seconds(30)))
        let idle = NBDConnectionTimeouts(Self.limits(handshake: .seconds(10), idle: .seconds(60), stall: .seconds(30)))
        #expect(idle.verdict(.idle, connectedAt: start, lastProgress: start, now: start + .seconds(59)) == .checkAgain(at: start + .seconds(60)))
        #expect(idle.verdict(.idle, connectedAt: start, lastProgress: start, now: start + .seconds(60))
                == .close("the connection was idle for 60 s"))
    }

    /// With every limit off nothing is ever scheduled.
    @Test func noLimitsNoTimer() {
        let none = NBDConnectionTimeouts(Self.limits())
        for activity in [NBDConnectionTimeouts.Activity.negotiating, .waitingForClient, .serverBusy, .idle] {
            #expect(none.verdict(activity, connectedAt: start, lastProgress: start, now: start + .hours(24)) == .never)
        }
    }
}
