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
        let target: any Leg = try core.shared.withLock { shared throws(CheckError) in
            guard !shared.stopping else { throw CheckError(description: "the mirror is stopping") }
            guard !shared.switching else { throw CheckError(description: "a complete or reverse is in progress") }
            guard let target = shared.target.healthy else {
                throw CheckError(description: "no healthy target to compare with (state \(MirrorCore.status(of: shared).state.rawValue))")
            }
            if shared.check.running == nil, shared.bitmap.dirtyCount > 0 {
                throw CheckError(description: "recovery in progress (\(shared.bitmap.dirtyCount) of \(shared.bitmap.regionCount) "
                                 + "regions to copy): check once in sync")
            }
            try shared.check.start(repair: repair, regionsTotal: shared.bitmap.regionCount, workers: workers)
            return target
        }
        logger.info("check started", metadata: ["repair": "\(repair)", "target": "\(target.path)"])
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<workers { group.addTask { await self.checkRegions(against: target, repair: repair) } }
        }
        if repair { try? await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            target.flush { c.resume(with: $0.mapError { $0 as any Error }) }
        } }
        let report: CheckReport = core.shared.withLock { shared in
            shared.check.finish(interruptedBecause: shared.stopping ? "the mirror is stopping" : "the target failed: \(shared.target.failure ?? "")")!
        }
        core.wakeBackgroundWaiters()
        logger.info("check ended", metadata: ["mismatched sectors": "\(report.mismatchedSectors)",
                                              "interrupted": "\(report.interrupted ?? "no")"])
        if report.regionsMarkedDirty > 0 {
            logger.warning("check found \(report.mismatchedSectors) mismatched sectors in \(report.regionsMarkedDirty) regions: the mirror is not in sync until they are copied again", metadata: ["target": "\(target.path)"])
            core.settle()
            copier.pump()
        }
        return report
    }

    /// One check worker: takes the next region until none is left or the check must end.
    private func checkRegions(against target: any Leg, repair: Bool) async {
        let regionSize = core.shared.withLock { Int($0.bitmap.regionSize) }
        let sourceBuffer = pool.take(capacity: regionSize), targetBuffer = pool.take(capacity: regionSize)
        defer {
            pool.recycle(sourceBuffer)
            pool.recycle(targetBuffer)
            core.shared.withLock { $0.check.workerEnded() }
        }
        while true {
            let next: (region: Int, offset: UInt64, length: UInt64)? = core.shared.withLock { shared in
                guard !shared.stopping, shared.target.failure == nil, let region = shared.check.next() else { return nil }
                let range = shared.bitmap.byteRange(of: region)
                return (region, range.offset, range.length)
            }
            guard let next else { return }
            while let wait = copier.throttle.admit(next.length, now: MirrorCore.now()) {
                if core.shared.withLock({ $0.stopping || $0.target.failure != nil }) { return }
                try? await Task.sleep(nanoseconds: min(wait, 100_000_000))
            }
            let regions = next.region..<(next.region + 1)
            await withCheckedContinuation { continuation in core.locks.lock(regions, .exclusive) { continuation.resume() } }
            let outcome = await compare(next.offset, Int(next.length), target: target, repair: repair,
                                        sourceBuffer: sourceBuffer, targetBuffer: targetBuffer, skip: core.shared.withLock { $0.bitmap.isDirty(next.region) })
            if case .compared(let mismatches, repaired: false) = outcome, !mismatches.isEmpty {
                // Dirty on disk before the region is released: a restart must copy it too.
                await recorder.markDiffering(next.region)
            }
            core.locks.unlock(regions, .exclusive)
            copier.throttle.completed(next.length, now: MirrorCore.now())
            core.shared.withLock { $0.check.record(outcome) }
        }
    }

    /// Reads one region from both legs, compares, and rewrites the target's copy if asked.
    private func compare(_ offset: UInt64, _ length: Int, target: any Leg, repair: Bool,
                         sourceBuffer: AlignedBuffer, targetBuffer: AlignedBuffer, skip: Bool) async -> CheckState.Outcome {
        // A region still to be copied is known to differ; the copier will handle it.
        guard !skip else { return .skipped }
        let mismatches: [CheckReport.Mismatch]
        switch await LegComparison.compare(source, target, offset: offset, length: length, into: (sourceBuffer, targetBuffer)) {
        case .compared(let found): mismatches = found
        case .firstFailed(let error): return .sourceFailed(error)
        case .secondFailed(let error):
            core.targetFailed(error, on: target)
            return .targetFailed
        }
        guard repair, !mismatches.isEmpty else { return .compared(mismatches, repaired: false) }
        let written: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            target.write(from: sourceBuffer.baseAddress, count: length, offset: offset, durable: false) { continuation.resume(returning: $0) }
        }
        if case .failure(let error) = written {
            core.targetFailed(error, on: target)
            return .targetFailed
        }
        return .compared(mismatches, repaired: true)
    }
}
