import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The persisted write-intent bitmap: a file holding one bit per region, set when the target may
/// differ from the source there (a copy is pending, or a write is or was in flight).
///
/// Bits are only ever *set* synchronously (the page holding them is written and `fdatasync`ed before
/// the caller may write data); clearing is lazy (whole-bitmap saves). After a crash the file is
/// therefore a superset of what may differ. The file protects itself and knows its legs
/// (`BitmapFileFormat`, `BitmapTrust`, invariant 8): checksummed header slots and pages, a
/// generation every save advances, the identity of both legs, and their write traces at a clean
/// stop, so a damaged, stale or foreign bitmap is refused or distrusted — never read as clean.
///
/// Not thread-safe: the mirror calls it from one serial queue.
public final class WriteIntentLog: @unchecked Sendable {
    /// Why a bitmap file cannot be used; names the file.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let reason: String
        public var description: String { "bitmap \(path): \(reason)" }
    }

    /// A bitmap file made ready for a mirror: its bits as far as they can be trusted, and what the
    /// user must be told about it (regions distrusted and why, what could not be checked).
    public struct Opened: @unchecked Sendable {
        public let log: WriteIntentLog
        public let bitmap: RegionBitmap
        /// Whether the file existed (false: created now, every region dirty).
        public let resumed: Bool
        public let notes: [String]
    }

    public let path: String
    private let fd: FileDescriptor
    private var header: BitmapFileFormat.Header
    private let wordCount: Int
    /// Set when the file's record can no longer be vouched for: every save and page write fails with it.
    private var unusable: String?

    /// Bytes per region.
    public var regionSize: UInt64 { header.regionSize }
    /// The target the bits describe, as recorded.
    public var recordedTarget: BitmapFileFormat.LegRecord? { header.record.target }
    /// What the file records of the legs and their roles.
    public var record: BitmapFileFormat.Record { header.record }

    private init(path: String, fd: FileDescriptor, header: BitmapFileFormat.Header) {
        self.path = path; self.fd = fd; self.header = header
        wordCount = RegionBitmap(deviceSize: header.deviceSize, regionSize: header.regionSize, allDirty: false).words.count
    }

    deinit { fd.close() }

    private func failure(_ reason: String) -> Failure { Failure(path: path, reason: reason) }
    private static func failure(_ path: String, _ reason: String) -> Failure { Failure(path: path, reason: reason) }

    // MARK: Opening

    /// Opens the bitmap at `path` for a mirror of `source`, or creates it (every region dirty) when
    /// there is none or the file is empty. An existing file must be a valid bitmap of this source
    /// and geometry (`regionSize` nil: the file's); pages that fail their checks, and every region
    /// when the source shows writes since a clean stop, come back dirty, and `notes` say so. The
    /// file is marked in use before this returns.
    public static func openOrCreate(path: String, source: LegIdentity, sourceTrace: LegWriteTrace, deviceSize: UInt64,
                                    regionSize: UInt64?, defaultRegionSize: UInt64) throws(Failure) -> Opened {
        var info = stat()
        if stat(path, &info) != 0 {
            guard errno == ENOENT else { throw failure(path, "cannot open: \(Errno.current)") }
            let log = try create(path: path, source: source, deviceSize: deviceSize, regionSize: regionSize ?? defaultRegionSize)
            return Opened(log: log, bitmap: log.allDirty, resumed: false, notes: [])
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw failure(path, "is \(fileType(info.st_mode)), not a bitmap file")
        }
        if info.st_size == 0 {
            // An empty file holds nothing to trust: start over, as without a file.
            let log = try create(path: path, source: source, deviceSize: deviceSize, regionSize: regionSize ?? defaultRegionSize)
            return Opened(log: log, bitmap: log.allDirty, resumed: false, notes: ["the file was empty: every region is copied"])
        }
        return try open(path: path, source: source, sourceTrace: sourceTrace, deviceSize: deviceSize, regionSize: regionSize)
    }

    /// Creates a bitmap file with every region dirty, durably and atomically: written beside
    /// `path` and renamed over it, so a failure (say ENOSPC) leaves no partial file behind.
    static func create(path: String, source: LegIdentity, deviceSize: UInt64, regionSize: UInt64) throws(Failure) -> WriteIntentLog {
        var fileID = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for index in fileID.indices { fileID[index] = generator.next() }
        let header = BitmapFileFormat.Header(generation: 0, fileID: fileID, deviceSize: deviceSize, regionSize: regionSize,
                                             state: .inUse, record: BitmapFileFormat.Record(source: .init(identity: source)))
        removeAbandonedTemporaries(of: path)
        let temporary = "\(path).new-\(getpid())"
        let fd: FileDescriptor
        switch FileDescriptor.open(temporary, flags: O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600) {
        case .success(let opened): fd = opened
        case .failure(let errno): throw failure(path, "cannot create \(temporary): \(errno)")
        }
        let log = WriteIntentLog(path: path, fd: fd, header: header)
        do {
            try log.lock()
            try log.writeHeader()
            try log.writePages(log.allDirty.words, generation: 0)
            try log.sync()
        } catch {
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let error = Errno.current
            unlink(temporary)
            throw failure(path, "cannot rename \(temporary) to it: \(error)")
        }
        syncDirectory(of: path)
        return log
    }

    /// Removes the temporaries of creations that a kill -9 or a crash cut short (`path.new-PID`):
    /// never read, but one named for this process's pid (after a reboot) would make the creation
    /// fail on O_EXCL. One whose process lives on, or whose lock is held (a creation running), is
    /// left alone.
    private static func removeAbandonedTemporaries(of path: String) {
        let directory = (path as NSString).deletingLastPathComponent
        let prefix = (path as NSString).lastPathComponent + ".new-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory) else { return }
        for name in names where name.hasPrefix(prefix) {
            guard let pid = pid_t(name.dropFirst(prefix.count)), pid > 0 else { continue }
            guard pid == getpid() || (kill(pid, 0) != 0 && errno == ESRCH) else { continue }
            let file = directory.isEmpty ? name : directory + "/" + name
            guard case .success(let fd) = FileDescriptor.open(file, flags: O_RDONLY | O_NOFOLLOW) else { continue }
            if case .success = fd.lock(exclusive: true) { unlink(file) }
            fd.close()
        }
    }

    /// Opens an existing file (see `openOrCreate`).
    static func open(path: String, source: LegIdentity, sourceTrace: LegWriteTrace, deviceSize: UInt64,
                     regionSize: UInt64?) throws(Failure) -> Opened {
        let log = try existing(path, flags: O_RDWR)
        let header = log.header
        try log.lock()
        guard header.deviceSize == deviceSize else {
            throw failure(path, "it was written for a source of \(header.deviceSize) bytes; \(source.path) has \(deviceSize) bytes")
        }
        if let regionSize, regionSize != header.regionSize {
            throw failure(path, "it has regions of \(header.regionSize) bytes, not \(regionSize): "
                          + "give --region-size \(header.regionSize), or remove the file to copy everything")
        }
        var (bitmap, notes) = log.readPages()
        switch BitmapTrust.source(recorded: header.record.source, identity: source, trace: sourceTrace, stopped: header.record.stopped) {
        case .refuse(let why):
            guard let switched = header.record.switched else { throw failure(path, why) }
            throw failure(path, Self.notTheSwitchedSource(header.record, given: source, switched: switched))
        case .copyAll(let why):
            bitmap.setAll()
            notes.append(why)
        case .trust(let note):
            if let note { notes.append(note) }
        }
        // From now on the file is in use: a crash leaves it so, and its source trace is void.
        log.header.state = .inUse
        log.header.record.source = .init(identity: source)
        log.header.record.stopped = nil
        try log.save(bitmap)
        return Opened(log: log, bitmap: bitmap, resumed: true, notes: notes)
    }

    /// Why `given` cannot be the source of a mirror whose roles switched at `switched`, and what
    /// to start instead: removing the file (the usual way out of a foreign bitmap) would serve a
    /// leg that lacks the writes made since the switch.
    static func notTheSwitchedSource(_ record: BitmapFileFormat.Record, given: LegIdentity, switched: String) -> String {
        let serving = record.source.identity.path
        let retired = record.retired.map { $0.identity.differences(from: given).isEmpty } ?? false
        let other = record.target?.identity.path ?? record.retired?.identity.path
        return "the roles switched at \(switched) (complete or reverse): \(serving) serves, not \(given.path)"
            + (retired ? ", which was retired then and lacks every write made since" : "")
            + "; start with --source \(serving)" + (record.target.map { " --target \($0.identity.path)" } ?? "")
            + (other.map { " (or with the build's command line, --source \($0) --target \(serving))" } ?? "")
            + "; do not remove the bitmap file, which knows what the other leg lacks"
    }

    /// What a bitmap file holds, read without using it (no lock, nothing written): for
    /// `blockmirror examine`, like `mdadm --examine-bitmap`.
    public struct Examined: Sendable {
        public let header: BitmapFileFormat.Header
        public let bitmap: RegionBitmap
        /// Pages that failed their checks (their regions are shown dirty).
        public let notes: [String]
    }

    /// Reads the bitmap file at `path` as it is.
    public static func examine(path: String) throws(Failure) -> Examined {
        let log = try existing(path, flags: O_RDONLY)
        let (bitmap, notes) = log.readPages()
        return Examined(header: log.header, bitmap: bitmap, notes: notes)
    }

    /// An existing file opened with `flags`, its newest valid header read.
    private static func existing(_ path: String, flags: Int32) throws(Failure) -> WriteIntentLog {
        let fd: FileDescriptor
        switch FileDescriptor.open(path, flags: flags | O_NONBLOCK) {
        case .success(let opened): fd = opened
        case .failure(let errno): throw failure(path, "cannot open: \(errno)")
        }
        do { return WriteIntentLog(path: path, fd: fd, header: try readHeader(fd, path: path)) } catch {
            fd.close()
            throw error
        }
    }

    /// The valid header slot of the highest generation.
    private static func readHeader(_ fd: FileDescriptor, path: String) throws(Failure) -> BitmapFileFormat.Header {
        var problems: [String] = []
        var best: BitmapFileFormat.Header?
        for slot in 0..<BitmapFileFormat.headerSlots {
            var bytes = [UInt8](repeating: 0, count: BitmapFileFormat.headerSlotSize)
            let offset = UInt64(slot * BitmapFileFormat.headerSlotSize)
            let count: Int
            switch bytes.withUnsafeMutableBytes({ fd.read(into: $0, at: offset) }) {
            case .success(let n): count = n
            case .failure(let errno): throw failure(path, "cannot read: \(errno)")
            }
            do throws(BitmapFileFormat.Invalid) {
                let header = try BitmapFileFormat.decodeHeader(Array(bytes[0..<count]))
                guard header.slot == slot else { throw BitmapFileFormat.Invalid(description: "generation \(header.generation) in the wrong slot") }
                if best.map({ header.generation > $0.generation }) ?? true { best = header }
            } catch {
                problems.append("header \(slot): \(error)")
            }
        }
        guard let best else { throw failure(path, "not a usable bitmap (\(problems.joined(separator: "; ")))") }
        return best
    }

    /// The pages' bits; a page that is missing or fails its checks makes its regions dirty.
    private func readPages() -> (RegionBitmap, [String]) {
        var words = [UInt64](repeating: 0, count: wordCount)
        var bad: [(page: Int, why: String)] = []
        let pages = BitmapFileFormat.pageCount(words: wordCount)
        for page in 0..<pages {
            let first = page * BitmapFileFormat.wordsPerPage
            let count = min(BitmapFileFormat.wordsPerPage, wordCount - first)
            var bytes = [UInt8](repeating: 0, count: BitmapFileFormat.pageSize)
            let offset = UInt64(BitmapFileFormat.pagesOffset + page * BitmapFileFormat.pageSize)
            let read = bytes.withUnsafeMutableBytes { fd.read(into: $0, at: offset) }
            do throws(BitmapFileFormat.Invalid) {
                guard case .success(let n) = read else { throw BitmapFileFormat.Invalid(description: "unreadable") }
                let decoded = try BitmapFileFormat.decodePage(Array(bytes[0..<n]), index: page, wordCount: count,
                                                              fileID: header.fileID, generation: header.generation)
                words.replaceSubrange(first..<first + count, with: decoded)
            } catch {
                words.replaceSubrange(first..<first + count, with: repeatElement(~0, count: count))
                bad.append((page, error.description))
            }
        }
        let bitmap = RegionBitmap(deviceSize: header.deviceSize, regionSize: header.regionSize, words: words)
        guard !bad.isEmpty else { return (bitmap, []) }
        let regionsPerPage = BitmapFileFormat.wordsPerPage * 64
        let listed = bad.prefix(8).map { entry in
            let last = min((entry.page + 1) * regionsPerPage, bitmap.regionCount) - 1
            return "page \(entry.page) (regions \(entry.page * regionsPerPage)-\(last)): \(entry.why)"
        }
        let more = bad.count > 8 ? " and \(bad.count - 8) more pages" : ""
        return (bitmap, ["\(bad.count) of \(pages) bitmap pages failed their checks (\(listed.joined(separator: "; "))\(more)): "
                         + "their regions are copied"])
    }

    // MARK: The legs

    /// Whether the bits may be kept for `target` (`BitmapTrust.target`): against the recorded
    /// target, or with none, the leg `complete` retired (the bits mark what it missed since).
    public func verdict(forTarget target: LegIdentity, trace: LegWriteTrace) -> BitmapTrust.Verdict {
        if header.record.target == nil, let retired = header.record.retired {
            return BitmapTrust.target(recorded: retired, identity: target, trace: trace, stopped: nil, retiredAt: header.record.switched)
        }
        return BitmapTrust.target(recorded: header.record.target, identity: target, trace: trace, stopped: header.record.stopped)
    }

    /// Records an attached target, with `bitmap` as it is now (every region dirty for a new one),
    /// durably before this returns: from now on its writes are the bits' business (and a retired
    /// leg, if any, is no longer what they describe).
    public func attach(target: LegIdentity, bitmap: RegionBitmap) throws(Failure) {
        header.record.target = .init(identity: target)
        header.record.retired = nil
        try save(bitmap)
    }

    /// Records that the target was removed from the running mirror (what it holds from now on is
    /// unknown, so it is never trusted again by these bits).
    public func detachTarget(bitmap: RegionBitmap) throws(Failure) {
        header.record.target?.detached = true
        try save(bitmap)
    }

    /// Records that the legs switch roles (`complete`, `reverse`), durably before this returns
    /// and so before the switch takes effect: `source` serves from now on, `target` (if any) is
    /// its target, `retired` (if any) is no longer used. `bitmap` is the bits as they are now.
    /// If the save fails, the record is put back as it was and saved again (the switch does not
    /// happen, so later saves must not record it); if that fails too, the file may name either
    /// leg as the source, and every later save and page write fails, so no write is acknowledged
    /// that a restart could then lose.
    public func switchRoles(source: LegIdentity, target: BitmapFileFormat.LegRecord?, retired: BitmapFileFormat.LegRecord?,
                            bitmap: RegionBitmap) throws(Failure) {
        let before = header.record
        header.record.source = .init(identity: source)
        header.record.target = target
        header.record.retired = retired
        header.record.switched = ISO8601DateFormatter().string(from: Date())
        do {
            try save(bitmap)
        } catch {
            header.record = before
            do { try save(bitmap) } catch {
                unusable = "a role switch could not be recorded nor undone (\(error.reason)): the file may name either leg as "
                    + "the source; stop the mirror and check which leg holds the latest data (blockmirror verify)"
            }
            throw error
        }
    }

    // MARK: Saving

    private var allDirty: RegionBitmap { RegionBitmap(deviceSize: header.deviceSize, regionSize: header.regionSize, allDirty: true) }

    /// Writes the whole bitmap under a new generation and makes it durable (lazy clearing).
    public func save(_ bitmap: RegionBitmap) throws(Failure) {
        if let unusable { throw failure(unusable) }
        header.generation += 1
        try writePages(bitmap.words, generation: header.generation)
        try writeHeader()
        try sync()
    }

    /// The last save of a clean stop: the bits, and the legs' write traces now that nothing more
    /// will be written, so a later start can tell writes made outside the mirror in between.
    public func saveStopped(_ bitmap: RegionBitmap, sourceTrace: LegWriteTrace, targetTrace: LegWriteTrace?) throws(Failure) {
        header.state = .stopped
        header.record.stopped = ISO8601DateFormatter().string(from: Date())
        header.record.source.trace = sourceTrace
        if let targetTrace { header.record.target?.trace = targetTrace }
        try save(bitmap)
    }

    /// Makes the words of `regions` durable as they are in `bitmap` (the pages holding them are
    /// written, then `fdatasync`). Call before writing data into a region whose bit was clear.
    public func persist(regions: [Int], of bitmap: RegionBitmap) throws(Failure) {
        if let unusable { throw failure(unusable) }
        for page in Set(regions.map(BitmapFileFormat.page(ofRegion:))).sorted() {
            try writePage(page, of: bitmap.words, generation: header.generation)
        }
        try sync()
    }

    private func writePages(_ words: [UInt64], generation: UInt64) throws(Failure) {
        for page in 0..<BitmapFileFormat.pageCount(words: words.count) { try writePage(page, of: words, generation: generation) }
    }

    private func writePage(_ page: Int, of words: [UInt64], generation: UInt64) throws(Failure) {
        let first = page * BitmapFileFormat.wordsPerPage
        let last = min(first + BitmapFileFormat.wordsPerPage, words.count)
        let bytes = BitmapFileFormat.encodePage(index: page, words: words[first..<last], generation: generation, fileID: header.fileID)
        let offset = UInt64(BitmapFileFormat.pagesOffset + page * BitmapFileFormat.pageSize)
        if case .failure(let errno) = bytes.withUnsafeBytes({ fd.writeAll($0, at: offset) }) { throw failure("cannot write: \(errno)") }
    }

    private func writeHeader() throws(Failure) {
        let bytes: [UInt8]
        do { bytes = try BitmapFileFormat.encode(header) } catch { throw failure(error.description) }
        let offset = UInt64(header.slot * BitmapFileFormat.headerSlotSize)
        if case .failure(let errno) = bytes.withUnsafeBytes({ fd.writeAll($0, at: offset) }) { throw failure("cannot write: \(errno)") }
    }

    private func sync() throws(Failure) {
        if case .failure(let errno) = fd.dataSync() { throw failure("fdatasync failed: \(errno)") }
    }

    /// One mirror per bitmap file: a second one would interleave its saves with the first's.
    private func lock() throws(Failure) {
        if case .failure(let errno) = fd.lock(exclusive: true) {
            throw failure(errno == .tryAgain ? "in use by another mirror" : "cannot lock: \(errno)")
        }
    }

    private static func syncDirectory(of path: String) {
        let directory = (path as NSString).deletingLastPathComponent
        if case .success(let dir) = FileDescriptor.open(directory.isEmpty ? "." : directory, flags: O_RDONLY) {
            _ = dir.dataSync()
            dir.close()
        }
    }

    private static func fileType(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: return "a FIFO"
        case S_IFDIR: return "a directory"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        default: return "not a regular file"
        }
    }
}
