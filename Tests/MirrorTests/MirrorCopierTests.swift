import BlockExport
import BlockIO
import Foundation
import Logging
import MirrorModel
import Testing
@testable import Mirror

/// The copier on its own, over real files: no export, no client, no bitmap file — a core, a
/// recorder without a file and the copier, as `MirrorExport` wires them.
@Suite struct MirrorCopierTests {
    struct Engine {
        let core: MirrorCore
        let copier: MirrorCopier
    }

    /// The engine over `source` with every region dirty and `target` attached.
    static func engine(source: any Leg, target: any Leg) -> Engine {
        let bitmap = RegionBitmap(deviceSize: source.size, regionSize: 1 << 20, allDirty: true)
        let core = MirrorCore(source: source, bitmap: bitmap, logger: Logger(label: "copier"))
        let recorder = WriteIntentRecorder(core: core, log: nil, writeHoldNanos: 0)
        let copier = MirrorCopier(core: core, recorder: recorder, throttle: CopyThrottle(limits: SpeedLimits()), depth: 8,
                                  pool: BufferPool(), foreground: InFlightTracker())
        core.shared.withLock { shared in
            shared.target.attach(target)
            shared.target.attached()
        }
        return Engine(core: core, copier: copier)
    }

    /// Started once, the copier copies every dirty region, clears every bit and goes idle: the
    /// legs are then identical.
    @Test func copiesEveryDirtyRegionThenGoesIdle() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let engine = Self.engine(source: try rig.open(rig.sourcePath), target: try rig.open(rig.targetPath))
        engine.copier.pump()
        let settled = await engine.core.waitUntilSettled()
        await engine.core.waitUntilBackgroundIdle()
        #expect(settled.state == .inSync, "\(settled.failure ?? "")")
        #expect(engine.core.shared.withLock { $0.copier.copying } == 0)
        let old = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let new = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let differs = firstDifference(old, new)
        #expect(differs == nil, "the legs differ at byte \(differs ?? -1)")
    }

    /// A hole of a sparse source is zeroed on the target without a read of it: a read of the hole
    /// would fail here (once: a copier that reads it still ends, after its retry), and none came;
    /// the recovery ends in sync, the hole zero on the target.
    @Test func aHoleOfTheSourceIsZeroedNotRead() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let hole: Range<UInt64> = (16 << 20)..<(20 << 20)
        let device = try rig.open(rig.sourcePath)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            device.discard(offset: hole.lowerBound, length: UInt64(hole.count)) { continuation.resume(with: $0.mapError { $0 as any Error }) }
        }
        // The target holds garbage there, which the copy must zero.
        let garbage = try FileHandle(forWritingTo: URL(fileURLWithPath: rig.targetPath))
        try garbage.seek(toOffset: hole.lowerBound)
        try garbage.write(contentsOf: Data(repeating: 0xA5, count: hole.count))
        try garbage.close()
        let source = FaultInjectingLeg(device)
        source.inject(.init([.read], range: hole, times: 1))
        let engine = Self.engine(source: source, target: try rig.open(rig.targetPath))
        engine.copier.pump()
        let settled = await engine.core.waitUntilSettled()
        await engine.core.waitUntilBackgroundIdle()
        #expect(settled.state == .inSync, "\(settled.failure ?? "")")
        #expect(source.injected == 0, "the copier read the source's hole")
        let new = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let holeOnTarget = new[Int(hole.lowerBound)..<Int(hole.upperBound)]
        #expect(holeOnTarget.allSatisfy { $0 == 0 }, "the hole is not zero on the target")
    }

    /// A long hole of the source is covered in runs, not region by region: the target is zeroed
    /// where it holds data and left alone where it is a hole already; the legs end identical with
    /// far fewer zeroing requests than regions.
    @Test func aLongHoleIsZeroedInRunsAndATargetHoleIsLeftAlone() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let hole: Range<UInt64> = (16 << 20)..<(48 << 20)  // 32 regions, to the end of the device
        let device = try rig.open(rig.sourcePath)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            device.discard(offset: hole.lowerBound, length: UInt64(hole.count)) { continuation.resume(with: $0.mapError { $0 as any Error }) }
        }
        // The target is a hole there but for 1 MiB of garbage, which the copy must zero.
        let garbage = try FileHandle(forWritingTo: URL(fileURLWithPath: rig.targetPath))
        try garbage.seek(toOffset: 40 << 20)
        try garbage.write(contentsOf: Data(repeating: 0xA5, count: 1 << 20))
        try garbage.close()
        let target = ZeroCountingLeg(next: try rig.open(rig.targetPath))
        let engine = Self.engine(source: device, target: target)
        engine.copier.pump()
        let settled = await engine.core.waitUntilSettled()
        await engine.core.waitUntilBackgroundIdle()
        #expect(settled.state == .inSync, "\(settled.failure ?? "")")
        let old = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let new = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let differs = firstDifference(old, new)
        #expect(differs == nil, "the legs differ at byte \(differs ?? -1)")
        let zeroings = target.zeroings.withLock { $0 }
        #expect(zeroings.count < 16, "\(zeroings.count) zeroing requests for a hole of 32 regions: \(zeroings)")
        #expect(zeroings.contains { $0.contains(40 << 20) }, "the garbage was not zeroed: \(zeroings)")
    }

    /// The clean rule: a copy whose bytes reached the target, but whose completion arrives after
    /// the target failed, cleans nothing — every region stays dirty.
    @Test func aCopyOntoATargetFailedMeanwhileCleansNothing() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let target = FaultInjectingLeg(try rig.open(rig.targetPath))
        target.holdCompletions()
        let engine = Self.engine(source: try rig.open(rig.sourcePath), target: target)
        engine.copier.pump()
        let deadline = ContinuousClock.now + .seconds(60)
        while target.heldCompletions == 0, ContinuousClock.now < deadline { try await Task.sleep(nanoseconds: 1_000_000) }
        #expect(target.heldCompletions > 0, "no copy reached the target")
        #expect(engine.core.markFailed("failed by the test", on: target))
        target.releaseCompletions()
        await engine.core.waitUntilBackgroundIdle()
        let (dirty, total) = engine.core.shared.withLock { ($0.bitmap.dirtyCount, $0.bitmap.regionCount) }
        #expect(dirty == total, "copies that completed after the failure cleaned \(total - dirty) regions")
    }
}

/// A leg that records the ranges it is asked to zero (and zeroes them on the file it forwards to).
final class ZeroCountingLeg: LegFilter, @unchecked Sendable {
    let next: any Leg
    let zeroings = Mutex<[Range<UInt64>]>([])

    init(next: any Leg) { self.next = next }

    func writeZeroes(offset: UInt64, length: UInt64, mayDeallocate: Bool, fastOnly: Bool,
                     completion: @escaping @Sendable (Result<Void, BlockIOError>) -> Void) {
        zeroings.withLock { $0.append(offset..<(offset + length)) }
        next.writeZeroes(offset: offset, length: length, mayDeallocate: mayDeallocate, fastOnly: fastOnly, completion: completion)
    }
}
