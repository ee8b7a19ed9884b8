import Testing
@testable import NBD

/// A connection's accounting: requests count until their replies are written, in flush batches.
@Suite struct NBDConnectionLoadTests {
    /// Requests fit under both limits; with nothing held any size fits; a release makes room again.
    @Test func limitsAndRelease() {
        var load = NBDConnectionLoad(maximumRequests: 3, maximumBytes: 100)
        #expect(load.fits(1000))
        load.admit(60)
        #expect(load.fits(40) && !load.fits(41))
        load.admit(40)
        load.admit(0)
        #expect(!load.fits(0))
        load.dispatched()
        load.completed()
        load.replyQueued(cost: 60)
        #expect(load.waitsForClient)
        let batch = load.takeUnflushed()
        #expect(batch == NBDConnectionLoad.Batch(requests: 1, bytes: 60))
        #expect(load.takeUnflushed() == nil)
        load.release(batch!)
        #expect(load.held == NBDConnectionLoad.Batch(requests: 2, bytes: 40))
        #expect(load.fits(60) && !load.fits(61))
    }

    /// A request at the export is the server's business; a queued reply or a payload is the client's.
    @Test func whoWaits() {
        var load = NBDConnectionLoad(maximumRequests: 8, maximumBytes: 1 << 20)
        load.admit(4096)
        #expect(load.waitsForClient)  // its payload is still to come
        load.dispatched()
        #expect(!load.waitsForClient)
        load.completed()
        load.replyQueued(cost: 4096)
        #expect(load.waitsForClient)
    }
}
