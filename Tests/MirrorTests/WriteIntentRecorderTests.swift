import BlockExport
import BlockIO
import Foundation
import Logging
import Testing
@testable import Mirror

/// The bitmap file's writer on its own, over real files: what the file holds after a write's
/// intent, a save and a save whose target cannot flush (invariant 4).
@Suite struct WriteIntentRecorderTests {
    struct Engine {
        let core: MirrorCore
        let recorder: WriteIntentRecorder
        let bitmapPath: String
    }

    /// A core over `source` with `target` attached, its bitmap file new (every region dirty), and
    /// the copy done as far as the core knows: every region clean in memory, none yet on disk.
    static func engine(_ rig: MirrorExportTests.Rig, source: any Leg, target: any Leg) throws -> Engine {
        let bitmapPath = rig.dir + "/bitmap"
        let log = try WriteIntentLog.create(path: bitmapPath, source: source.identity, deviceSize: source.size, regionSize: 1 << 20)
        let core = MirrorCore(source: source, bitmap: RegionBitmap(deviceSize: source.size, regionSize: 1 << 20, allDirty: true), logger: Logger(label: "recorder"))
        let recorder = WriteIntentRecorder(core: core, log: log, writeHoldNanos: 0)
        core.shared.withLock { shared in
            shared.target.attach(target)
            shared.target.attached()
            for region in 0..<shared.bitmap.regionCount { shared.markClean(region) }
        }
        return Engine(core: core, recorder: recorder, bitmapPath: bitmapPath)
    }

    static func dirtyOnDisk(_ engine: Engine) throws -> [Int] {
        let bitmap = try WriteIntentLog.examine(path: engine.bitmapPath).bitmap
        return (0..<bitmap.regionCount).filter { bitmap.isDirty($0) }
    }

    static func persist(_ recorder: WriteIntentRecorder, _ regions: Range<Int>) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            recorder.persist(regions) { continuation.resume(with: $0.mapError { $0 as any Error }) }
        }
    }

    /// A save with both legs durable clears the clean regions on disk; a write's regions are set on
    /// disk when `persist` completes (before its data would move), and stay set while it is in
    /// flight, even through a final save; once it ended, the next save clears them.
    @Test func aWritesRegionsAreOnDiskBeforeItsDataMovesAndClearedAfter() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let engine = try Self.engine(rig, source: try rig.open(rig.sourcePath), target: try rig.open(rig.targetPath))
        try await engine.recorder.saveFinal()
        #expect(try Self.dirtyOnDisk(engine) == [])
        #expect(engine.recorder.writeBegins(3..<5), "a clear bit must be persisted before the write")
        try await Self.persist(engine.recorder, 3..<5)
        #expect(try Self.dirtyOnDisk(engine) == [3, 4])
        #expect(!engine.recorder.writeBegins(4..<5), "a bit set on disk needs no second write")
        try await engine.recorder.saveFinal()
        #expect(try Self.dirtyOnDisk(engine) == [3, 4], "a save cleared the bits of writes in flight")
        engine.recorder.writeEnded(3..<5)
        engine.recorder.writeEnded(4..<5)
        try await engine.recorder.saveFinal()
        #expect(try Self.dirtyOnDisk(engine) == [])
    }

    /// A save whose target cannot be made durable clears nothing on disk (its copies may not be
    /// there after a power loss) and fails the target.
    @Test func aSaveWhoseTargetCannotFlushClearsNothing() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let target = FaultInjectingLeg(try rig.open(rig.targetPath))
        target.inject(.init([.flush]))
        let engine = try Self.engine(rig, source: try rig.open(rig.sourcePath), target: target)
        let regions = engine.core.shared.withLock { $0.bitmap.regionCount }
        try await engine.recorder.saveFinal()
        #expect(try Self.dirtyOnDisk(engine).count == regions, "bits were cleared though the target was not durable")
        #expect(engine.core.shared.withLock { $0.target.failure } != nil, "the target that cannot flush was not failed")
    }
}
