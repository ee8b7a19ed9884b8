import BlockIO

/// What a mirror refuses of its legs before it runs on them: a geometry it cannot hold, and a
/// target that is the source by another path (`attach` also checks what needs the running state:
/// size, block size, an attached target — `TargetSlot.checkAttach`).
extension MirrorExport {
    /// Regions a mirror's bitmap may have: 2^30 (128 MiB of bits; 1 PiB in 1 MiB regions).
    public static let maximumRegions: UInt64 = 1 << 30

    /// Refuses a geometry the mirror cannot run: more regions than `maximumRegions` (the bitmap
    /// would not fit in memory), regions or a source size off the block size the source needs (an
    /// NBD server's minimum), so that a copy would be refused by the source itself.
    public static func checkGeometry(of source: any Leg, regionSize: UInt64) throws(TargetError) {
        let regions = source.size.dividedRoundingUp(by: regionSize)
        guard regions <= maximumRegions else {
            let needed = UInt64(1) << UInt64(64 - (source.size.dividedRoundingUp(by: maximumRegions) - 1).leadingZeroBitCount)
            throw TargetError(description: "source \(source.path) has \(source.size) bytes: \(regions) regions of \(regionSize) bytes, "
                              + "more than the \(maximumRegions) a bitmap holds (use --region-size \(needed) or more)")
        }
        let unit = UInt64(source.requiredAlignment)
        guard regionSize % unit == 0, source.size % unit == 0 else {
            throw TargetError(description: "source \(source.path) takes only requests in multiples of \(unit) bytes: "
                              + (regionSize % unit != 0 ? "use --region-size \(unit) or more"
                                                        : "its size, \(source.size) bytes, does not end on one"))
        }
    }

    /// Refuses a would-be target that is the source itself, by whatever path (symlink, hard link,
    /// `/proc/PID/fd`, a loop device over the source file): before it is opened, which would
    /// otherwise fail as "in use" by this very mirror.
    public static func refuseSource(_ path: String, of source: any Leg) throws(TargetError) {
        if case .success(let identity) = LegIdentity.probe(path) { try refuse(identity, asTargetOf: source) }
    }

    static func refuse(_ identity: LegIdentity, asTargetOf source: any Leg) throws(TargetError) {
        guard identity.sharesStorage(with: source.identity) else { return }
        throw TargetError(description: "\(identity.path) is the source \(source.path) (the same \(source.identity.kind.name)): "
                          + "a mirror needs a second device")
    }
}
