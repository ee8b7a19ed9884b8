/// One bit per region of a device: set means "the target may differ from the source here".
///
/// A plain value type with no locking; the mirror owns it under its own lock. Words are `UInt64`,
/// so the same bytes are what the write-intent log persists (little-endian, region 0 in bit 0).
public struct RegionBitmap: Sendable, Equatable {
    /// Bytes per region (a power of two).
    public let regionSize: UInt64
    /// Bytes covered (the device size); the last region may be partial.
    public let deviceSize: UInt64
    /// Number of regions.
    public let regionCount: Int
    /// The bits; bits past `regionCount` in the last word are always zero.
    public private(set) var words: [UInt64]
    /// Number of set bits, kept up to date.
    public private(set) var dirtyCount: Int

    /// A bitmap with every bit clear (`allDirty: false`) or set.
    public init(deviceSize: UInt64, regionSize: UInt64, allDirty: Bool) {
        precondition(regionSize > 0 && regionSize & (regionSize - 1) == 0, "region size must be a power of two")
        self.regionSize = regionSize
        self.deviceSize = deviceSize
        regionCount = Int(deviceSize.dividedRoundingUp(by: regionSize))
        words = Array(repeating: 0, count: (regionCount + 63) / 64)
        dirtyCount = 0
        if allDirty { setAll() }
    }

    /// A bitmap from persisted words; extra bits past `regionCount` are ignored.
    public init(deviceSize: UInt64, regionSize: UInt64, words: [UInt64]) {
        self.init(deviceSize: deviceSize, regionSize: regionSize, allDirty: false)
        precondition(words.count == self.words.count, "word count does not match the geometry")
        for (index, word) in words.enumerated() { self.words[index] = word }
        maskTail()
        dirtyCount = self.words.reduce(0) { $0 + $1.nonzeroBitCount }
    }

    private mutating func maskTail() {
        let used = regionCount % 64
        if used != 0 { words[words.count - 1] &= (1 << UInt64(used)) - 1 }
    }

    /// Sets every bit.
    public mutating func setAll() {
        for index in words.indices { words[index] = ~0 }
        maskTail()
        dirtyCount = regionCount
    }

    /// Sets every bit that is set in `other` (same geometry).
    public mutating func formUnion(_ other: RegionBitmap) {
        precondition(other.words.count == words.count, "bitmaps of different geometry")
        for index in words.indices { words[index] |= other.words[index] }
        dirtyCount = words.reduce(0) { $0 + $1.nonzeroBitCount }
    }

    /// Whether some bit set here is clear in `other` (saving `other` would clear it).
    public func hasBits(clearIn other: RegionBitmap) -> Bool {
        zip(words, other.words).contains { $0 & ~$1 != 0 }
    }

    public func isDirty(_ region: Int) -> Bool {
        words[region >> 6] & (1 << UInt64(region & 63)) != 0
    }

    /// Sets a bit; returns whether it was clear before.
    @discardableResult
    public mutating func setDirty(_ region: Int) -> Bool {
        let mask: UInt64 = 1 << UInt64(region & 63)
        guard words[region >> 6] & mask == 0 else { return false }
        words[region >> 6] |= mask
        dirtyCount += 1
        return true
    }

    /// Clears a bit; returns whether it was set before.
    @discardableResult
    public mutating func setClean(_ region: Int) -> Bool {
        let mask: UInt64 = 1 << UInt64(region & 63)
        guard words[region >> 6] & mask != 0 else { return false }
        words[region >> 6] &= ~mask
        dirtyCount -= 1
        return true
    }

    /// The first dirty region at or after `start`, wrapping never; nil if none.
    public func nextDirty(from start: Int) -> Int? {
        guard start < regionCount else { return nil }
        var wordIndex = start >> 6
        var word = words[wordIndex] & (~0 << UInt64(start & 63))
        while true {
            if word != 0 { return (wordIndex << 6) + word.trailingZeroBitCount }
            wordIndex += 1
            guard wordIndex < words.count else { return nil }
            word = words[wordIndex]
        }
    }

    /// Regions touched by the byte range `[offset, offset+length)`, clipped to the device (a range
    /// past the end, or one whose end overflows, touches none beyond it).
    public func regions(offset: UInt64, length: UInt64) -> Range<Int> {
        guard length > 0, offset < deviceSize else { return 0..<0 }
        let (end, overflow) = offset.addingReportingOverflow(length)
        let last = (overflow ? deviceSize : min(end, deviceSize)) - 1
        return Int(offset / regionSize)..<Int(last / regionSize + 1)
    }

    /// Regions entirely inside `[offset, offset+length)` (the last, partial region counts as whole
    /// when the range reaches the device's end).
    public func regionsFullyCovered(offset: UInt64, length: UInt64) -> Range<Int> {
        guard offset < deviceSize else { return 0..<0 }
        let (sum, overflow) = offset.addingReportingOverflow(length)
        let end = overflow ? deviceSize : sum
        let first = Int(offset.dividedRoundingUp(by: regionSize))
        let last = end >= deviceSize ? regionCount : Int(end / regionSize)
        return first < last ? first..<last : first..<first
    }

    /// The byte range of a region (the last one may be short).
    public func byteRange(of region: Int) -> (offset: UInt64, length: UInt64) {
        let offset = UInt64(region) * regionSize
        return (offset, min(regionSize, deviceSize - offset))
    }
}
