import Glibc
import MirrorModel

/// Compares two copies of the same bytes sector by sector, as a check counts mismatches.
public enum SectorComparison {
    /// The unit mismatches are counted in: `CheckReport.sectorSize`.
    public static let sectorSize = CheckReport.sectorSize

    /// The ranges (relative to the buffers' start, plus `base`) where `a` and `b` differ, whole
    /// sectors, adjacent sectors merged. Empty when the buffers are equal.
    public static func mismatches(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, count: Int, base: UInt64) -> [CheckReport.Mismatch] {
        guard memcmp(a, b, count) != 0 else { return [] }
        var ranges: [CheckReport.Mismatch] = []
        var offset = 0
        while offset < count {
            let length = min(sectorSize, count - offset)
            if memcmp(a + offset, b + offset, length) != 0 {
                let start = base + UInt64(offset)
                if let last = ranges.last, last.offset + last.length == start {
                    ranges[ranges.count - 1].length += UInt64(length)
                } else {
                    ranges.append(CheckReport.Mismatch(offset: start, length: UInt64(length)))
                }
            }
            offset += length
        }
        return ranges
    }
}
