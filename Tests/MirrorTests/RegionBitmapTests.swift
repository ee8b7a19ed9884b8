import Testing
@testable import Mirror

/// The dirty-region bitmap: geometry, counts, search, and the range-to-region mapping the write
/// path relies on (a write marks every region it touches; only whole regions may be marked clean).
@Suite struct RegionBitmapTests {
    /// A partial last region is counted, and tail bits never leak into the count.
    @Test func geometryAndTail() {
        var bitmap = RegionBitmap(deviceSize: 130 * 4096 + 1, regionSize: 4096, allDirty: true)
        #expect(bitmap.regionCount == 131)
        #expect(bitmap.words.count == 3)
        #expect(bitmap.dirtyCount == 131)
        #expect(bitmap.byteRange(of: 130) == (130 * 4096, 1))
        bitmap.setClean(130)
        #expect(bitmap.dirtyCount == 130)
        let reloaded = RegionBitmap(deviceSize: bitmap.deviceSize, regionSize: 4096, words: [~0, ~0, ~0])
        #expect(reloaded.dirtyCount == 131)
    }

    /// set/clean report changes, and nextDirty finds bits across word boundaries.
    @Test func setCleanAndSearch() {
        var bitmap = RegionBitmap(deviceSize: 1 << 30, regionSize: 1 << 20, allDirty: false)
        let first = bitmap.setDirty(5), again = bitmap.setDirty(5), other = bitmap.setDirty(700)
        #expect(first && !again && other)
        #expect(bitmap.dirtyCount == 2)
        #expect(bitmap.nextDirty(from: 0) == 5)
        #expect(bitmap.nextDirty(from: 6) == 700)
        #expect(bitmap.nextDirty(from: 701) == nil)
        let cleaned = bitmap.setClean(5), cleanedAgain = bitmap.setClean(5)
        #expect(cleaned && !cleanedAgain)
        #expect(bitmap.nextDirty(from: 0) == 700)
    }

    /// A write touches every region it overlaps, but fully covers only the whole ones.
    @Test func rangeMapping() {
        let bitmap = RegionBitmap(deviceSize: 10 << 20, regionSize: 1 << 20, allDirty: false)
        #expect(bitmap.regions(offset: 0, length: 1) == 0..<1)
        #expect(bitmap.regions(offset: (1 << 20) - 1, length: 2) == 0..<2)
        #expect(bitmap.regions(offset: 0, length: 0).isEmpty)
        #expect(bitmap.regionsFullyCovered(offset: 0, length: 1 << 20) == 0..<1)
        #expect(bitmap.regionsFullyCovered(offset: 1, length: 2 << 20) == 1..<2)
        #expect(bitmap.regionsFullyCovered(offset: 4096, length: 4096).isEmpty)
        // The short last region of an odd-sized device is whole when the write reaches the end.
        let odd = RegionBitmap(deviceSize: (2 << 20) + 512, regionSize: 1 << 20, allDirty: false)
        #expect(odd.regionsFullyCovered(offset: 2 << 20, length: 512) == 2..<3)
    }

    /// Ranges from outside (a client's offset and length) never trap: an end past 2^64 or past the
    /// device is clipped to the device.
    @Test func rangesThatOverflowAreClipped() {
        let bitmap = RegionBitmap(deviceSize: 10 << 20, regionSize: 1 << 20, allDirty: false)
        #expect(bitmap.regions(offset: (9 << 20) + 5, length: .max) == 9..<10)
        #expect(bitmap.regions(offset: .max, length: .max).isEmpty)
        #expect(bitmap.regions(offset: 10 << 20, length: 1).isEmpty)
        #expect(bitmap.regionsFullyCovered(offset: 9 << 20, length: .max) == 9..<10)
        #expect(bitmap.regionsFullyCovered(offset: .max - 1, length: 4).isEmpty)
    }

    /// A geometry near 2^64 (as a bitmap file may claim; the bitmap fuzz target found the trap in
    /// rounding the region count up) is counted without overflow.
    @Test func aDeviceSizeNear2To64IsCountedWithoutOverflow() {
        let bitmap = RegionBitmap(deviceSize: .max, regionSize: 1 << 63, allDirty: true)
        #expect(bitmap.regionCount == 2)
        #expect(bitmap.dirtyCount == 2)
        #expect(bitmap.regionsFullyCovered(offset: .max - 1, length: 1) == 2..<2)
        #expect(bitmap.regionsFullyCovered(offset: 1, length: .max) == 1..<2)
        #expect(UInt64.max.dividedRoundingUp(by: 512) == 1 << 55)
        #expect(UInt64(1 << 20).dividedRoundingUp(by: 1 << 20) == 1)
        #expect(UInt64(0).dividedRoundingUp(by: 512) == 0)
    }
}
