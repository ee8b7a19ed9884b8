import BlockIO
import MirrorModel
import Testing
@testable import Mirror

/// The check's bookkeeping alone: one check at a time, regions handed out once, what each
/// comparison adds to the report, and when a check counts as interrupted.
@Suite struct CheckStateTests {
    @Test func regionsAreHandedOutOnceAndCounted() throws {
        var state = CheckState()
        try state.start(repair: false, regionsTotal: 4, workers: 2)
        var again = state
        #expect(throws: MirrorExport.CheckError.self) { try again.start(repair: true, regionsTotal: 4, workers: 2) }
        var taken: [Int] = []
        while let region = state.next() { taken.append(region) }
        #expect(taken == [0, 1, 2, 3])

        state.record(.compared([], repaired: false))
        state.record(.compared([CheckReport.Mismatch(offset: 0, length: 1024)], repaired: false))
        state.record(.compared([CheckReport.Mismatch(offset: 4096, length: 513)], repaired: true))
        state.record(.skipped)
        state.workerEnded()
        state.workerEnded()
        #expect(state.workers == 0)
        let finished = state.finish(interruptedBecause: "never asked")
        let report = try #require(finished)
        #expect(report.regionsChecked == 3 && report.regionsSkipped == 1 && report.interrupted == nil)
        #expect(report.mismatchedSectors == 4 && report.repairedSectors == 2 && report.regionsMarkedDirty == 1,
                "2 sectors found and left (marked dirty), 2 found and rewritten")
        #expect(state.running == nil && state.last == report)
        try state.start(repair: true, regionsTotal: 1, workers: 1)
    }

    /// A source that cannot be read ends the hand-out; a check that did not get through every
    /// region is interrupted for the reason given at its end, unless it says why already.
    @Test func interruptedChecksSayWhy() throws {
        var state = CheckState()
        try state.start(repair: false, regionsTotal: 3, workers: 1)
        _ = state.next()
        state.record(.sourceFailed(BlockIOError(path: "OLD", operation: .read, offset: 0, errno: .ioError)))
        let afterFailure = state.next()
        #expect(afterFailure == nil)
        let sourceFailed = state.finish(interruptedBecause: "the mirror is stopping")
        #expect(sourceFailed?.interrupted?.hasPrefix("cannot read the source") == true)

        try state.start(repair: false, regionsTotal: 3, workers: 1)
        _ = state.next()
        state.record(.targetFailed)
        let targetFailed = state.finish(interruptedBecause: "the target failed: EIO")
        #expect(targetFailed?.interrupted == "the target failed: EIO")
        let none = state.finish(interruptedBecause: "")
        #expect(none == nil, "no check runs")
    }
}
