import BlockIO
import Foundation
import Logging
import MirrorModel
import NIOCore
import Testing
@testable import Mirror

/// A simulated power cut under a mirror with a bitmap file (`PowerCutLeg` on both legs: each loses
/// every write not yet durable). Afterwards every sector of OLD holds the last write to it that was
/// acknowledged with FUA or before an acknowledged FLUSH (the NBD spec's promise), or a later write
/// to it (the mirror may make more durable than promised), never anything older or else; every
/// region where NEW differs from OLD is dirty in the bitmap file as it was at the cut; and a restart
/// on that file ends with OLD == NEW and OLD unchanged.
@Suite(.serialized) struct PowerCutTests {
    typealias Rig = MirrorExportTests.Rig
    static let size = MirrorExportTests.size

    /// A deterministic generator (SplitMix64), so a failing seed can be replayed.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    }

    /// The writer's acknowledged writes, sector by sector: what each sector of OLD may hold after
    /// the cut.
    struct Journal {
        static let sector = 512
        let initial: [UInt8]
        var writes: [(offset: Int, bytes: [UInt8])] = []
        var durable: [Bool] = []
        /// The writes to each sector, oldest first.
        var history: [[Int]]

        init(initial: [UInt8]) {
            self.initial = initial
            history = Array(repeating: [], count: initial.count / Self.sector)
        }

        mutating func acknowledged(offset: Int, bytes: [UInt8], fua: Bool) {
            for sector in (offset / Self.sector)..<((offset + bytes.count) / Self.sector) { history[sector].append(writes.count) }
            writes.append((offset, bytes))
            durable.append(fua)
        }

        /// An acknowledged FLUSH: every write so far is durable.
        mutating func flushed() { durable = durable.map { _ in true } }

        /// The first sector of `image` that holds neither its last durable write nor a later one
        /// (nor, before any durable write, its initial bytes or any write), or nil.
        func firstViolation(in image: [UInt8]) -> Int? {
            for sector in history.indices {
                let range = (sector * Self.sector)..<((sector + 1) * Self.sector)
                let actual = image[range]
                let lastDurable = history[sector].lastIndex { durable[$0] }
                let candidates = lastDurable.map { Array(history[sector][$0...]) } ?? history[sector]
                if lastDurable == nil && actual == initial[range] { continue }
                let matches = candidates.contains { index in
                    let write = writes[index]
                    return actual == write.bytes[(range.lowerBound - write.offset)..<(range.upperBound - write.offset)]
                }
                if !matches { return sector }
            }
            return nil
        }
    }

    /// When the power goes: while the copy runs (right after the writes), or in sync once the
    /// bitmap file calls every region clean again (the last writes not flushed by the client: the
    /// saves that cleared their bits must have made both legs durable first).
    enum Moment: String, CaseIterable { case duringTheRecovery, inSyncOnceTheBitmapIsClean }

    @Test(arguments: [(Moment.duringTheRecovery, UInt64(1)), (.duringTheRecovery, 2), (.inSyncOnceTheBitmapIsClean, 3),
                      (.inSyncOnceTheBitmapIsClean, 4)])
    func aPowerCutLosesNoDurableWriteAndTheBitmapNamesEveryDifference(moment: Moment, seed: UInt64) async throws {
        let rig = try Rig()
        defer { rig.tearDown() }
        let snapshotPath = rig.dir + "/bitmap.at-the-cut"
        let journal = try await runUntilTheCut(rig, moment: moment, seed: seed, snapshot: snapshotPath)

        let old = [UInt8](try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath)))
        let new = [UInt8](try Data(contentsOf: URL(fileURLWithPath: rig.targetPath)))
        // Compared apart from #expect, which would render 48 MiB operands on failure.
        let wrongOnOld = journal.firstViolation(in: old)
        #expect(wrongOnOld == nil, "OLD sector \(wrongOnOld ?? -1) lost its durable write (or holds bytes never written there)")
        let atTheCut = try WriteIntentLog.examine(path: snapshotPath).bitmap
        let undetected = (0..<atTheCut.regionCount).filter { region in
            let range = atTheCut.byteRange(of: region)
            let bytes = Int(range.offset)..<Int(range.offset + range.length)
            return !atTheCut.isDirty(region) && old[bytes] != new[bytes]
        }
        #expect(undetected.isEmpty, "regions that differ but the bitmap calls clean: \(undetected)")

        // The restart on the bitmap as the cut left it (the old mirror let go of the files).
        let reopened = try rig.open(rig.sourcePath)
        let opened = try WriteIntentLog.openOrCreate(path: snapshotPath, source: reopened.identity, sourceTrace: reopened.writeTrace(),
                                                     deviceSize: reopened.size, regionSize: nil, defaultRegionSize: 1 << 20)
        let resumed = MirrorExport(source: reopened, regionSize: 1 << 20, pool: BufferPool(), logger: Logger(label: "resumed"),
                                   intentLog: opened.log, resuming: opened.bitmap)
        try await resumed.attach(target: try rig.open(rig.targetPath))
        let settled = try await settled(resumed)
        try await resumed.close()
        #expect(settled.state == .inSync, "\(settled.failure ?? "")")
        let finalOld = try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))
        let finalNew = try Data(contentsOf: URL(fileURLWithPath: rig.targetPath))
        let legsDiffer = firstDifference(finalOld, finalNew)
        #expect(legsDiffer == nil, "after the restart OLD and NEW differ at byte \(legsDiffer ?? -1)")
        let oldChanged = firstDifference(finalOld, Data(old))
        #expect(oldChanged == nil, "the restart changed OLD at byte \(oldChanged ?? -1)")
    }

    /// Runs the mirror on power-cut legs under the writer, cuts the power, copies the bitmap
    /// file as the cut left it to `snapshot`, and returns the journal of acknowledged writes. The
    /// legs are closed when it returns.
    func runUntilTheCut(_ rig: Rig, moment: Moment, seed: UInt64, snapshot snapshotPath: String) async throws -> Journal {
        let bitmapPath = rig.dir + "/bitmap"
        var journal = Journal(initial: [UInt8](try Data(contentsOf: URL(fileURLWithPath: rig.sourcePath))))

        let sourceDevice = try rig.open(rig.sourcePath)
        let source = PowerCutLeg(sourceDevice), target = PowerCutLeg(try rig.open(rig.targetPath))
        let log = try WriteIntentLog.openOrCreate(path: bitmapPath, source: sourceDevice.identity, sourceTrace: sourceDevice.writeTrace(),
                                                  deviceSize: sourceDevice.size, regionSize: 1 << 20, defaultRegionSize: 1 << 20).log
        // During the recovery the copy is held to 64 KiB/s (48 MiB: 13 minutes), so the cut comes
        // while it runs however slow the writes are on a loaded machine (at 1 MiB/s a loaded run
        // once outlasted it); bits of written regions are held 300 ms, so saves clear bits while
        // the writes go on.
        let limits = moment == .duringTheRecovery ? SpeedLimits(minimum: 0, maximum: 1 << 6) : SpeedLimits()
        let mirror = MirrorExport(source: source, regionSize: 1 << 20, copiesInFlight: 8, limits: limits, pool: BufferPool(),
                                  logger: Logger(label: "mirror"), intentLog: log, writeHoldNanos: 300_000_000)
        try await mirror.attach(target: target)
        if moment == .inSyncOnceTheBitmapIsClean { #expect(try await settled(mirror).state == .inSync) }

        // One writer: random writes, a quarter with FUA, a FLUSH now and then; the model follows
        // what must survive.
        var random = Random(state: seed)
        let loop = rig.group.next()
        for index in 0..<(150 + random.below(150)) {
            let length = 512 * (1 + random.below(256))
            let offset = 512 * random.below((Self.size - length) / 512)
            let bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            let fua = random.below(4) == 0
            var buffer = ByteBufferAllocator().buffer(capacity: length)
            buffer.writeBytes(bytes)
            try await mirror.write(offset: UInt64(offset), data: buffer, fua: fua, on: loop).get()
            journal.acknowledged(offset: offset, bytes: bytes, fua: fua)
            if index % 25 == 24 && index < 125 {
                try await mirror.flush(on: loop).get()
                journal.flushed()
            }
        }

        if moment == .inSyncOnceTheBitmapIsClean {
            let deadline = ContinuousClock.now + .seconds(60)
            while (try? WriteIntentLog.examine(path: bitmapPath).bitmap.dirtyCount) != 0, ContinuousClock.now < deadline {
                try await Task.sleep(nanoseconds: 20_000_000)
            }
            #expect(try WriteIntentLog.examine(path: bitmapPath).bitmap.dirtyCount == 0, "the bitmap never came back clean")
        }

        if moment == .duringTheRecovery { #expect(mirror.status.state == .recovering, "the recovery ended before the cut") }

        // The cut: both legs at once, then the bitmap file as the cut left it (a copy of the page
        // cache: the bitmap file itself is not behind the power cut).
        source.cut()
        target.cut()
        try FileManager.default.copyItem(atPath: bitmapPath, toPath: snapshotPath)
        try await source.discardVolatileWrites()
        try await target.discardVolatileWrites()
        try? await mirror.close()
        return journal
    }

}
