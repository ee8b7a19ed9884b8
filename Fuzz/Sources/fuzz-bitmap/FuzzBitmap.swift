import BlockIO
import FuzzSupport
import Mirror
#if canImport(Glibc)
import Glibc
#endif

/// Fuzzes the reader of write-intent bitmap files (`WriteIntentLog.examine`, and through it
/// `BitmapFileFormat.decodeHeader`/`decodePage`; `BitmapTrust` on the record read). An input is a
/// bitmap file as it lies on disk: two 16 KiB header slots, then 4 KiB pages.
///
/// A random input almost never gets past the checksums, so it is first made valid where it is
/// not, and what the checksums guard is fuzzed too: magic, version and state set, the record
/// length and the geometry brought into range, the generation put in its slot, the pages given
/// their magic, index, file id and generation, and every CRC-32C computed over the fuzzed bytes and
/// patched in. Byte 60 of the file (unused by the format) turns these patches off, one bit each
/// (`Patches`); with all eight set the file is read exactly as it is (short files too), and a real
/// file, where the byte is 0, is fuzzed with every patch.
///
/// Checks: nothing traps; what `examine` read agrees with the geometry of the header it chose; that
/// header is encoded back to one that reads the same, each page to the same words; a leg compared
/// with itself shows no difference, and every verdict on the legs can be made.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBitmap(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let image = Array(UnsafeBufferPointer(start: data, count: size))
    let off = Patches(rawValue: image.count > 60 ? image[60] : 0)
    let file = off == .all ? image : patch(image, off: off)
    guard let examined = examine(file) else { return 0 }
    checkEncoding(examined)
    checkTrust(examined.header)
    return 0
}

private let slotSize = 16 << 10, pageSize = 4096, pagesOffset = BitmapFileFormat.pagesOffset
/// Regions at most in a patched header: 4 pages' worth.
private let maximumRegions: UInt64 = 4 * UInt64(BitmapFileFormat.wordsPerPage) * 64

/// The patches byte 60 turns off.
private struct Patches: OptionSet {
    let rawValue: UInt8
    static let headerMagic = Patches(rawValue: 1 << 0)
    static let headerChecksum = Patches(rawValue: 1 << 1)
    static let geometry = Patches(rawValue: 1 << 2)
    static let generation = Patches(rawValue: 1 << 3)
    static let recordLength = Patches(rawValue: 1 << 4)
    static let pageMagic = Patches(rawValue: 1 << 5)
    static let pageChecksum = Patches(rawValue: 1 << 6)
    static let pageIdentity = Patches(rawValue: 1 << 7)
    static let all = Patches(rawValue: 0xFF)
}

// MARK: Little-endian fields

private func get<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, as: T.Type = T.self) -> T {
    var value: T = 0
    for index in (0..<MemoryLayout<T>.size).reversed() where offset + index < bytes.count {
        value = value << 8 | T(bytes[offset + index])
    }
    return value
}

private func put<T: FixedWidthInteger>(_ value: T, into bytes: inout [UInt8], at offset: Int) {
    for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
}

// MARK: Patching

/// The CRC-32C of `bytes[range]`, read in place (a copy of each 16 KiB slot cost more than the sum).
private func checksum(_ bytes: [UInt8], _ range: Range<Int>) -> UInt32 {
    bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[range])) }
}

/// `image` made valid but for the patches `off` names, at least as long as its header slots.
private func patch(_ image: [UInt8], off: Patches) -> [UInt8] {
    var file = image + [UInt8](repeating: 0, count: max(0, pagesOffset - image.count))
    let pages = (file.count - pagesOffset + pageSize - 1) / pageSize
    file += [UInt8](repeating: 0, count: pagesOffset + pages * pageSize - file.count)
    for slot in 0..<2 {
        let base = slot * slotSize
        if !off.contains(.headerMagic) {
            put(UInt64(0x314d_4254_494d_4d42), into: &file, at: base)
            put(UInt32(2), into: &file, at: base + 8)
            put(UInt32(1 + get(file, base + 56, as: UInt32.self) % 2), into: &file, at: base + 56)
        }
        if !off.contains(.recordLength) {
            put(get(file, base + 12, as: UInt32.self) % UInt32(slotSize - 64 - 4 + 1), into: &file, at: base + 12)
        }
        if !off.contains(.generation) {
            let generation: UInt64 = get(file, base + 16)
            put(generation & ~1 | UInt64(slot), into: &file, at: base + 16)
        }
        patchGeometry(&file, base: base, keepRegionSize: off.contains(.geometry))
        if !off.contains(.headerChecksum) {
            put(checksum(file, base..<base + slotSize - 4), into: &file, at: base + slotSize - 4)
        }
    }
    let generation: UInt64 = max(get(file, 16), get(file, slotSize + 16))
    for page in 0..<pages {
        let base = pagesOffset + page * pageSize
        if !off.contains(.pageMagic) { put(UInt32(0x4750_4d42), into: &file, at: base) }
        if !off.contains(.pageIdentity) {
            put(UInt64(page), into: &file, at: base + 8)
            if get(file, base + 16, as: UInt64.self) > generation &+ 1 { put(generation, into: &file, at: base + 16) }
            file.replaceSubrange(base + 24..<base + 40, with: file[24..<40])
        }
        if !off.contains(.pageChecksum) {
            put(checksum(file, base + 8..<base + pageSize), into: &file, at: base + 4)
        }
    }
    return file
}

/// Brings the region size to a power of two from 512 B to 2^63 B, what the reader accepts (unless
/// `keepRegionSize`), and the device size to at most `maximumRegions` regions, unless it is within
/// 2^20 regions already (so that sizes near 2^64 are tried, with large regions).
private func patchGeometry(_ file: inout [UInt8], base: Int, keepRegionSize: Bool) {
    var regionSize: UInt64 = get(file, base + 48)
    if !keepRegionSize {
        regionSize = 512 << (regionSize % 55)
        put(regionSize, into: &file, at: base + 48)
    }
    guard regionSize >= 512, regionSize.nonzeroBitCount == 1 else { return }
    let deviceSize: UInt64 = get(file, base + 40)
    if deviceSize / regionSize > 1 << 20 {
        put(deviceSize % (maximumRegions * min(regionSize, 1 << 32)) + 1, into: &file, at: base + 40)
    }
}

// MARK: Reading

/// `WriteIntentLog.examine` on `file` written to a temporary file, with its result checked
/// against the header it chose; nil when the file was refused.
private func examine(_ file: [UInt8]) -> WriteIntentLog.Examined? {
    let fd = open(scratchPath, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    fuzzCheck(fd >= 0, "cannot create \(scratchPath): errno \(errno)")
    defer { close(fd) }
    let written = file.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    fuzzCheck(written == file.count, "cannot write \(scratchPath): errno \(errno)")
    guard let examined = try? WriteIntentLog.examine(path: scratchPath) else { return nil }
    let header = examined.header
    let regions = header.deviceSize / header.regionSize + (header.deviceSize % header.regionSize == 0 ? 0 : 1)
    fuzzCheck(UInt64(examined.bitmap.regionCount) == regions, "examine gave \(examined.bitmap.regionCount) regions for \(regions)")
    fuzzCheck(examined.bitmap.dirtyCount <= examined.bitmap.regionCount, "more dirty regions than regions")
    fuzzCheck(examined.notes.isEmpty || examined.bitmap.dirtyCount > 0, "pages failed but no region is dirty")
    return examined
}

/// The header and pages `examine` read, encoded again, read back the same.
private func checkEncoding(_ examined: WriteIntentLog.Examined) {
    let header = examined.header
    if let encoded = try? BitmapFileFormat.encode(header) {
        fuzzCheck((try? BitmapFileFormat.decodeHeader(encoded)) == header, "a header does not read back from its encoding")
    }
    let words = examined.bitmap.words
    for page in 0..<BitmapFileFormat.pageCount(words: words.count) {
        let slice = words[page * BitmapFileFormat.wordsPerPage..<min(words.count, (page + 1) * BitmapFileFormat.wordsPerPage)]
        let encoded = BitmapFileFormat.encodePage(index: page, words: slice, generation: header.generation, fileID: header.fileID)
        let decoded = try? BitmapFileFormat.decodePage(encoded, index: page, wordCount: slice.count, fileID: header.fileID,
                                                      generation: header.generation)
        fuzzCheck(decoded.map { $0[...] == slice } ?? false, "page \(page) does not read back from its encoding")
    }
}

/// The trust rules on the legs a header records: each leg is no other than itself, and every
/// verdict (whose texts render the recorded values) can be made.
private func checkTrust(_ header: BitmapFileFormat.Header) {
    let record = header.record
    for leg in [record.source] + (record.target.map { [$0] } ?? []) {
        fuzzCheck(leg.identity.differences(from: leg.identity).isEmpty, "a leg differs from itself: \(leg.identity.differences(from: leg.identity))")
        let trace = leg.trace ?? LegWriteTrace(size: header.deviceSize)
        // The trace as the leg shows it now: written since (its change time and counters moved).
        var now = trace
        now.changed = trace.changed.map { $0 &+ 1 }
        now.sectorsWritten = trace.sectorsWritten.map { $0 &+ 8 }
        if case .refuse(let why) = BitmapTrust.source(recorded: leg, identity: leg.identity, trace: now, stopped: record.stopped) {
            fuzzFail("a source was refused as another than itself: \(why)")
        }
        _ = BitmapTrust.target(recorded: record.target, identity: leg.identity, trace: now, stopped: record.stopped)
        _ = leg.identity.sharesStorage(with: record.source.identity)
    }
}

/// The scratch file: in `$TMPDIR` (tools/fuzz.sh gives each run its own directory), one per process.
private let scratchPath = "\(getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp")/fuzz-bitmap-\(getpid()).bin"
