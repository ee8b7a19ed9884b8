import BlockExport
import BlockIO
import Foundation
import Logging
import MirrorModel
import NIOCore
import NIOPosix
import Testing
@testable import Mirror

/// Invariant 3 across a change of target: completions that belong to a failed or removed target
/// (copies and writes still in flight when it was failed) must neither clean regions for the new
/// target nor fail it; and a stop does not wait for a throttled check.
@Suite(.serialized) struct TargetReplacementTests {
    static func makeFile(_ path: String, size: Int) {
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        truncate(path, off_t(size))
    }

    /// Waits until the copier has copies in flight, or the recovery is over (ended or failed),
    /// at most 60 s.
    static func waitForCopies(_ mirror: MirrorExport) async {
        let deadline = ContinuousClock.now + .seconds(60)
        while mirror.core.shared.withLock({ $0.copier.copying }) == 0, mirror.status.state == .recovering, ContinuousClock.now < deadline {
            try? await Task.sleep(nanoseconds: 50_000)
        }
    }

    /// `failTarget`, unless the target already failed by itself (a leg that fails every write fails fast).
    static func fail(_ mirror: MirrorExport) throws {
        do { try mirror.failTarget() } catch {
            #expect(mirror.status.state == .targetFailed, "\(error)")
        }
    }

    /// fail + remove + add of a new target while copies to the old one are in flight: every region
    /// of the new target ends equal to the source.
    @Test func noStaleCleanWhenATargetIsReplacedMidCopy() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let second = rig.dir + "/new2.img"
        Self.makeFile(second, size: MirrorExportTests.size)
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 1 << 20, copiesInFlight: 8,
                                  pool: BufferPool(), logger: Logger(label: "mirror"))
        // Held to 8 MiB/s so that copies are still in flight when the target is failed.
        mirror.setSpeedLimits(SpeedLimits(minimum: 1, maximum: 8192))
        try await mirror.attach(target: try rig.open(rig.targetPath))
        await Self.waitForCopies(mirror)
        try Self.fail(mirror)
        try await mirror.removeTarget()
        mirror.setSpeedLimits(SpeedLimits())
        try await mirror.attach(target: try rig.open(second))
        let settled = await mirror.waitUntilSettled()
        try await mirror.close()
        #expect(settled.state == .inSync)
        let source = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let target = try Data(contentsOf: URL(fileURLWithPath: second))
        #expect(firstDifference(source, target) == nil, "the new target lacks regions the old one was copying")
    }

    /// A removed target is closed once its I/O in flight ends, though its leg object lives on
    /// (here the test holds it): once the copies running onto the failed target ended, the same
    /// file can be added again at once after `remove` (`fail`, `remove`, `add` of the same path),
    /// and the recovery onto it ends in sync.
    @Test func aRemovedTargetCanBeAddedAgainAtOnce() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 1 << 20, copiesInFlight: 8,
                                  pool: BufferPool(), logger: Logger(label: "mirror"))
        let first = try rig.open(rig.targetPath)
        try await mirror.attach(target: first)
        try Self.fail(mirror)
        let deadline = ContinuousClock.now + .seconds(60)
        while mirror.core.shared.withLock({ $0.copier.copying }) > 0, ContinuousClock.now < deadline {
            try await Task.sleep(nanoseconds: 1_000_000)
        }
        try await mirror.removeTarget()
        try await mirror.attach(target: try rig.open(rig.targetPath))
        let settled = await mirror.waitUntilSettled()
        try await mirror.close()
        #expect(settled.state == .inSync, "\(settled.failure ?? "")")
        let source = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let target = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        #expect(firstDifference(source, target) == nil, "the target added again differs from the source")
        withExtendedLifetime(first) {}
    }

    /// The old target fails late after it was replaced: every write to it fails with ENOSPC, and
    /// its completions are held back (`FaultInjectingLeg`) until the new target is attached; the
    /// new, healthy target is not marked failed.
    @Test func aReplacedTargetsLateErrorDoesNotFailTheNewOne() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let failingPath = rig.dir + "/t1.img", second = rig.dir + "/new2.img"
        Self.makeFile(failingPath, size: MirrorExportTests.size)
        Self.makeFile(second, size: MirrorExportTests.size)
        let failing = FaultInjectingLeg(try rig.open(failingPath))
        failing.inject(.init([.write, .zero], errno: .noSpace))
        failing.holdCompletions()
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 1 << 20, copiesInFlight: 8,
                                  pool: BufferPool(), logger: Logger(label: "mirror"))
        try await mirror.attach(target: failing)
        // Until the copier has written to the old target (the writes fail, unheard of yet).
        let deadline = ContinuousClock.now + .seconds(60)
        while failing.injected == 0, ContinuousClock.now < deadline { try await Task.sleep(nanoseconds: 1_000_000) }
        try Self.fail(mirror)
        try await mirror.removeTarget()
        try await mirror.attach(target: try rig.open(second))
        #expect(failing.injected > 0, "no write of the old target was in flight at the replacement")
        failing.releaseCompletions()
        let settled = await mirror.waitUntilSettled()
        try await mirror.close()
        #expect(settled.state == .inSync, "\(settled.failure ?? "")")
    }

    /// A stop during a check held to 64 KiB/s ends the check (interrupted) instead of waiting
    /// for the throttle (8 workers x 1 MiB at 64 KiB/s would take two minutes).
    @Test func stopInterruptsAThrottledCheck() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 1 << 20, copiesInFlight: 8,
                                  pool: BufferPool(), logger: Logger(label: "mirror"))
        try await mirror.attach(target: try rig.open(rig.targetPath))
        #expect(await mirror.waitUntilSettled().state == .inSync)
        mirror.setSpeedLimits(SpeedLimits(minimum: 1, maximum: 64))
        let check = Task { try await mirror.check(repair: false) }
        while mirror.status.check == nil { try await Task.sleep(nanoseconds: 1_000_000) }
        try await mirror.close()
        let report = try await check.value
        #expect(report.interrupted != nil && report.regionsChecked < report.regionsTotal, "\(report)")
    }
}
