import BlockIO

/// The mirror's target and its lifecycle, md's verbs on one slot: attach (`--add`), fail
/// (`--fail`, or an I/O error), remove (`--remove`). A state with no I/O and no lock:
/// `MirrorExport` keeps it under its mutex beside the bitmap, and does the bitmap-file writes and
/// the logging an attach or a removal calls for.
struct TargetSlot: Sendable {
    /// The attached target, healthy or failed; nil while the mirror is degraded.
    private(set) var leg: (any Leg)?
    /// Why the target failed (the first reason given), nil while it is healthy.
    private(set) var failure: String?
    /// Attaches in progress: no copy starts until the bitmap file names the new target (a count:
    /// an attach that failed midway must not clear the flag of the one after it).
    private(set) var attaching = 0

    /// The target if it is healthy: what writes and copies go to.
    var healthy: (any Leg)? { failure == nil ? leg : nil }

    /// Whether `leg` is the attached target and healthy: a write or copy onto it counts.
    func isHealthy(_ leg: any Leg) -> Bool { failure == nil && self.leg === leg }

    /// Refuses `target` for a source of `sourceSize` bytes at `sourcePath` if the slot holds a
    /// healthy target or `target` is smaller than the source.
    func checkAttach(_ target: any Leg, sourcePath: String, sourceSize: UInt64, exportBlockSize: Int = 1,
                     regionSize: UInt64 = 1 << 20) throws(MirrorExport.TargetError) {
        if let leg, failure == nil { throw .init(description: "a target is already attached (\(leg.path))") }
        guard target.size >= sourceSize else {
            throw .init(description: "target \(target.path) has \(target.size) bytes, smaller than source \(sourcePath) (\(sourceSize) bytes)")
        }
        let unit = target.requiredAlignment
        guard exportBlockSize % unit == 0 else {
            throw .init(description: "target \(target.path) takes only requests in multiples of \(unit) bytes, and the export promised "
                        + "its clients \(exportBlockSize)-byte ones: give it to build as --target, so the export asks for \(unit)")
        }
        guard regionSize % UInt64(unit) == 0 else {
            throw .init(description: "target \(target.path) takes only requests in multiples of \(unit) bytes, more than the "
                        + "mirror's \(regionSize)-byte regions: build it with --region-size \(unit) or more")
        }
        guard sourceSize % UInt64(unit) == 0 else {
            throw .init(description: "source \(sourcePath) (\(sourceSize) bytes) does not end on a \(unit)-byte block, "
                        + "the smallest request target \(target.path) takes")
        }
    }

    /// Puts `target` in the slot (`checkAttach` passed); the attach is in progress until
    /// `attached()`.
    mutating func attach(_ target: any Leg) {
        leg = target
        failure = nil
        attaching += 1
    }

    /// An attach ended (whether it succeeded or not).
    mutating func attached() {
        attaching -= 1
    }

    /// Records `leg`'s failure (the first reason wins); true if it was the healthy target until now.
    mutating func fail(_ reason: String, on leg: any Leg) -> Bool {
        guard isHealthy(leg) else { return false }
        failure = reason
        return true
    }

    /// Refuses to remove an empty slot or a healthy target (an active one must be failed first, as
    /// md requires); returns the path of the one to remove.
    func checkRemove() throws(MirrorExport.TargetError) -> String {
        guard let leg else { throw .init(description: "no target to remove") }
        guard failure != nil else { throw .init(description: "\(leg.path) is active: fail it first (blockmirror fail)") }
        return leg.path
    }

    /// Empties the slot (`checkRemove` passed).
    mutating func remove() {
        leg = nil
        failure = nil
    }
}
