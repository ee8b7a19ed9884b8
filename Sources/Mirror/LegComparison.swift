import BlockIO
import MirrorModel

/// Two copies of the same bytes compared region by region: the mirror's check, and `verify` of
/// two legs of any mirror (a kernel md array's, say).
public enum LegComparison {
    /// What reading and comparing one range found.
    public enum Outcome: Sendable {
        case compared([CheckReport.Mismatch])
        case firstFailed(BlockIOError)
        case secondFailed(BlockIOError)
    }

    /// Reads `length` bytes at `offset` from both devices at once (into the two buffers) and
    /// compares them sector by sector; mismatches are reported at `offset + reportBase`.
    public static func compare(_ first: any Leg, _ second: any Leg, offset: UInt64, length: Int,
                               into buffers: (AlignedBuffer, AlignedBuffer), reportBase: Int64 = 0) async -> Outcome {
        let (firstRead, secondRead) = await withCheckedContinuation { continuation in
            // The second completion resumes, decided under the lock: completions may run on two
            // threads at once (a refused submission completes on the submitting thread).
            let results = Mutex<(Result<Void, BlockIOError>?, Result<Void, BlockIOError>?)>((nil, nil))
            let store: @Sendable (_ first: Bool, Result<Void, BlockIOError>) -> Void = { isFirst, result in
                let both = results.withLock { r -> (Result<Void, BlockIOError>, Result<Void, BlockIOError>)? in
                    if isFirst { r.0 = result } else { r.1 = result }
                    guard let a = r.0, let b = r.1 else { return nil }
                    return (a, b)
                }
                if let both { continuation.resume(returning: both) }
            }
            first.read(into: buffers.0.baseAddress, count: length, offset: offset) { store(true, $0) }
            second.read(into: buffers.1.baseAddress, count: length, offset: offset) { store(false, $0) }
        }
        if case .failure(let error) = firstRead { return .firstFailed(error) }
        if case .failure(let error) = secondRead { return .secondFailed(error) }
        return .compared(SectorComparison.mismatches(buffers.0.baseAddress, buffers.1.baseAddress, count: length,
                                                     base: UInt64(Int64(offset) + reportBase)))
    }

    /// Compares `length` bytes of two devices from `offset` on, `regionSize` at a time with
    /// `concurrency` regions in flight: the report `check` gives, for two legs outside any mirror.
    /// Mismatch offsets are relative to `offset` (the array's view when `offset` skips a superblock).
    public static func verify(_ first: any Leg, _ second: any Leg, offset: UInt64 = 0, length: UInt64,
                              regionSize: UInt64 = 1 << 20, concurrency: Int = 8, pool: BufferPool) async -> CheckReport {
        let regions = Int(length.dividedRoundingUp(by: regionSize))
        let progress = Progress(CheckReport(repair: false, regionsTotal: regions))
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<max(1, concurrency) {
                group.addTask {
                    let buffers = (pool.take(capacity: Int(regionSize)), pool.take(capacity: Int(regionSize)))
                    defer { pool.recycle(buffers.0); pool.recycle(buffers.1) }
                    while let region = progress.state.withLock({ s -> Int? in
                        guard s.next < regions, s.report.interrupted == nil else { return nil }
                        defer { s.next += 1 }
                        return s.next
                    }) {
                        let start = UInt64(region) * regionSize
                        let count = Int(min(regionSize, length - start))
                        let outcome = await compare(first, second, offset: offset + start, length: count, into: buffers,
                                                    reportBase: -Int64(offset))
                        progress.state.withLock { s in
                            switch outcome {
                            case .compared(let mismatches):
                                s.report.regionsChecked += 1
                                s.report.record(mismatches)
                            case .firstFailed(let error), .secondFailed(let error):
                                s.report.interrupted = "\(error)"
                            }
                        }
                    }
                }
            }
        }
        var report = progress.state.withLock { $0.report }
        // Listed mismatches in device order (workers finish regions out of order).
        report.mismatches.sort { $0.offset < $1.offset }
        return report
    }

    /// The next region to compare and the report so far, shared by the workers of `verify`.
    private final class Progress: Sendable {
        let state: Mutex<(next: Int, report: CheckReport)>
        init(_ report: CheckReport) { state = Mutex((0, report)) }
    }
}
