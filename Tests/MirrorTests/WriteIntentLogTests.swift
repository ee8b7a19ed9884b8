import BlockIO
import Foundation
import Testing
@testable import Mirror

/// The persisted write-intent bitmap on real files (invariants 4 and 8): bits survive a crash, and
/// a bitmap that is damaged, stale, foreign, or whose legs were written or replaced since is
/// refused or distrusted — never read back as "in sync".
@Suite struct WriteIntentLogTests {
    /// A file whose newer header slot claims the last generation (with a valid checksum): that slot
    /// is refused, the other one is used, and saving goes on from it. Before, the daemon resuming
    /// from such a file trapped at its first save (the generation overflowed).
    @Test func aHeaderAtTheLastGenerationIsNotUsed() throws {
        let legs = try Legs()
        try legs.cleanStop(dirty: [5])
        // Slot 1 (odd generations) rewritten with the slot-0 header at generation 2^64 - 1.
        let file = try FileDescriptor.open(legs.bitmap, flags: O_RDWR).get()
        defer { file.close() }
        var slot0 = [UInt8](repeating: 0, count: BitmapFileFormat.headerSlotSize)
        _ = slot0.withUnsafeMutableBytes { file.read(into: $0, at: 0) }
        var last = try BitmapFileFormat.decodeHeader(slot0)
        last.generation = .max
        let forged = try BitmapFileFormat.encode(last)
        _ = forged.withUnsafeBytes { file.writeAll($0, at: UInt64(BitmapFileFormat.headerSlotSize)) }

        let valid = try BitmapFileFormat.decodeHeader(slot0).generation
        #expect(try WriteIntentLog.examine(path: legs.bitmap).header.generation == valid)
        let opened = try legs.open()
        #expect(opened.bitmap.isDirty(5), "the bits of the valid slot's generation are read")
        try opened.log.save(opened.bitmap)
        let examined = try WriteIntentLog.examine(path: legs.bitmap)
        #expect(examined.header.generation > valid && examined.header.generation < .max, "the saves went on from the valid slot")
        #expect(examined.bitmap.isDirty(5) && examined.notes.isEmpty, "\(examined.notes)")
    }

    /// A scratch directory with a source and a target file of `size` bytes.
    final class Legs {
        let dir = "/var/tmp/bitmap-test-\(UUID().uuidString)"
        var source: String { dir + "/old.img" }
        var target: String { dir + "/new.img" }
        var bitmap: String { dir + "/bitmap" }
        let size: UInt64

        init(size: UInt64 = (3 << 30) + 4096) throws {
            self.size = size
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for path in [source, target] { try Self.makeFile(path, size: size) }
        }

        deinit { try? FileManager.default.removeItem(atPath: dir) }

        static func makeFile(_ path: String, size: UInt64) throws {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            guard truncate(path, off_t(size)) == 0 else { throw Errno.current }
        }

        func identity(_ path: String) throws -> LegIdentity {
            let fd = try FileDescriptor.open(path, flags: O_RDONLY).get()
            defer { fd.close() }
            return try LegIdentity.of(fd, path: path).get()
        }

        func trace(_ path: String) throws -> LegWriteTrace {
            let fd = try FileDescriptor.open(path, flags: O_RDONLY).get()
            defer { fd.close() }
            return LegWriteTrace.of(fd, size: size)
        }

        /// What a mirror daemon does at start: open (or create) the bitmap for the source.
        func open(regionSize: UInt64? = 1 << 20) throws(WriteIntentLog.Failure) -> WriteIntentLog.Opened {
            let identity = try! self.identity(source), trace = try! self.trace(source)
            return try WriteIntentLog.openOrCreate(path: bitmap, source: identity, sourceTrace: trace, deviceSize: size,
                                                   regionSize: regionSize, defaultRegionSize: 1 << 20)
        }

        /// A bitmap that recorded the target and stopped cleanly with `dirty` regions set.
        func cleanStop(dirty: [Int] = []) throws {
            let opened = try open()
            var bitmap = RegionBitmap(deviceSize: size, regionSize: 1 << 20, allDirty: false)
            for region in dirty { bitmap.setDirty(region) }
            try opened.log.attach(target: identity(target), bitmap: bitmap)
            try opened.log.saveStopped(bitmap, sourceTrace: trace(source), targetTrace: trace(target))
        }

        func verdictForTarget(_ log: WriteIntentLog) throws -> BitmapTrust.Verdict {
            log.verdict(forTarget: try identity(target), trace: try trace(target))
        }
    }

    /// Bits set and persisted page-wise survive a crash (no clean stop); so does a whole save; the
    /// target that was attached is trusted again after the crash.
    @Test func persistedBitsSurviveACrash() throws {
        let legs = try Legs(size: (40 << 30) + 4096)  // 40961 regions on two pages
        var bitmap = RegionBitmap(deviceSize: legs.size, regionSize: 1 << 20, allDirty: false)
        do {
            let opened = try legs.open()
            #expect(!opened.resumed && opened.bitmap.dirtyCount == opened.bitmap.regionCount)
            try opened.log.attach(target: legs.identity(legs.target), bitmap: bitmap)
            bitmap.setDirty(3)
            bitmap.setDirty(40_000)  // on the second page
            bitmap.setDirty(40_960)  // the short last region
            try opened.log.persist(regions: [3, 40_000, 40_960], of: bitmap)
        }
        let reopened = try legs.open()
        #expect(reopened.resumed && reopened.notes.isEmpty)
        #expect(reopened.bitmap == bitmap)
        #expect(try legs.verdictForTarget(reopened.log) == .trust(note: nil))
        bitmap.setClean(3)
        try reopened.log.save(bitmap)
        _ = consume reopened
        #expect(try legs.open().bitmap.dirtyCount == 2)
    }

    /// A bitmap of another source is refused, naming both; a target other than the recorded one
    /// gets everything copied.
    @Test func foreignSourceIsRefusedAndAnotherTargetCopiesEverything() throws {
        let legs = try Legs()
        try legs.cleanStop()
        let other = legs.dir + "/other.img"
        try Legs.makeFile(other, size: legs.size)
        let error = #expect(throws: WriteIntentLog.Failure.self) {
            try WriteIntentLog.openOrCreate(path: legs.bitmap, source: try legs.identity(other), sourceTrace: try legs.trace(other),
                                            deviceSize: legs.size, regionSize: nil, defaultRegionSize: 1 << 20)
        }
        #expect(error?.description.contains(legs.source) == true && error?.description.contains(other) == true,
                "\(String(describing: error))")
        let opened = try legs.open()
        guard case .copyAll(let why) = opened.log.verdict(forTarget: try legs.identity(other), trace: try legs.trace(other)) else {
            Issue.record("another target was trusted")
            return
        }
        #expect(why.contains(other))
        #expect(try legs.verdictForTarget(opened.log) == .trust(note: nil))
    }

    /// Another region size or device size is refused with what to do; without --region-size the
    /// file's is used.
    @Test func geometryMismatchIsRefused() throws {
        let legs = try Legs()
        try legs.cleanStop()
        let error = #expect(throws: WriteIntentLog.Failure.self) { try legs.open(regionSize: 64 << 10) }
        #expect(error?.description.contains("--region-size 1048576") == true, "\(String(describing: error))")
        #expect(try legs.open(regionSize: nil).log.regionSize == 1 << 20)
    }

    /// Whatever writes a leg between a clean stop and the next start leaves a trace the bitmap
    /// sees: every region is copied, and the notes say why.
    @Test func writesOutsideTheMirrorAfterACleanStopDistrustTheBits() throws {
        let legs = try Legs()
        try legs.cleanStop()
        #expect(try legs.open().notes.isEmpty)
        try legs.cleanStop()
        // The source is written by someone else (blockmirror serve OLD, a degraded run without it).
        try corrupt(legs.source, offset: 4096, count: 512)
        let opened = try legs.open()
        #expect(opened.bitmap.dirtyCount == opened.bitmap.regionCount)
        #expect(opened.notes.contains { $0.contains("the source \(legs.source) was written outside the mirror") }, "\(opened.notes)")
        _ = consume opened

        try legs.cleanStop()
        try corrupt(legs.target, offset: 8192, count: 512)
        guard case .copyAll(let why) = try legs.verdictForTarget(try legs.open().log) else {
            Issue.record("a target written outside the mirror was trusted")
            return
        }
        #expect(why.contains("was written outside the mirror"), "\(why)")
    }

    /// A target re-created (or replaced by an empty file) since the bitmap was written gets every
    /// region copied, after a clean stop and after a crash alike.
    @Test func replacedTargetCopiesEverything() throws {
        let legs = try Legs()
        try legs.cleanStop()
        unlink(legs.target)
        try Legs.makeFile(legs.target, size: legs.size)
        guard case .copyAll(let why) = try legs.verdictForTarget(try legs.open().log) else {
            Issue.record("a re-created target was trusted")
            return
        }
        #expect(why.contains("replaced"), "\(why)")

        // A crash while attached (no clean stop): the identity still tells.
        let crashed = try legs.open()
        try crashed.log.attach(target: legs.identity(legs.target), bitmap: RegionBitmap(deviceSize: legs.size, regionSize: 1 << 20, allDirty: false))
        _ = consume crashed
        unlink(legs.target)
        try Legs.makeFile(legs.target, size: legs.size)
        guard case .copyAll = try legs.verdictForTarget(try legs.open().log) else {
            Issue.record("a target re-created after a crash was trusted")
            return
        }
    }

    /// A target removed from the running mirror is never trusted again by these bits.
    @Test func removedTargetIsNotTrusted() throws {
        let legs = try Legs()
        let opened = try legs.open()
        let bitmap = RegionBitmap(deviceSize: legs.size, regionSize: 1 << 20, allDirty: false)
        try opened.log.attach(target: legs.identity(legs.target), bitmap: bitmap)
        try opened.log.detachTarget(bitmap: bitmap)
        guard case .copyAll(let why) = try legs.verdictForTarget(opened.log) else {
            Issue.record("a removed target was trusted")
            return
        }
        #expect(why.contains("removed"))
    }

    /// Zeroed or flipped bits fail their page's checksum: those regions come back dirty, said so;
    /// the other page is read as it was.
    @Test func damagedPagesComeBackDirty() throws {
        let legs = try Legs(size: 64 << 30)  // 65536 regions: three pages
        try legs.cleanStop(dirty: [5, 40_000])
        let page1 = UInt64(BitmapFileFormat.pagesOffset + BitmapFileFormat.pageSize)
        // Region 40000's word (the bit area of page 1) zeroed; a flipped byte in page 2.
        let word = UInt64(BitmapFileFormat.pageHeaderSize + (40_000 / 64 - BitmapFileFormat.wordsPerPage) * 8)
        try writeBytes(legs.bitmap, at: page1 + word, Data(repeating: 0, count: 8))
        try corrupt(legs.bitmap, offset: page1 + UInt64(BitmapFileFormat.pageSize) + 100, count: 1)
        let opened = try legs.open()
        let regionsPerPage = BitmapFileFormat.wordsPerPage * 64
        #expect(opened.bitmap.isDirty(5) && !opened.bitmap.isDirty(6))
        #expect(opened.bitmap.dirtyCount == 1 + (opened.bitmap.regionCount - regionsPerPage))
        #expect(opened.notes.first?.contains("2 of 3 bitmap pages failed their checks") == true, "\(opened.notes)")
    }

    /// A damaged header slot leaves the other one; both damaged, or garbage, or a truncated
    /// header, is refused with a clear reason; a FIFO is named as such; an empty file starts over.
    @Test func damagedOrForeignFilesAreRefusedClearly() throws {
        let legs = try Legs()
        try legs.cleanStop(dirty: [7])
        // The newest slot is torn: the older one (of the previous save) is used.
        let newest = try legs.open()
        _ = consume newest
        for slot in 0..<2 {
            let copy = legs.dir + "/copy"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: legs.bitmap, toPath: copy)
            try corrupt(copy, offset: UInt64(slot * BitmapFileFormat.headerSlotSize + 300), count: 1)
            let opened = try WriteIntentLog.openOrCreate(path: copy, source: legs.identity(legs.source), sourceTrace: legs.trace(legs.source),
                                                         deviceSize: legs.size, regionSize: nil, defaultRegionSize: 1 << 20)
            #expect(opened.bitmap.isDirty(7) && opened.bitmap.dirtyCount == 1)
        }
        try corrupt(legs.bitmap, offset: 300, count: 1)
        try corrupt(legs.bitmap, offset: UInt64(BitmapFileFormat.headerSlotSize) + 300, count: 1)
        let both = #expect(throws: WriteIntentLog.Failure.self) { try legs.open() }
        #expect(both?.description.contains("checksum mismatch") == true, "\(String(describing: both))")

        _ = FileManager.default.createFile(atPath: legs.bitmap, contents: Data(repeating: 0x41, count: 40_000))
        let garbage = #expect(throws: WriteIntentLog.Failure.self) { try legs.open() }
        #expect(garbage?.description.contains("bad magic") == true, "\(String(describing: garbage))")
        var version1 = Data(repeating: 0, count: 8192)
        version1.replaceSubrange(0..<12, with: [0x42, 0x4d, 0x4d, 0x49, 0x54, 0x42, 0x4d, 0x31, 1, 0, 0, 0])
        _ = FileManager.default.createFile(atPath: legs.bitmap, contents: version1)
        let old = #expect(throws: WriteIntentLog.Failure.self) { try legs.open() }
        #expect(old?.description.contains("version 1 bitmaps carry no checksums") == true, "\(String(describing: old))")
        _ = FileManager.default.createFile(atPath: legs.bitmap, contents: Data(repeating: 0, count: 100))
        let short = #expect(throws: WriteIntentLog.Failure.self) { try legs.open() }
        #expect(short?.description.contains("truncated") == true, "\(String(describing: short))")

        unlink(legs.bitmap)
        mkfifo(legs.bitmap, 0o600)
        let fifo = #expect(throws: WriteIntentLog.Failure.self) { try legs.open() }
        #expect(fifo?.description == "bitmap \(legs.bitmap): is a FIFO, not a bitmap file")

        unlink(legs.bitmap)
        _ = FileManager.default.createFile(atPath: legs.bitmap, contents: Data())
        let fresh = try legs.open()
        #expect(!fresh.resumed && fresh.bitmap.dirtyCount == fresh.bitmap.regionCount && !fresh.notes.isEmpty)
    }

    /// One mirror per bitmap file.
    @Test func aBitmapInUseIsRefused() throws {
        let legs = try Legs()
        let first = try legs.open()
        let error = #expect(throws: WriteIntentLog.Failure.self) { try legs.open() }
        #expect(error?.description.contains("in use by another mirror") == true)
        _ = consume first
        _ = try legs.open()
    }

    /// What creations cut short by a kill -9 left (`bitmap.new-PID`) is removed at the next
    /// creation: one named for this very pid (a pid reused after a reboot made the creation fail
    /// with "File exists" before) and one of a process that is gone; a live process's is kept.
    @Test func abandonedTemporariesAreRemovedAtTheNextCreation() throws {
        let legs = try Legs()
        let ours = legs.bitmap + ".new-\(getpid())", gone = legs.bitmap + ".new-\(try Self.exitedPid())", live = legs.bitmap + ".new-1"
        for path in [ours, gone, live] { try Legs.makeFile(path, size: 4096) }
        let opened = try legs.open()
        #expect(!opened.resumed)
        #expect(!FileManager.default.fileExists(atPath: ours) && !FileManager.default.fileExists(atPath: gone))
        #expect(FileManager.default.fileExists(atPath: live))
        #expect(try WriteIntentLog.examine(path: legs.bitmap).header.deviceSize == legs.size)
    }

    /// The pid of a child that has exited and been reaped.
    private static func exitedPid() throws -> pid_t {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        return child.processIdentifier
    }

    /// A file that cannot be created whole (ENOSPC) leaves nothing behind for the next start.
    @Test func failedCreationLeavesNoFile() throws {
        let legs = try Legs()
        let small = legs.dir + "/small"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        guard mountTmpfs(at: small, size: "8k") else {
            Issue.record("cannot mount a tmpfs at \(small)")
            return
        }
        defer { umount(small) }
        let path = small + "/bitmap"
        let error = #expect(throws: WriteIntentLog.Failure.self) {
            try WriteIntentLog.openOrCreate(path: path, source: legs.identity(legs.source), sourceTrace: legs.trace(legs.source),
                                            deviceSize: legs.size, regionSize: nil, defaultRegionSize: 1 << 20)
        }
        #expect(error?.description.contains("No space left on device") == true, "\(String(describing: error))")
        #expect(try FileManager.default.contentsOfDirectory(atPath: small).isEmpty)
    }
}

/// Writes `data` at `offset` of a file, durably.
func writeBytes(_ path: String, at offset: UInt64, _ data: Data) throws {
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    try handle.write(contentsOf: data)
    try handle.synchronize()
}

/// Mounts a tmpfs of `size` at `path` (the tests run as root).
func mountTmpfs(at path: String, size: String) -> Bool {
    mount("tmpfs", path, "tmpfs", 0, "size=\(size)") == 0
}
