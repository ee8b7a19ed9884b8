import BlockIO
import MirrorModel

extension MirrorExport {
    /// Why a check cannot run.
    public struct CheckError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Compares source and target region by region (md's `check`; with `repair`, md's `repair`:
    /// mismatching sectors are rewritten on the target from the source). Runs only on a mirror in
    /// sync; client I/O goes on meanwhile (each region is held exclusively while it is compared,
    /// as the copier holds it), paced by the same speed limits as the copy. A region found to
    /// differ (and not repaired) is marked dirty, durably, so the mirror is no longer in sync until
    /// the copier has copied it again (invariant 8). Returns when every region was compared, or
    /// early (with `interrupted` saying why) when the mirror stops or the target fails.
    public func check(repair: Bool) async throws(CheckError) -> CheckReport {
        let workers = copiesInFlight
        let target: any Leg = try shared.withLock { shared throws(CheckError) in
            guard !shared.stopping else { throw CheckError(description: "the mirror is stopping") }
            guard let target = shared.target.healthy else {
                throw CheckError(description: "no healthy target to compare with (state \(Self.status(of: shared).state.rawValue))")
            }
            guard shared.check == nil else { throw CheckError(description: "a check is already running") }
            guard shared.bitmap.dirtyCount == 0 else {
                throw CheckError(description: "recovery in progress (\(shared.bitmap.dirtyCount) of \(shared.bitmap.regionCount) "
                                 + "regions to copy): check once in sync")
            }
            shared.check = CheckReport(repair: repair, regionsTotal: shared.bitmap.regionCount)
            shared.checkCursor = 0
            shared.checking = workers
            return target
        }
        logger.info("check started", metadata: ["repair": "\(repair)", "target": "\(target.path)"])
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<workers { group.addTask { await self.checkRegions(against: target, repair: repair) } }
        }
        if repair { try? await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            target.flush { c.resume(with: $0.mapError { $0 as any Error }) }
        } }
        let report: CheckReport = shared.withLock { shared in
            var report = shared.check!
            if report.interrupted == nil, report.regionsChecked + report.regionsSkipped < report.regionsTotal {
                report.interrupted = shared.stopping ? "the mirror is stopping" : "the target failed: \(shared.target.failure ?? "")"
            }
            shared.check = nil
            shared.lastCheck = report
            return report
        }
        wakeBackgroundWaiters()
        logger.info("check ended", metadata: ["mismatched sectors": "\(report.mismatchedSectors)",
                                              "interrupted": "\(report.interrupted ?? "no")"])
        if report.regionsMarkedDirty > 0 {
            logger.warning("check found \(report.mismatchedSectors) mismatched sectors in \(report.regionsMarkedDirty) regions: the mirror is not in sync until they are copied again", metadata: ["target": "\(target.path)"])
            settle()
            pump()
        }
        return report
    }

    /// One check worker: takes the next region until none is left or the check must end.
    private func checkRegions(against target: any Leg, repair: Bool) async {
        let regionSize = shared.withLock { Int($0.bitmap.regionSize) }
        let sourceBuffer = pool.take(capacity: regionSize), targetBuffer = pool.take(capacity: regionSize)
        defer {
            pool.recycle(sourceBuffer)
            pool.recycle(targetBuffer)
            shared.withLock { $0.checking -= 1 }
        }
        while true {
            let next: (region: Int, offset: UInt64, length: UInt64)? = shared.withLock { shared in
                guard !shared.stopping, shared.target.failure == nil, shared.check?.interrupted == nil,
                      shared.checkCursor < shared.bitmap.regionCount else { return nil }
                let region = shared.checkCursor
                shared.checkCursor += 1
                let range = shared.bitmap.byteRange(of: region)
                return (region, range.offset, range.length)
            }
            guard let next else { return }
            while let wait = throttle.admit(next.length, now: Self.now()) {
                if shared.withLock({ $0.stopping || $0.target.failure != nil }) { return }
                try? await Task.sleep(nanoseconds: min(wait, 100_000_000))
            }
            let regions = next.region..<(next.region + 1)
            await withCheckedContinuation { continuation in locks.lock(regions, .exclusive) { continuation.resume() } }
            let outcome = await compare(next.offset, Int(next.length), target: target, repair: repair,
                                        sourceBuffer: sourceBuffer, targetBuffer: targetBuffer, skip: shared.withLock { $0.bitmap.isDirty(next.region) })
            if case .compared(let mismatches, repaired: false) = outcome, !mismatches.isEmpty {
                // Dirty on disk before the region is released: a restart must copy it too.
                await markDiffering(next.region)
            }
            locks.unlock(regions, .exclusive)
            throttle.completed(next.length, now: Self.now())
            shared.withLock { shared in
                switch outcome {
                case .skipped: shared.check!.regionsSkipped += 1
                case .compared(let mismatches, let repaired):
                    shared.check!.regionsChecked += 1
                    shared.check!.record(mismatches)
                    if repaired { shared.check!.repairedSectors += mismatches.reduce(0) { $0 + ($1.length + 511) / 512 } }
                    if !mismatches.isEmpty && !repaired { shared.check!.regionsMarkedDirty += 1 }
                case .sourceFailed(let error):
                    shared.check!.interrupted = "cannot read the source: \(error)"
                case .targetFailed: break
                }
            }
        }
    }

    private enum RegionComparison {
        case skipped
        case compared([CheckReport.Mismatch], repaired: Bool)
        case sourceFailed(BlockIOError)
        case targetFailed
    }

    /// Reads one region from both legs, compares, and rewrites the target's copy if asked.
    private func compare(_ offset: UInt64, _ length: Int, target: any Leg, repair: Bool,
                         sourceBuffer: AlignedBuffer, targetBuffer: AlignedBuffer, skip: Bool) async -> RegionComparison {
        // A region still to be copied is known to differ; the copier will handle it.
        guard !skip else { return .skipped }
        let mismatches: [CheckReport.Mismatch]
        switch await LegComparison.compare(source, target, offset: offset, length: length, into: (sourceBuffer, targetBuffer)) {
        case .compared(let found): mismatches = found
        case .firstFailed(let error): return .sourceFailed(error)
        case .secondFailed(let error):
            targetFailed(error, on: target)
            return .targetFailed
        }
        guard repair, !mismatches.isEmpty else { return .compared(mismatches, repaired: false) }
        let written: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            target.write(from: sourceBuffer.baseAddress, count: length, offset: offset, durable: false) { continuation.resume(returning: $0) }
        }
        if case .failure(let error) = written {
            targetFailed(error, on: target)
            return .targetFailed
        }
        return .compared(mismatches, repaired: true)
    }
}
