import BlockExport
import BlockIO
import CLibAIO
import Foundation
import Logging
import MirrorModel
import NIOCore
import NIOPosix
import Testing
@testable import Mirror

/// The mirror engine on real files, with writes racing the background copy. Named after the
/// invariants of docs/INVARIANTS.md they check.
@Suite struct MirrorExportTests {
    static let size = 48 << 20

    struct Rig {
        let dir: String
        let sourcePath: String
        let targetPath: String
        let aio: AIOEngine
        let group: MultiThreadedEventLoopGroup

        init(targetSize: Int = MirrorExportTests.size) throws {
            dir = "/var/tmp/mirror-test-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            sourcePath = dir + "/old.img"
            targetPath = dir + "/new.img"
            // A zero stretch in the middle exercises the all-zero copy path.
            var source = try randomBytes(MirrorExportTests.size)
            source.replaceSubrange((8 << 20)..<(12 << 20), with: Data(count: 4 << 20))
            try source.write(to: URL(fileURLWithPath: sourcePath))
            _ = FileManager.default.createFile(atPath: targetPath, contents: nil)
            truncate(targetPath, off_t(targetSize))
            aio = try AIOEngine()
            group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        }

        func open(_ path: String) throws -> BlockDevice {
            try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: Logger(label: "test"))
        }

        func tearDown() {
            aio.shutdown()
            try? group.syncShutdownGracefully()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Invariants 2 and 3: writes issued while the copier runs are acknowledged only once on both
    /// legs, and no copy lands over a newer write. Eight writers, each owning a slice (so the
    /// expected content is known), write random-sized blocks while a degraded mirror gets its
    /// target attached; after the recovery, source and target equal the model byte for byte.
    @Test func writesRacingTheCopyEndIdenticalOnBothLegs() async throws {
        try await writersRaceTheCopy(holes: [])
    }

    /// The same over a source that is mostly holes, which the copier zeroes on the target in runs
    /// of regions it takes as it goes (`MirrorCopier.zeroHoleRun`): the writes land in the holes
    /// while they are being zeroed, and none is lost or zeroed over.
    @Test func writesRacingTheCopyOfASparseSourceEndIdentical() async throws {
        try await writersRaceTheCopy(holes: [(1 << 20)..<(30 << 20), (33 << 20)..<Self.size])
    }

    /// Eight writers race the recovery of a mirror whose source has `holes` punched; at the end
    /// both legs equal the model.
    func writersRaceTheCopy(holes: [Range<Int>]) async throws {
        let rig = try Rig()
        defer { rig.tearDown() }
        if !holes.isEmpty {
            let sourceFD = try FileDescriptor.open(rig.sourcePath, flags: O_RDWR).get()
            for hole in holes {
                try sourceFD.allocate(mode: bm_falloc_punch_hole(), offset: UInt64(hole.lowerBound), length: UInt64(hole.count)).get()
            }
            sourceFD.close()
        }
        var model = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 256 << 10, copiesInFlight: 4,
                                  pool: BufferPool(), logger: Logger(label: "mirror"))
        #expect(mirror.status.state == .degraded)
        let lanes = 8, slice = Self.size / lanes
        let plans: [[(offset: Int, bytes: [UInt8])]] = (0..<lanes).map { lane in
            var generator = SystemRandomNumberGenerator()
            return (0..<150).map { _ in
                let length = Int.random(in: 1...256, using: &generator) * 512
                let offset = lane * slice + Int.random(in: 0...((slice - length) / 512), using: &generator) * 512
                return (offset, [UInt8](try! randomBytes(length)))
            }
        }
        for plan in plans { for write in plan { model.replaceSubrange(write.offset..<(write.offset + write.bytes.count), with: write.bytes) } }

        try await withThrowingTaskGroup(of: Void.self) { group in
            for (lane, plan) in plans.enumerated() {
                group.addTask {
                    let loop = rig.group.next()
                    for (index, write) in plan.enumerated() {
                        var buffer = ByteBufferAllocator().buffer(capacity: write.bytes.count)
                        buffer.writeBytes(write.bytes)
                        try await mirror.write(offset: UInt64(write.offset), data: buffer, fua: index % 50 == 0, on: loop).get()
                        if lane == 0 && index == 10 { try await mirror.attach(target: try rig.open(rig.targetPath)) }
                    }
                }
            }
            try await group.waitForAll()
        }
        let settled = await mirror.waitUntilSettled()
        #expect(settled.state == .inSync)
        #expect(settled.regionsDirty == 0)
        try await mirror.close()
        let source = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let target = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let sourceDiffers = firstDifference(source, model), targetDiffers = firstDifference(target, model)
        #expect(sourceDiffers == nil, "source differs from the model at byte \(sourceDiffers ?? -1)")
        #expect(targetDiffers == nil, "target differs from the model at byte \(targetDiffers ?? -1)")
    }

    /// Holes of a sparse source and all-zero regions are not copied byte by byte, yet the target
    /// (here full of garbage beforehand) ends identical to the source.
    @Test func sparseSourceAndZeroRegionsEndIdentical() async throws {
        let rig = try Rig()
        defer { rig.tearDown() }
        // Punch two holes into the source; fill the target with random bytes.
        let sourceFD = try FileDescriptor.open(rig.sourcePath, flags: O_RDWR).get()
        try sourceFD.allocate(mode: bm_falloc_punch_hole(), offset: 16 << 20, length: 8 << 20).get()
        try sourceFD.allocate(mode: bm_falloc_punch_hole(), offset: (40 << 20) + 4096, length: 1 << 20).get()
        sourceFD.close()
        try randomBytes(Self.size).write(to: URL(fileURLWithPath: rig.targetPath))
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 1 << 20, pool: BufferPool(), logger: Logger(label: "mirror"))
        try await mirror.attach(target: try rig.open(rig.targetPath))
        #expect(await mirror.waitUntilSettled().state == .inSync)
        try await mirror.close()
        let source = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let target = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let differs = firstDifference(source, target)
        #expect(differs == nil, "target differs from the source at byte \(differs ?? -1)")
    }

    /// Sizes: a target smaller than the source is refused, naming both paths and sizes.
    @Test func smallerTargetIsRefused() async throws {
        let rig = try Rig(targetSize: Self.size - 4096)
        defer { rig.tearDown() }
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), pool: BufferPool(), logger: Logger(label: "mirror"))
        let error = await #expect(throws: MirrorExport.TargetError.self) { try await mirror.attach(target: try rig.open(rig.targetPath)) }
        #expect(error?.description.contains(rig.targetPath) == true)
        #expect(error?.description.contains("\(Self.size)") == true)
        #expect(mirror.status.state == .degraded)
    }

}

/// Polls `condition` every 50 ms until it holds or `timeout` seconds passed; says whether it held.
func waitUntilAsync(timeout: Double, _ condition: () throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}

/// `count` bytes from /dev/urandom.
func randomBytes(_ count: Int) throws -> Data {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
    defer { try? handle.close() }
    return try handle.read(upToCount: count) ?? Data()
}

/// Invariant 4 with the bitmap file: write intent is durable before the write, clears are lazy.
@Suite struct WriteIntentTests {
    /// After the recovery and a FLUSH the file says "nothing to copy"; writes that follow set their
    /// regions' bits on disk before they complete (what a crash would find), and once no write has
    /// touched them for a while the bits are cleared again. A mirror resumed from that file copies
    /// only those regions.
    @Test func writeIntentIsDurableBeforeTheWriteAndClearedLazily() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let source = try rig.open(rig.sourcePath)
        let bitmapPath = rig.dir + "/bitmap"
        let log = try WriteIntentLog.openOrCreate(path: bitmapPath, source: source.identity, sourceTrace: source.writeTrace(),
                                                  deviceSize: source.size, regionSize: 1 << 20, defaultRegionSize: 1 << 20).log
        func onDisk() throws -> RegionBitmap { try WriteIntentLog.examine(path: bitmapPath).bitmap }
        // Bits of written regions are held 10 s: a stalled machine between the write and the read of
        // the file below cannot clear them early.
        let mirror = MirrorExport(source: source, regionSize: 1 << 20, pool: BufferPool(), logger: Logger(label: "mirror"), intentLog: log,
                                  writeHoldNanos: 10_000_000_000)
        try await mirror.attach(target: try rig.open(rig.targetPath))
        #expect(await mirror.waitUntilSettled().state == .inSync)
        let loop = rig.group.next()
        try await mirror.flush(on: loop).get()
        #expect(try onDisk().dirtyCount == 0)

        // Writes into regions 3 and 10 (partial, so they stay "clean" once done on both legs).
        let writing = ContinuousClock.now
        for offset in [(3 << 20) + 4096, (10 << 20) + 512] {
            var data = ByteBufferAllocator().buffer(capacity: 4096)
            data.writeBytes([UInt8](repeating: 0x77, count: 4096))
            try await mirror.write(offset: UInt64(offset), data: data, fua: false, on: loop).get()
        }
        let afterCrash = try onDisk()
        // The bits are held 10 s after each write: only a file read within that time must show
        // both (a machine stalled longer may rightly have cleared them: then the read tells
        // nothing, and the test does not fail for the machine's slowness).
        if ContinuousClock.now - writing < .seconds(10) {
            #expect(afterCrash.dirtyCount == 2)
            #expect(afterCrash.isDirty(3) && afterCrash.isDirty(10))
            // A mirror resumed from what a crash left copies those two regions only.
            let resumed = MirrorExport(source: source, regionSize: 1 << 20, pool: BufferPool(), logger: Logger(label: "resumed"),
                                       intentLog: nil, resuming: afterCrash)
            #expect(resumed.status.regionsDirty == 2)
        }

        try await mirror.flush(on: loop).get()
        let cleared = try await waitUntilAsync(timeout: 60) { try onDisk().dirtyCount == 0 }
        #expect(cleared, "the bits of regions written once were never cleared on disk")
        try await mirror.close()
    }
}

/// Check and repair (md's `check` / `repair`): exact mismatch counts in 512-byte sectors; a check
/// that finds differences leaves the mirror out of sync until they are copied again (invariant 8).
@Suite struct MirrorCheckTests {
    @Test func checkCountsExactlyTheCorruptedSectorsAndRepairFixesThem() async throws {
        let rig = try MirrorExportTests.Rig()
        defer { rig.tearDown() }
        let mirror = MirrorExport(source: try rig.open(rig.sourcePath), regionSize: 1 << 20, pool: BufferPool(),
                                  logger: Logger(label: "mirror"))
        await #expect(throws: MirrorExport.CheckError.self) { try await mirror.check(repair: false) }  // degraded
        try await mirror.attach(target: try rig.open(rig.targetPath))
        #expect(await mirror.waitUntilSettled().state == .inSync)
        #expect(try await mirror.check(repair: false).mismatchedSectors == 0)

        // Corrupt the target: 3 sectors inside region 1, 16 across the boundary of regions 4 and 5,
        // and 1 byte in the last sector of the device.
        try corrupt(rig.targetPath, offset: (1 << 20) + 512, count: 3 * 512)
        try corrupt(rig.targetPath, offset: (5 << 20) - 4096, count: 8192)
        try corrupt(rig.targetPath, offset: UInt64(MirrorExportTests.size) - 4096, count: 4096, onlyLastByte: true)
        let copiedBefore = mirror.status.bytesCopied
        let found = try await mirror.check(repair: false)
        #expect(found.mismatchedSectors == 3 + 16 + 1)
        #expect(found.regionsChecked == found.regionsTotal && found.interrupted == nil)
        #expect(found.mismatches.contains(CheckReport.Mismatch(offset: (1 << 20) + 512, length: 1536)))
        #expect(mirror.status.lastCheck == found)
        // The mismatching regions (1, 4, 5 and the last) are dirty: not in sync until copied again.
        #expect(found.regionsMarkedDirty == 4)
        let settled = await mirror.waitUntilSettled()
        #expect(settled.state == .inSync && settled.bytesCopied - copiedBefore == 4 << 20, "\(settled)")
        #expect(try await mirror.check(repair: false).mismatchedSectors == 0)

        // Repair rewrites the mismatches itself: the mirror stays in sync.
        try corrupt(rig.targetPath, offset: (1 << 20) + 512, count: 3 * 512)
        try corrupt(rig.targetPath, offset: (5 << 20) - 4096, count: 8192)
        try corrupt(rig.targetPath, offset: UInt64(MirrorExportTests.size) - 4096, count: 4096, onlyLastByte: true)
        let repaired = try await mirror.check(repair: true)
        #expect(repaired.mismatchedSectors == 20 && repaired.repairedSectors == 20 && repaired.regionsMarkedDirty == 0)
        #expect(mirror.status.state == .inSync)
        #expect(try await mirror.check(repair: false).mismatchedSectors == 0)
        try await mirror.close()
        let source = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let target = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        #expect(firstDifference(source, target.prefix(source.count)) == nil)
    }
}

/// Flips bytes of a file behind the mirror's back (a corruption of one leg), durably.
func corrupt(_ path: String, offset: UInt64, count: Int, onlyLastByte: Bool = false) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    var data = try handle.read(upToCount: count) ?? Data()
    for index in (onlyLastByte ? data.count - 1 : 0)..<data.count { data[index] ^= 0xA5 }
    try handle.seek(toOffset: offset)
    try handle.write(contentsOf: data)
    try handle.synchronize()
}

/// The first byte where `a` and `b` differ (memcmp by 4 KiB block, then byte by byte).
func firstDifference(_ a: Data, _ b: Data) -> Int? {
    if a.count != b.count { return min(a.count, b.count) }
    return a.withUnsafeBytes { x in
        b.withUnsafeBytes { y in
            var block = 0
            while block < a.count {
                let n = min(4096, a.count - block)
                if memcmp(x.baseAddress! + block, y.baseAddress! + block, n) != 0 {
                    return (block..<(block + n)).first { x[$0] != y[$0] }
                }
                block += n
            }
            return nil
        }
    }
}

/// The mirror's status once it is no longer recovering: `waitUntilSettled`, but a test fails
/// (after `seconds`) instead of hanging when the recovery never ends.
func settled(_ mirror: MirrorExport, within seconds: Int = 120) async throws -> MirrorStatus {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while mirror.status.state == .recovering, ContinuousClock.now < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
    let status = mirror.status
    #expect(status.state != .recovering, "still recovering after \(seconds) s")
    return status
}
