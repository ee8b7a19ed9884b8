import BlockIO
import MirrorModel

/// The check's bookkeeping (md's `check` and `repair`), with no I/O and no lock: the report of the
/// check running, the next region its workers take, how many workers run, the last report.
/// `MirrorExport` keeps it under its mutex and does the reads, compares and rewrites.
struct CheckState: Sendable {
    /// The check running, if any.
    private(set) var running: CheckReport?
    /// The report of the last check that ended.
    private(set) var last: CheckReport?
    /// The next region a worker takes.
    private var cursor = 0
    /// Workers still running.
    private(set) var workers = 0

    /// What comparing one region came to.
    enum Outcome: Sendable {
        /// The region is still to be copied: known to differ, not compared.
        case skipped
        /// Compared; `mismatches` found, and rewritten on the target if `repaired`.
        case compared([CheckReport.Mismatch], repaired: Bool)
        /// The source could not be read: the check ends with the error.
        case sourceFailed(BlockIOError)
        /// The target failed (and with it the check).
        case targetFailed
    }

    /// Starts a check of `regionsTotal` regions by `workers` workers.
    mutating func start(repair: Bool, regionsTotal: Int, workers: Int) throws(MirrorExport.CheckError) {
        guard running == nil else { throw .init(description: "a check is already running") }
        running = CheckReport(repair: repair, regionsTotal: regionsTotal)
        cursor = 0
        self.workers = workers
    }

    /// The next region to compare, nil when every region was taken or the check was interrupted.
    mutating func next() -> Int? {
        guard let running, running.interrupted == nil, cursor < running.regionsTotal else { return nil }
        defer { cursor += 1 }
        return cursor
    }

    /// Counts what comparing one region came to.
    mutating func record(_ outcome: Outcome) {
        guard running != nil else { return }
        switch outcome {
        case .skipped:
            running!.regionsSkipped += 1
        case .compared(let mismatches, let repaired):
            running!.regionsChecked += 1
            running!.record(mismatches)
            if repaired { running!.repairedSectors += mismatches.reduce(0) { $0 + ($1.length + 511) / 512 } }
            if !mismatches.isEmpty && !repaired { running!.regionsMarkedDirty += 1 }
        case .sourceFailed(let error):
            running!.interrupted = "cannot read the source: \(error)"
        case .targetFailed:
            break
        }
    }

    /// A worker ended.
    mutating func workerEnded() {
        workers -= 1
    }

    /// Ends the check; one that did not get through every region was interrupted for `why` (unless
    /// it already says why). Returns its report, kept as the last.
    mutating func finish(interruptedBecause why: @autoclosure () -> String) -> CheckReport? {
        guard var report = running else { return nil }
        if report.interrupted == nil, report.regionsChecked + report.regionsSkipped < report.regionsTotal {
            report.interrupted = why()
        }
        running = nil
        last = report
        return report
    }
}
