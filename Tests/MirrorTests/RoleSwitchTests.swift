import BlockIO
import Foundation
import Logging
import MirrorModel
import NIOCore
import Testing
@testable import Mirror

/// `complete` and `reverse` in the engine, with writers racing the switch: every write is
/// acknowledged (the ones that arrived during the switch waited), NEW ends equal to every write
/// made, and what comes after the switch never reaches a retired OLD.
@Suite struct RoleSwitchTests {
    private func mirror(_ rig: MirrorExportTests.Rig, source: (any Leg)? = nil, target: (any Leg)? = nil) async throws -> MirrorExport {
        let source = try source ?? rig.open(rig.sourcePath)
        let log = try WriteIntentLog.openOrCreate(path: rig.dir + "/bitmap", source: source.identity, sourceTrace: source.writeTrace(),
                                                  deviceSize: source.size, regionSize: 1 << 20, defaultRegionSize: 1 << 20).log
        let mirror = MirrorExport(source: source, regionSize: 1 << 20, pool: BufferPool(), logger: Logger(label: "mirror"), intentLog: log)
        try await mirror.attach(target: try target ?? rig.open(rig.targetPath))
        #expect(await mirror.waitUntilSettled().state == .inSync)
        return mirror
    }

    private func write(_ mirror: MirrorExport, _ bytes: [UInt8], at offset: Int, on loop: any EventLoop) async throws {
        var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try await mirror.write(offset: UInt64(offset), data: buffer, fua: false, on: loop).get()
    }

    @Test func writesRacingCompleteAllLandOnNew() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        var model = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let mirror = try await mirror(rig)
        let lanes = 8, slice = MirrorExportTests.size / lanes
        let plans: [[(offset: Int, bytes: [UInt8])]] = (0..<lanes).map { lane in
            (0..<100).map { _ in
                let length = Int.random(in: 1...64) * 512
                let offset = lane * slice + Int.random(in: 0...((slice - length) / 512)) * 512
                return (offset, [UInt8](try! randomBytes(length)))
            }
        }
        for plan in plans { for write in plan { model.replaceSubrange(write.offset..<(write.offset + write.bytes.count), with: write.bytes) } }
        let switched: MirrorExport.RoleSwitch = try await withThrowingTaskGroup(of: MirrorExport.RoleSwitch?.self) { group in
            for plan in plans {
                group.addTask {
                    let loop = rig.group.next()
                    for write in plan { try await self.write(mirror, write.bytes, at: write.offset, on: loop) }
                    return nil
                }
            }
            group.addTask { try await mirror.complete(keepOld: false) }
            var result: MirrorExport.RoleSwitch?
            for try await value in group { if let value { result = value } }
            return result!
        }
        #expect(switched == .init(source: rig.targetPath, target: nil, retired: rig.sourcePath))
        let status = mirror.status
        #expect(status.source == rig.targetPath && status.target == nil && status.retired == rig.sourcePath && status.switched != nil)
        // After the switch: on NEW only.
        let oldBefore = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let late = [UInt8](try randomBytes(64 << 10))
        try await write(mirror, late, at: 5 << 20, on: rig.group.next())
        model.replaceSubrange((5 << 20)..<((5 << 20) + late.count), with: late)
        try await mirror.close()
        let new = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let old = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        #expect(firstDifference(new, model) == nil, "NEW differs from every write made at byte \(firstDifference(new, model) ?? -1)")
        #expect(old == oldBefore, "OLD changed after complete")
    }

    /// `reverse` twice brings the roles back, copying nothing; both legs are written throughout.
    @Test func reverseSwapsAndSwapsBack() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let mirror = try await mirror(rig)
        let copied = mirror.status.bytesCopied
        #expect(try await mirror.reverse() == .init(source: rig.targetPath, target: rig.sourcePath, retired: nil))
        try await write(mirror, [UInt8](repeating: 0xa5, count: 4096), at: 1 << 20, on: rig.group.next())
        #expect(try await mirror.reverse() == .init(source: rig.sourcePath, target: rig.targetPath, retired: nil))
        let status = mirror.status
        #expect(status.state == .inSync && status.bytesCopied == copied)
        try await mirror.close()
        let old = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath)), new = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        #expect(old == new && old[(1 << 20)..<((1 << 20) + 4096)] == Data(repeating: 0xa5, count: 4096))
    }

    /// While the switch waits for NEW's flush, the verbs that change the legs are refused (a NEW
    /// failed and removed meanwhile would otherwise become the source, closed); the switch then
    /// ends, and the export reads from NEW.
    @Test func verbsThatChangeTheLegsAreRefusedDuringTheSwitch() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let new = FaultInjectingLeg(try rig.open(rig.targetPath))
        let mirror = try await mirror(rig, target: new)
        new.holdCompletions()
        let completing = Task { try await mirror.complete(keepOld: true) }
        let deadline = ContinuousClock.now + .seconds(60)
        while new.heldCompletions == 0, ContinuousClock.now < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        try #require(new.heldCompletions > 0, "the switch never flushed NEW")
        #expect(throws: MirrorExport.TargetError.self) { try mirror.failTarget() }
        await #expect(throws: MirrorExport.TargetError.self) { try await mirror.removeTarget() }
        await #expect(throws: (any Error).self) { _ = try await mirror.check(repair: false) }
        await #expect(throws: MirrorExport.TargetError.self) { try await mirror.complete(keepOld: false) }
        new.releaseCompletions()
        #expect(try await completing.value == .init(source: rig.targetPath, target: rig.sourcePath, retired: nil))
        let read = try await mirror.read(offset: 0, length: 4096, allocator: ByteBufferAllocator(), on: rig.group.next()).get()
        #expect(Data(read.readableBytesView) == (try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))).prefix(4096))
        try await mirror.close()
    }

    /// A writeback error the switch's flush takes from OLD is the next client FLUSH's (the kernel
    /// reports it once), and the roles stay as they were.
    @Test func aSourceFlushErrorDuringTheSwitchReachesTheNextFlush() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let old = FaultInjectingLeg(try rig.open(rig.sourcePath))
        let mirror = try await mirror(rig, source: old)
        try await mirror.flush(on: rig.group.next()).get()
        old.inject(.init([.flush], times: 1))
        await #expect(throws: MirrorExport.TargetError.self) { try await mirror.complete(keepOld: false) }
        #expect(mirror.status.source == rig.sourcePath && mirror.status.target == rig.targetPath)
        await #expect(throws: (any Error).self) { try await mirror.flush(on: rig.group.next()).get() }
        try await mirror.flush(on: rig.group.next()).get()
        try await mirror.close()
    }

    /// Not in sync: refused, saying how much is left, and the roles stay as they were.
    @Test func completeBeforeInSyncIsRefused() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let source = try rig.open(rig.sourcePath)
        let log = try WriteIntentLog.openOrCreate(path: rig.dir + "/bitmap", source: source.identity, sourceTrace: source.writeTrace(),
                                                  deviceSize: source.size, regionSize: 1 << 20, defaultRegionSize: 1 << 20).log
        let mirror = MirrorExport(source: source, regionSize: 1 << 20, limits: SpeedLimits(minimum: 1, maximum: 1), pool: BufferPool(),
                                  logger: Logger(label: "mirror"), intentLog: log)
        try await mirror.attach(target: try rig.open(rig.targetPath))
        await #expect { try await mirror.complete(keepOld: false) } throws: { error in
            "\(error)".contains("needs a target in sync") && "\(error)".contains("regions")
        }
        #expect(mirror.status.source == rig.sourcePath && mirror.status.target == rig.targetPath)
        try await mirror.close()
    }
}
