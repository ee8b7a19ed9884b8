import BlockIO
import Foundation
import Testing
@testable import Mirror

/// The bitmap file's layout on bytes: round trips, and every kind of damage recognised.
@Suite struct BitmapFileFormatTests {
    let fileID: [UInt8] = Array(1...16)

    func header(generation: UInt64 = 7, sourcePath: String = "/dev/old") -> BitmapFileFormat.Header {
        let source = LegIdentity(kind: .blockDevice, path: sourcePath, deviceNumber: "253:4", stableID: "dm:LVM-abc")
        let target = LegIdentity(kind: .file, path: "/new.img", filesystem: 2049, inode: 12, birth: 1_700_000_000_123_456_789)
        let record = BitmapFileFormat.Record(source: .init(identity: source),
                                             target: .init(identity: target, trace: LegWriteTrace(size: 1 << 30, changed: 42)),
                                             stopped: "2026-12-01T10:00:00Z")
        return BitmapFileFormat.Header(generation: generation, fileID: fileID, deviceSize: 1 << 30, regionSize: 1 << 20,
                                       state: .stopped, record: record)
    }

    @Test func headerRoundTripsAndAnyFlippedByteIsCaught() throws {
        let bytes = try BitmapFileFormat.encode(header())
        #expect(bytes.count == BitmapFileFormat.headerSlotSize)
        #expect(try BitmapFileFormat.decodeHeader(bytes) == header())
        for position in stride(from: 0, to: bytes.count, by: 97) {
            var damaged = bytes
            damaged[position] ^= 0x40
            #expect(throws: BitmapFileFormat.Invalid.self) { try BitmapFileFormat.decodeHeader(damaged) }
        }
        #expect(throws: BitmapFileFormat.Invalid.self) { try BitmapFileFormat.decodeHeader(Array(bytes.prefix(4000))) }
    }

    /// A header whose geometry passes its own checks but reaches 2^64 (device size 2^64 − 1 in
    /// regions of 2^63 bytes: the bitmap fuzz target's input) is read, not trapped on.
    @Test func aGeometryNear2To64IsReadWithoutATrap() throws {
        var near = header(generation: 8)  // even: slot 0
        near.deviceSize = .max
        near.regionSize = 1 << 63
        let file = try BitmapFileFormat.encode(near) + [UInt8](repeating: 0, count: BitmapFileFormat.headerSlotSize)
            + BitmapFileFormat.encodePage(index: 0, words: [0b10], generation: near.generation, fileID: fileID)
        let path = "/var/tmp/bitmap-near-2-64-\(UUID().uuidString)"
        defer { unlink(path) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(file)))
        let examined = try WriteIntentLog.examine(path: path)
        #expect(examined.header.deviceSize == .max)
        #expect(examined.bitmap.regionCount == 2)
        #expect(examined.bitmap.dirtyCount == 1)
    }

    /// The last generation is refused (found by the bitmap fuzz target: its own pages, which may
    /// carry the header's generation + 1, read back as "newer than the header", and the next save
    /// overflowed).
    @Test func theLastGenerationIsRefused() throws {
        let bytes = try BitmapFileFormat.encode(header(generation: .max))
        let error = #expect(throws: BitmapFileFormat.Invalid.self) { try BitmapFileFormat.decodeHeader(bytes) }
        #expect(error?.description == "generation 18446744073709551615 cannot advance")
        #expect(try BitmapFileFormat.decodeHeader(BitmapFileFormat.encode(header(generation: .max - 1))).generation == .max - 1)
    }

    @Test func aRecordTooLongForTheHeaderIsAnError() {
        let long = "/" + String(repeating: "x", count: BitmapFileFormat.maximumRecordLength)
        let error = #expect(throws: BitmapFileFormat.Invalid.self) { try BitmapFileFormat.encode(header(sourcePath: long)) }
        #expect(error?.description.contains("paths too long") == true)
    }

    @Test func pagesRoundTripAndDamageIsNamed() throws {
        let words: [UInt64] = (0..<600).map { $0 % 3 == 0 ? 0xDEAD_BEEF : 0 }
        let first = BitmapFileFormat.encodePage(index: 0, words: words[0..<504], generation: 7, fileID: fileID)
        let second = BitmapFileFormat.encodePage(index: 1, words: words[504...], generation: 8, fileID: fileID)
        #expect(try BitmapFileFormat.decodePage(first, index: 0, wordCount: 504, fileID: fileID, generation: 7) == Array(words[0..<504]))
        #expect(try BitmapFileFormat.decodePage(second, index: 1, wordCount: 96, fileID: fileID, generation: 7) == Array(words[504...]))

        func why(_ bytes: [UInt8], index: Int = 0, fileID: [UInt8]? = nil, generation: UInt64 = 7) -> String? {
            do {
                _ = try BitmapFileFormat.decodePage(bytes, index: index, wordCount: 504, fileID: fileID ?? self.fileID, generation: generation)
                return nil
            } catch { return error.description }
        }
        var flipped = first
        flipped[1000] ^= 1
        #expect(why(flipped) == "checksum mismatch")
        #expect(why([UInt8](repeating: 0, count: 4096)) == "zeroed")
        #expect(why(first, index: 1) == "holds page 0")
        #expect(why(first, fileID: Array(repeating: 9, count: 16)) == "belongs to another bitmap file")
        #expect(why(second, index: 1, generation: 6) == "generation 8 is newer than the header's 6")
        #expect(why(Array(first.prefix(100))) == "truncated")
    }
}
