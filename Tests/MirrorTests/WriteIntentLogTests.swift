import Foundation
import Testing
@testable import Mirror

/// The persisted write-intent bitmap on a real file: round trips, and refusal of a bitmap that
/// belongs to other devices (invariant 4: a restart resumes from the right bitmap, or not at all).
@Suite struct WriteIntentLogTests {
    let identity = WriteIntentLog.Identity(deviceSize: (3 << 30) + 4096, regionSize: 1 << 20, source: "/dev/old", target: "/dev/new")

    func scratchPath() -> String { "/var/tmp/bitmap-test-\(UUID().uuidString)" }

    /// Bits set and persisted (page-wise) survive closing and reopening; so does a whole save.
    @Test func persistedBitsSurviveReopen() throws {
        let path = scratchPath()
        defer { unlink(path) }
        var bitmap = RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, allDirty: false)
        do {
            let log = try WriteIntentLog.create(path: path, identity: identity, bitmap: bitmap)
            bitmap.setDirty(3)
            bitmap.setDirty(3072)  // the short last region
            try log.persist(regions: [3, 3072], of: bitmap)
        }
        let (_, reloaded) = try WriteIntentLog.open(path: path, expecting: identity)
        #expect(reloaded == bitmap)
        #expect(reloaded.dirtyCount == 2)

        let (log, _) = try WriteIntentLog.open(path: path, expecting: identity)
        bitmap.setClean(3)
        try log.save(bitmap)
        #expect(try WriteIntentLog.open(path: path, expecting: identity).1.dirtyCount == 1)
    }

    /// A bitmap written for other devices or another region size is refused, naming both.
    @Test func foreignBitmapIsRefused() throws {
        let path = scratchPath()
        defer { unlink(path) }
        _ = try WriteIntentLog.create(path: path, identity: identity,
                                      bitmap: RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, allDirty: true))
        var other = identity
        other.target = "/dev/other"
        let error = #expect(throws: WriteIntentLog.Failure.self) { try WriteIntentLog.open(path: path, expecting: other) }
        #expect(error?.description.contains("/dev/new") == true)
        #expect(error?.description.contains("/dev/other") == true)
        other = identity
        other.regionSize = 64 << 10
        #expect(throws: WriteIntentLog.Failure.self) { try WriteIntentLog.open(path: path, expecting: other) }
    }

    /// A file that is not a bitmap, or a truncated one, is refused rather than read as clean.
    @Test func garbageIsRefused() throws {
        let path = scratchPath()
        defer { unlink(path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: 0, count: 8192))
        #expect(throws: WriteIntentLog.Failure.self) { try WriteIntentLog.open(path: path, expecting: identity) }
        _ = try WriteIntentLog.create(path: path, identity: identity,
                                      bitmap: RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, allDirty: true))
        truncate(path, 4096 + 8)
        #expect(throws: WriteIntentLog.Failure.self) { try WriteIntentLog.open(path: path, expecting: identity) }
    }

    /// The bitmap of a degraded mirror (target "missing") is adopted when a target is given, with
    /// every region dirty: the new target lacks everything.
    @Test func degradedBitmapIsAdoptedByANewTarget() throws {
        let path = scratchPath()
        defer { unlink(path) }
        var degraded = identity
        degraded.target = WriteIntentLog.missingTarget
        var bitmap = RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, allDirty: false)
        bitmap.setDirty(1)
        _ = try WriteIntentLog.create(path: path, identity: degraded, bitmap: bitmap)
        let (_, adopted) = try WriteIntentLog.open(path: path, expecting: identity)
        #expect(adopted.dirtyCount == adopted.regionCount)
        #expect(try WriteIntentLog.open(path: path, expecting: identity).1.dirtyCount == adopted.regionCount)
    }
}
