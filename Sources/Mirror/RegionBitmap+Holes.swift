import BlockIO

extension RegionBitmap {
    /// The regions that are holes of `device` from end to end (`SEEK_DATA`/`SEEK_HOLE` on a file; a
    /// block device reports none), in a bitmap of this geometry. Empty when the map cannot be read.
    func holes(of device: any Leg) -> RegionBitmap {
        var holes = RegionBitmap(deviceSize: deviceSize, regionSize: regionSize, allDirty: false)
        var at: UInt64 = 0
        let end = min(deviceSize, device.size)
        while at < end {
            guard let extents = try? device.allocationMap(offset: at, length: end - at, maxExtents: 4096),
                  !extents.isEmpty, !extents.contains(where: { $0.length == 0 }) else {
                return RegionBitmap(deviceSize: deviceSize, regionSize: regionSize, allDirty: false)
            }
            for extent in extents {
                if extent.isHole {
                    for region in regionsFullyCovered(offset: at, length: extent.length) { holes.setDirty(region) }
                }
                at += extent.length
            }
        }
        return holes
    }

    /// The regions set here and clear in `other` (same geometry).
    func subtracting(_ other: RegionBitmap) -> RegionBitmap {
        RegionBitmap(deviceSize: deviceSize, regionSize: regionSize, words: zip(words, other.words).map { $0 & ~$1 })
    }
}
