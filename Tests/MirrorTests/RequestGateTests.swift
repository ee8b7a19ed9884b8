import BlockIO
import Testing
@testable import Mirror

/// The gate that holds requests while the legs switch roles: closing waits for the requests inside,
/// those that arrive meanwhile start in order when it opens, one switch at a time.
@Suite struct RequestGateTests {
    /// Records what ran, in order.
    final class Log: Sendable {
        private let entries = Mutex<[Int]>([])
        func append(_ entry: Int) { entries.withLock { $0.append(entry) } }
        var all: [Int] { entries.withLock { $0 } }
    }

    @Test func openGateLetsRequestsThroughAtOnce() {
        let gate = RequestGate()
        var kept = false
        gate.enter(otherwise: { kept = true; return {} })
        #expect(!kept)
        gate.leave()
    }

    @Test func closeWaitsForTheRequestsInsideAndHoldsNewOnesInOrder() async {
        let gate = RequestGate(), log = Log()
        gate.enter(otherwise: { Issue.record("the open gate kept a request"); return {} })
        let closed = OneShot<Bool>()
        Task { closed.fulfil(await gate.close()) }
        // Closed (or closing) while one request is inside: new ones are kept, in order.
        var kept = 0
        while kept == 0 {
            gate.enter(otherwise: { kept += 1; return { log.append(1) } })
            if kept == 0 { gate.leave(); await Task.yield() }
        }
        gate.enter(otherwise: { kept += 1; return { log.append(2) } })
        #expect(kept == 2)
        #expect(log.all.isEmpty)
        gate.leave()  // the request that was inside when the close began
        #expect(await closed.wait())
        #expect(await gate.close() == false, "a second switch while the first runs is refused")
        gate.open()
        #expect(log.all == [1, 2])
        // The two that waited count as inside: a close now waits for them.
        let second = OneShot<Bool>()
        Task { second.fulfil(await gate.close()) }
        gate.leave()
        gate.leave()
        #expect(await second.wait())
        gate.open()
    }
}
