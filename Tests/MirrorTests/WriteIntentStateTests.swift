import Testing
@testable import Mirror

/// The write-intent rules (invariant 4) on the state alone: which requests wait for a page write,
/// which bits a save keeps, and what a failed or undurable save leaves in the file.
@Suite struct WriteIntentStateTests {
    private func bitmap(dirty: [Int] = []) -> RegionBitmap {
        var bitmap = RegionBitmap(deviceSize: 16 << 20, regionSize: 1 << 20, allDirty: false)
        for region in dirty { _ = bitmap.setDirty(region) }
        return bitmap
    }

    /// `beginSave`, required to write something.
    private func saving(_ state: inout WriteIntentState, dirty: RegionBitmap, now: UInt64, holdNanos: UInt64, final: Bool,
                        sourceLocation: SourceLocation = #_sourceLocation) throws -> WriteIntentState.Save {
        let save = state.beginSave(dirty: dirty, now: now, holdNanos: holdNanos, final: final)
        return try #require(save, sourceLocation: sourceLocation)
    }

    private func dirty(_ bitmap: RegionBitmap) -> [Int] {
        (0..<bitmap.regionCount).filter { bitmap.isDirty($0) }
    }

    /// The first request into a clean region waits for its page write, and so does every request
    /// into it until that write is on disk; after it, none does.
    @Test func requestsWaitUntilTheirBitsAreOnDisk() {
        var state = WriteIntentState(persisted: bitmap())
        let first = state.begin(2..<4)
        #expect(first)
        let second = state.begin(3..<4)
        #expect(second, "the bit is set but its page write is still queued")
        let owed = state.owed(2..<4)
        #expect(owed.regions == [2, 3] && dirty(owed.bits) == [2, 3])
        state.written(owed.regions)
        #expect(state.owed(2..<4).regions.isEmpty)
        let onDisk = !state.begin(2..<3)
        #expect(onDisk, "its bit is on disk")
        let partly = state.begin(1..<3)
        #expect(partly, "one of its regions is not")
    }

    /// A save keeps the bits of regions with a write in flight and of those written lately, and
    /// clears them once the writes are over and the hold has passed (or at a clean stop at once).
    @Test func aSaveKeepsBitsInUseAndRecent() throws {
        var state = WriteIntentState(persisted: bitmap())
        _ = state.begin(5..<6)
        _ = state.begin(7..<8)
        state.written([5, 7])
        var save = try saving(&state, dirty: bitmap(dirty: [1]), now: 100, holdNanos: 50, final: false)
        #expect(dirty(save.bits) == [1, 5, 7] && !save.clears)
        #expect(save.queued == [1], "the bit the save sets is queued until it is on disk")
        let behindSave = state.begin(1..<2)
        #expect(behindSave, "a request into it waits for the save")
        state.end(1..<2, at: 100)
        state.saved(save)
        #expect(state.queued.isEmpty)

        state.end(5..<6, at: 110)
        let unchanged = state.beginSave(dirty: bitmap(), now: 120, holdNanos: 50, final: false)
        #expect(unchanged == nil,
                "1 and 5 were written 20 and 10 ns ago and keep their bits: nothing new to write")
        save = try saving(&state, dirty: bitmap(), now: 200, holdNanos: 50, final: false)
        #expect(dirty(save.bits) == [7] && save.clears, "7 is still in flight")
        state.end(7..<8, at: 200)
        save = try saving(&state, dirty: bitmap(), now: 201, holdNanos: 50, final: true)
        #expect(dirty(save.bits).isEmpty, "a clean stop does not wait for the hold")
        let finalAgain = state.beginSave(dirty: bitmap(), now: 202, holdNanos: 50, final: true)
        #expect(finalAgain != nil, "a final save writes even when nothing changed")
    }

    /// A save whose legs cannot be made durable clears nothing; a failed save leaves the file's
    /// bits remembered, so the next page write of a request carries them.
    @Test func undurableOrFailedSavesClearNothing() throws {
        var state = WriteIntentState(persisted: bitmap(dirty: [3, 4]))
        var save = try saving(&state, dirty: bitmap(dirty: [4]), now: 0, holdNanos: 0, final: false)
        #expect(save.clears)
        state.clearNothing(&save)
        #expect(dirty(save.bits) == [3, 4] && dirty(state.persisted) == [3, 4])

        save = try saving(&state, dirty: bitmap(), now: 0, holdNanos: 0, final: false)
        state.failed(save)
        #expect(dirty(state.persisted) == [3, 4], "the file may still hold 3 and 4")
        _ = state.begin(9..<10)
        #expect(dirty(state.owed(9..<10).bits) == [3, 4, 9], "the page write of 9 keeps them")
    }

    /// A region a check found differing is queued until its bit is on disk; bits set by `queue`
    /// (an attach) likewise.
    @Test func setAndQueueAreQueuedUntilWritten() {
        var state = WriteIntentState(persisted: bitmap(dirty: [0]))
        let again = state.set(0)
        #expect(again == nil, "already set")
        let differing = state.set(6)
        #expect(differing.map(dirty) == [0, 6])
        let intoIt = state.begin(6..<7)
        #expect(intoIt, "a request into it waits for its page write")
        state.written([6])
        let attached = state.queue(bitmap(dirty: [0, 1, 2]))
        #expect(attached == [1, 2])
        #expect(state.queued == [1, 2])
        state.written([1, 2])
        #expect(state.queued.isEmpty && dirty(state.persisted) == [0, 1, 2, 6])
    }
}
