import Testing
@testable import Mirror

/// The copier's bookkeeping alone: the order regions are copied in, the depth, the waits the speed
/// limit and a failed read impose, and when a lazy save of the bitmap is due.
@Suite struct CopierStateTests {
    private func bitmap(dirty: [Int], regions: Int = 8) -> RegionBitmap {
        var bitmap = RegionBitmap(deviceSize: UInt64(regions) << 20, regionSize: 1 << 20, allDirty: false)
        for region in dirty { _ = bitmap.setDirty(region) }
        return bitmap
    }

    /// Dirty regions are taken in order from the cursor, wrapping round, never more at once than
    /// the depth allows nor more than there are dirty regions.
    @Test func regionsInOrderUpToTheDepth() {
        var state = CopierState()
        var map = bitmap(dirty: [1, 4, 6])
        var steps: [CopierState.Step] = []
        for _ in 0..<3 { steps.append(state.next(in: map, depth: 2) { nil }) }
        #expect(steps == [.copy(1), .copy(4), .idle], "two at most")
        _ = map.setClean(1)
        _ = state.finished(bytes: 1 << 20, cleaned: 1, dirtyLeft: map.dirtyCount)
        let third = state.next(in: map, depth: 2) { nil }
        #expect(third == .copy(6))
        _ = state.finished(bytes: 1 << 20, cleaned: 0, dirtyLeft: map.dirtyCount)
        let wrapped = state.next(in: map, depth: 8) { nil }
        #expect(wrapped == .copy(4), "from the cursor round to the start (4 is dirty still)")
        let none = state.next(in: map, depth: 8) { nil }
        #expect(none == .idle, "4 and 6 are dirty and both are being copied")
        #expect(state.copying == 2 && state.bytesCopied == 2 << 20)
        state.restart()
        #expect(state.cursor == 0)
    }

    /// A delay from the speed limit makes the step a wait, and nothing starts until the delayed
    /// pump resumes; a failed read delays the same way, once.
    @Test func waitsHoldTheCopyUntilResumed() {
        var state = CopierState()
        let map = bitmap(dirty: [0, 1])
        var asked = 0
        let held = state.next(in: map, depth: 8) { asked += 1; return 5_000 }
        #expect(held == .wait(5_000) && state.delayed)
        let stillHeld = state.next(in: map, depth: 8) { asked += 1; return nil }
        #expect(stillHeld == .idle && asked == 1, "the limit is not asked again while delayed")
        let second = state.delay()
        #expect(!second, "a delayed pump is scheduled already")
        state.resume()
        let started = state.next(in: map, depth: 8) { nil }
        #expect(started == .copy(0))
        let first = state.delay()
        #expect(first && state.delayed)
    }

    /// A save is due every 256 cleaned regions and when the last dirty region is cleaned; the
    /// copier is idle when its last copy ends.
    @Test func lazySavesAreDueByCountAndAtTheEnd() {
        var state = CopierState()
        let map = bitmap(dirty: Array(0..<8))
        for _ in 0..<3 { _ = state.next(in: map, depth: 8) { nil } }
        var ended = state.finished(bytes: 0, cleaned: 0, dirtyLeft: 0)
        #expect(!ended.saveDue && !ended.idle, "an uncleaned copy is no reason to save")
        ended = state.finished(bytes: 0, cleaned: 1, dirtyLeft: 3)
        #expect(!ended.saveDue)
        ended = state.finished(bytes: 0, cleaned: 1, dirtyLeft: 0)
        #expect(ended.saveDue && ended.idle, "the last dirty region is clean")
        for index in 1...CopierState.regionsPerSave {
            _ = state.next(in: map, depth: 8) { nil }
            ended = state.finished(bytes: 0, cleaned: 1, dirtyLeft: 100)
            #expect(ended.saveDue == (index == CopierState.regionsPerSave), "after \(index) cleaned regions")
        }
    }

    /// A copy of a source hole's run cleans many regions at once: they count toward the next save.
    @Test func aHoleRunCountsEveryRegionItCleaned() {
        var state = CopierState()
        let map = bitmap(dirty: Array(0..<8))
        _ = state.next(in: map, depth: 8) { nil }
        _ = state.next(in: map, depth: 8) { nil }
        var ended = state.finished(bytes: 0, cleaned: CopierState.regionsPerSave - 1, dirtyLeft: 500)
        #expect(!ended.saveDue && !ended.idle)
        ended = state.finished(bytes: 0, cleaned: 1, dirtyLeft: 499)
        #expect(ended.saveDue && ended.idle)
    }
}
