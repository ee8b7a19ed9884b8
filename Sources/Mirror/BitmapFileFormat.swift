import BlockIO
import Foundation

/// The layout of a write-intent bitmap file, version 2: encoding and decoding only, no I/O, so the
/// reader can be fuzzed and tested on bytes.
///
///     [header slot 0: 16 KiB] [header slot 1: 16 KiB] [page 0: 4 KiB] [page 1] …
///
/// A header slot holds the magic, the version, the geometry, the file's random id, a generation
/// that every save advances, whether the mirror stopped cleanly, and a JSON record of both legs
/// (identity, and the write trace of a clean stop); its last 4 bytes are a CRC-32C of the rest.
/// Saves write the two slots in turn (even generations in slot 0), so a header torn by a crash
/// leaves the other, older one valid. A page holds 504 words of bits (32256 regions) behind its own
/// header: magic, CRC-32C, page index, generation and file id, so a page that is torn, zeroed,
/// flipped or from another file is recognised and its regions treated as dirty.
public enum BitmapFileFormat {
    static let magic: UInt64 = 0x314d_4254_494d_4d42  // "BMMITBM1" little-endian
    static let version: UInt32 = 2
    static let headerSlotSize = 16 << 10
    static let headerSlots = 2
    static let pageSize = 4096
    static let pageHeaderSize = 64
    static let pageMagic: UInt32 = 0x4750_4d42  // "BMPG"
    /// Bitmap words per page.
    public static let wordsPerPage = (pageSize - pageHeaderSize) / 8
    /// Where page 0 starts.
    public static let pagesOffset = headerSlotSize * headerSlots
    /// Longest JSON record a header slot holds.
    static let maximumRecordLength = headerSlotSize - 64 - 4

    /// How a mirror left the file.
    public enum State: UInt32, Sendable {
        /// A mirror uses it, or used it and ended without a clean stop (a crash).
        case inUse = 1
        /// The mirror stopped cleanly; the record holds the legs' write traces of that moment.
        case stopped = 2
    }

    /// What the file records of one leg.
    public struct LegRecord: Codable, Sendable, Equatable {
        public var identity: LegIdentity
        /// The leg's write trace at the clean stop it was last part of; nil once the leg is in use
        /// again (its writes since are the bitmap's business) or when it was never stopped with.
        public var trace: LegWriteTrace?
        /// The target was removed from a running mirror: what it holds since is unknown.
        public var detached: Bool?

        public init(identity: LegIdentity, trace: LegWriteTrace? = nil, detached: Bool? = nil) {
            self.identity = identity; self.trace = trace; self.detached = detached
        }
    }

    /// The legs, as the header's JSON record holds them.
    public struct Record: Codable, Sendable, Equatable {
        public var source: LegRecord
        /// The target the bits describe; nil until one is attached.
        public var target: LegRecord?
        /// When the mirror stopped cleanly (ISO 8601), for messages.
        public var stopped: String?
        /// When `complete` or `reverse` last switched the roles (ISO 8601): from then on `source`
        /// may be the leg the mirror was built with as its target, and a restart serves it.
        public var switched: String?
        /// The leg that served until `complete` (without `--keep-old`) retired it: no longer written,
        /// it holds what it held then (its write trace of that moment); the bits say what it misses.
        public var retired: LegRecord?

        public init(source: LegRecord, target: LegRecord? = nil, stopped: String? = nil, switched: String? = nil,
                    retired: LegRecord? = nil) {
            self.source = source; self.target = target; self.stopped = stopped; self.switched = switched; self.retired = retired
        }
    }

    /// One header slot.
    public struct Header: Sendable, Equatable {
        public var generation: UInt64
        /// 16 random bytes drawn when the file was created; every page carries them.
        public var fileID: [UInt8]
        public var deviceSize: UInt64
        public var regionSize: UInt64
        public var state: State
        public var record: Record

        public init(generation: UInt64, fileID: [UInt8], deviceSize: UInt64, regionSize: UInt64, state: State, record: Record) {
            self.generation = generation; self.fileID = fileID; self.deviceSize = deviceSize
            self.regionSize = regionSize; self.state = state; self.record = record
        }

        /// The slot a header of this generation is written to.
        var slot: Int { Int(generation % UInt64(BitmapFileFormat.headerSlots)) }
    }

    /// Why bytes are not a valid header slot or page.
    public struct Invalid: Error, CustomStringConvertible, Sendable, Equatable {
        public let description: String
    }

    /// Pages a bitmap of `wordCount` words takes.
    public static func pageCount(words wordCount: Int) -> Int { (wordCount + wordsPerPage - 1) / wordsPerPage }

    /// The byte size of a whole file holding `wordCount` words.
    public static func fileSize(words wordCount: Int) -> Int { pagesOffset + pageCount(words: wordCount) * pageSize }

    /// The page holding a region's bit.
    public static func page(ofRegion region: Int) -> Int { (region >> 6) / wordsPerPage }

    // MARK: Header

    /// A header slot's bytes; throws when the record does not fit (paths too long).
    public static func encode(_ header: Header) throws(Invalid) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let json = try? encoder.encode(header.record) else { throw Invalid(description: "cannot encode the legs' record") }
        guard json.count <= maximumRecordLength else {
            throw Invalid(description: "the legs' record (\(json.count) bytes) does not fit the header's \(maximumRecordLength) bytes: paths too long")
        }
        var bytes = [UInt8](repeating: 0, count: headerSlotSize)
        put(magic, into: &bytes, at: 0)
        put(version, into: &bytes, at: 8)
        put(UInt32(json.count), into: &bytes, at: 12)
        put(header.generation, into: &bytes, at: 16)
        bytes.replaceSubrange(24..<40, with: header.fileID.prefix(16) + [UInt8](repeating: 0, count: max(0, 16 - header.fileID.count)))
        put(header.deviceSize, into: &bytes, at: 40)
        put(header.regionSize, into: &bytes, at: 48)
        put(header.state.rawValue, into: &bytes, at: 56)
        bytes.replaceSubrange(64..<64 + json.count, with: json)
        put(CRC32C.checksum(Array(bytes[0..<headerSlotSize - 4])), into: &bytes, at: headerSlotSize - 4)
        return bytes
    }

    /// Decodes one header slot of `headerSlotSize` bytes, checking magic, version, checksum,
    /// geometry and record.
    public static func decodeHeader(_ bytes: [UInt8]) throws(Invalid) -> Header {
        guard !bytes.isEmpty else { throw Invalid(description: "truncated (0 of \(headerSlotSize) bytes)") }
        if bytes.allSatisfy({ $0 == 0 }) { throw Invalid(description: "all zeroes") }
        guard bytes.count >= 12, get(bytes, at: 0) as UInt64 == magic else { throw Invalid(description: "not a BlockMirror bitmap (bad magic)") }
        let foundVersion: UInt32 = get(bytes, at: 8)
        guard foundVersion == version else {
            throw Invalid(description: "version \(foundVersion), this blockmirror reads version \(version)"
                          + (foundVersion == 1 ? " (version 1 bitmaps carry no checksums and cannot be trusted: remove the file to copy everything)" : ""))
        }
        guard bytes.count == headerSlotSize else { throw Invalid(description: "truncated (\(bytes.count) of \(headerSlotSize) bytes)") }
        let stored: UInt32 = get(bytes, at: headerSlotSize - 4)
        guard stored == CRC32C.checksum(Array(bytes[0..<headerSlotSize - 4])) else { throw Invalid(description: "header checksum mismatch") }
        let length = Int(get(bytes, at: 12) as UInt32)
        guard length <= maximumRecordLength else { throw Invalid(description: "record length \(length) out of range") }
        let regionSize: UInt64 = get(bytes, at: 48)
        let deviceSize: UInt64 = get(bytes, at: 40)
        guard regionSize >= 512, regionSize & (regionSize &- 1) == 0 else { throw Invalid(description: "region size \(regionSize) is not a power of two") }
        guard deviceSize > 0, deviceSize / regionSize < UInt64(Int32.max) else {
            throw Invalid(description: "device size \(deviceSize) out of range for regions of \(regionSize) bytes")
        }
        guard let state = State(rawValue: get(bytes, at: 56)) else { throw Invalid(description: "unknown state") }
        // Every save advances the generation by one, and its pages may carry the next: the last
        // one cannot be advanced (a save would trap) nor be followed by its pages. No file gets
        // there by saving (one save a second for 5 * 10^11 years).
        let generation: UInt64 = get(bytes, at: 16)
        guard generation < .max else { throw Invalid(description: "generation \(generation) cannot advance") }
        let record: Record
        do { record = try JSONDecoder().decode(Record.self, from: Data(bytes[64..<64 + length])) } catch {
            throw Invalid(description: "unreadable record of the legs")
        }
        return Header(generation: generation, fileID: Array(bytes[24..<40]), deviceSize: deviceSize,
                      regionSize: regionSize, state: state, record: record)
    }

    // MARK: Pages

    /// Page `index`'s bytes: its header, then `words` (at most `wordsPerPage`; the rest zero).
    public static func encodePage(index: Int, words: ArraySlice<UInt64>, generation: UInt64, fileID: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: pageSize)
        put(pageMagic, into: &bytes, at: 0)
        put(UInt64(index), into: &bytes, at: 8)
        put(generation, into: &bytes, at: 16)
        bytes.replaceSubrange(24..<40, with: fileID.prefix(16))
        for (offset, word) in words.prefix(wordsPerPage).enumerated() { put(word, into: &bytes, at: pageHeaderSize + offset * 8) }
        put(CRC32C.checksum(Array(bytes[8..<pageSize])), into: &bytes, at: 4)
        return bytes
    }

    /// The words of page `index` (`wordCount` of them: fewer on the last page), if the bytes are a
    /// valid page of this file written no later than `generation` + 1 (a save tears between
    /// its pages and its header).
    public static func decodePage(_ bytes: [UInt8], index: Int, wordCount: Int, fileID: [UInt8],
                                  generation: UInt64) throws(Invalid) -> [UInt64] {
        guard bytes.count == pageSize else { throw Invalid(description: "truncated") }
        guard get(bytes, at: 0) as UInt32 == pageMagic else {
            throw Invalid(description: bytes.allSatisfy { $0 == 0 } ? "zeroed" : "bad magic")
        }
        guard get(bytes, at: 4) as UInt32 == CRC32C.checksum(Array(bytes[8..<pageSize])) else { throw Invalid(description: "checksum mismatch") }
        guard get(bytes, at: 8) as UInt64 == UInt64(index) else { throw Invalid(description: "holds page \(get(bytes, at: 8) as UInt64)") }
        guard Array(bytes[24..<40]) == fileID else { throw Invalid(description: "belongs to another bitmap file") }
        let pageGeneration: UInt64 = get(bytes, at: 16)
        guard pageGeneration <= generation &+ 1 else {
            throw Invalid(description: "generation \(pageGeneration) is newer than the header's \(generation)")
        }
        return (0..<min(wordCount, wordsPerPage)).map { get(bytes, at: pageHeaderSize + $0 * 8) }
    }

    // MARK: Little-endian fields

    private static func put<T: FixedWidthInteger>(_ value: T, into bytes: inout [UInt8], at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: $0) }
    }

    private static func get<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int) -> T {
        bytes[offset..<offset + MemoryLayout<T>.size].withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }
}
