import BlockIO
import Testing
@testable import NBD

/// The server-wide payload budget: reservations that fit, the two exceptions, and wake-ups.
@Suite struct NBDPayloadBudgetTests {
    /// Beyond the limit a reservation waits and is woken by the next release; one always fits when
    /// nothing is reserved, and a connection holding nothing always gets a small one.
    @Test func reserveWaitAndWake() {
        let budget = NBDPayloadBudget(limit: 64 << 20)
        #expect(budget.reserve(100 << 20, held: 0))  // nothing reserved: any size
        let woken = Mutex(0)
        #expect(!budget.reserve(8 << 20, held: 0) { woken.withLock { $0 += 1 } })
        #expect(budget.reserve(NBDPayloadBudget.guaranteedBytes, held: 0))  // small, holding nothing
        #expect(!budget.reserve(4096, held: 4096))  // small, but already holding some
        budget.release(100 << 20)
        #expect(woken.withLock { $0 } == 1)
        #expect(budget.reserved == NBDPayloadBudget.guaranteedBytes)
        #expect(budget.reserve(32 << 20, held: 0))
        budget.release(32 << 20)
        budget.release(NBDPayloadBudget.guaranteedBytes)
        #expect(budget.reserved == 0)
        #expect(woken.withLock { $0 } == 1)  // waiters are woken once
    }
}
