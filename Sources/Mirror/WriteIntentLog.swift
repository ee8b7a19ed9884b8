import BlockIO
import Foundation

/// The persisted write-intent bitmap: a file holding one bit per region, set when the target may
/// differ from the source there (a copy is pending, or a write is or was in flight).
///
/// Layout: a 4 KiB header (magic, version, geometry, identity of source and target), then the bitmap
/// words, little-endian, region 0 in bit 0 of word 0. Bits are only ever *set* synchronously (the
/// page holding them is written and `fdatasync`ed before the caller may write data); clearing is
/// lazy (whole-bitmap saves). After a crash the file is therefore a superset of what may differ.
public final class WriteIntentLog: @unchecked Sendable {
    /// Why a bitmap file cannot be used.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let path: String
        public let reason: String
        public var description: String { "bitmap \(path): \(reason)" }
    }

    /// What the header records, checked on reopen so a bitmap is never applied to other devices.
    public struct Identity: Sendable, Equatable {
        public var deviceSize: UInt64
        public var regionSize: UInt64
        public var source: String
        public var target: String
        public init(deviceSize: UInt64, regionSize: UInt64, source: String, target: String) {
            self.deviceSize = deviceSize; self.regionSize = regionSize; self.source = source; self.target = target
        }
    }

    /// The target name of a degraded mirror's bitmap; such a bitmap is adopted by any target.
    public static let missingTarget = "missing"
    static let magic: UInt64 = 0x314d_4254_494d_4d42  // "BMMITBM1" little-endian
    static let version: UInt32 = 1
    static let headerSize = 4096
    static let pageSize = 4096

    public let path: String
    /// The devices and geometry the bitmap is for (the target changes when one is attached).
    public private(set) var identity: Identity
    private let fd: FileDescriptor

    private init(path: String, identity: Identity, fd: FileDescriptor) {
        self.path = path; self.identity = identity; self.fd = fd
    }

    deinit { fd.close() }

    /// Creates (or replaces) a bitmap file holding `bitmap`, durable when this returns.
    public static func create(path: String, identity: Identity, bitmap: RegionBitmap) throws(Failure) -> WriteIntentLog {
        let fd: FileDescriptor
        switch FileDescriptor.open(path, flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o600) {
        case .success(let opened): fd = opened
        case .failure(let errno): throw Failure(path: path, reason: "cannot create: \(errno)")
        }
        let log = WriteIntentLog(path: path, identity: identity, fd: fd)
        try log.writeHeader()
        try log.save(bitmap)
        // Make the new file's directory entry durable too.
        let directory = (path as NSString).deletingLastPathComponent
        if case .success(let dir) = FileDescriptor.open(directory.isEmpty ? "." : directory, flags: O_RDONLY) {
            _ = dir.dataSync()
            dir.close()
        }
        return log
    }

    /// Opens an existing bitmap file; refuses one written for other devices or another geometry.
    /// A degraded mirror's bitmap (target `missing`) is adopted for a new target, all regions dirty.
    public static func open(path: String, expecting identity: Identity) throws(Failure) -> (WriteIntentLog, RegionBitmap) {
        let fd: FileDescriptor
        switch FileDescriptor.open(path, flags: O_RDWR) {
        case .success(let opened): fd = opened
        case .failure(let errno): throw Failure(path: path, reason: "cannot open: \(errno)")
        }
        let log = WriteIntentLog(path: path, identity: identity, fd: fd)
        var header = [UInt8](repeating: 0, count: headerSize)
        let got = header.withUnsafeMutableBytes { fd.read(into: $0, at: 0) }
        guard case .success(let count) = got, count == headerSize else {
            throw Failure(path: path, reason: "truncated header")
        }
        let stored = try decodeHeader(header, path: path)
        var adopted = stored
        adopted.target = identity.target
        if stored != identity && stored.target == missingTarget && adopted == identity {
            // The bitmap of a degraded mirror, now given a target: the target lacks everything.
            let bitmap = RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, allDirty: true)
            try log.writeHeader()
            try log.save(bitmap)
            return (log, bitmap)
        }
        guard stored == identity else {
            throw Failure(path: path, reason: "written for \(stored.source) -> \(stored.target) (\(stored.deviceSize) bytes, "
                          + "regions of \(stored.regionSize)), not \(identity.source) -> \(identity.target) "
                          + "(\(identity.deviceSize) bytes, regions of \(identity.regionSize))")
        }
        var bitmap = RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, allDirty: false)
        var words = [UInt64](repeating: 0, count: bitmap.words.count)
        let bytes = words.count * 8
        let read = words.withUnsafeMutableBytes { fd.read(into: $0, at: UInt64(headerSize)) }
        guard case .success(let n) = read, n == bytes else { throw Failure(path: path, reason: "truncated bitmap") }
        bitmap = RegionBitmap(deviceSize: identity.deviceSize, regionSize: identity.regionSize, words: words.map { UInt64(littleEndian: $0) })
        return (log, bitmap)
    }

    /// Records a newly attached target: the header names it and every region is dirty, durably
    /// before this returns (the new target lacks everything).
    public func adopt(target: String, bitmap: RegionBitmap) throws(Failure) {
        identity.target = target
        try writeHeader()
        try save(bitmap)
    }

    private func writeHeader() throws(Failure) {
        var header = [UInt8](repeating: 0, count: Self.headerSize)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { header.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: $0) }
        }
        put(Self.magic, at: 0)
        put(Self.version, at: 8)
        put(identity.deviceSize, at: 16)
        put(identity.regionSize, at: 24)
        let source = Array(identity.source.utf8.prefix(1024)), target = Array(identity.target.utf8.prefix(1024))
        put(UInt32(source.count), at: 32)
        put(UInt32(target.count), at: 36)
        header.replaceSubrange(64..<64 + source.count, with: source)
        header.replaceSubrange(2048..<2048 + target.count, with: target)
        let result = header.withUnsafeBytes { fd.writeAll($0, at: 0) }
        if case .failure(let errno) = result { throw Failure(path: path, reason: "cannot write header: \(errno)") }
    }

    private static func decodeHeader(_ header: [UInt8], path: String) throws(Failure) -> Identity {
        func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
            header[offset..<offset + MemoryLayout<T>.size].withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
        }
        guard get(UInt64.self, at: 0) == magic else { throw Failure(path: path, reason: "not a BlockMirror bitmap (bad magic)") }
        guard get(UInt32.self, at: 8) == version else {
            throw Failure(path: path, reason: "unsupported version \(get(UInt32.self, at: 8))")
        }
        let sourceLength = min(Int(get(UInt32.self, at: 32)), 1024), targetLength = min(Int(get(UInt32.self, at: 36)), 1024)
        return Identity(deviceSize: get(UInt64.self, at: 16), regionSize: get(UInt64.self, at: 24),
                        source: String(decoding: header[64..<64 + sourceLength], as: UTF8.self),
                        target: String(decoding: header[2048..<2048 + targetLength], as: UTF8.self))
    }

    /// Writes the whole bitmap and makes it durable (used for lazy clearing and at stop).
    public func save(_ bitmap: RegionBitmap) throws(Failure) {
        try writeWords(bitmap.words, from: 0)
        try sync()
    }

    /// Makes the words of `regions` durable as they are in `bitmap` (the pages holding them are
    /// written, then `fdatasync`). Call before writing data into a region whose bit was clear.
    public func persist(regions: [Int], of bitmap: RegionBitmap) throws(Failure) {
        let wordsPerPage = Self.pageSize / 8
        var pages = Set<Int>()
        for region in regions { pages.insert((region >> 6) / wordsPerPage) }
        for page in pages.sorted() {
            let first = page * wordsPerPage
            let last = min(first + wordsPerPage, bitmap.words.count)
            try writeWords(Array(bitmap.words[first..<last]), from: first)
        }
        try sync()
    }

    private func writeWords(_ words: [UInt64], from firstWord: Int) throws(Failure) {
        let little = words.map(\.littleEndian)
        let result = little.withUnsafeBytes { fd.writeAll($0, at: UInt64(Self.headerSize + firstWord * 8)) }
        if case .failure(let errno) = result { throw Failure(path: path, reason: "cannot write: \(errno)") }
    }

    private func sync() throws(Failure) {
        if case .failure(let errno) = fd.dataSync() { throw Failure(path: path, reason: "fdatasync failed: \(errno)") }
    }
}
