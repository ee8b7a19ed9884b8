import BlockIO

/// Whether the bits of a bitmap file may be trusted for the legs a mirror has now (invariant 8):
/// the rules alone, on values, apart from the file's I/O.
///
/// A bitmap's clear bit says "the legs agree here" only for the legs it was written for, and only
/// if nothing but the mirror wrote them since. So the source must be the file or device the bitmap
/// names (else it is refused: it belongs to another mirror); a target that is not the one recorded,
/// was removed from a running mirror, or shows writes since a clean stop gets every region copied.
/// What cannot be told (a block device across a reboot) is said, not hidden.
public enum BitmapTrust {
    public enum Verdict: Sendable, Equatable {
        /// The bits hold every region where the legs may differ; `note`, if any, says what could
        /// not be checked.
        case trust(note: String?)
        /// Every region must be copied, for this reason (told to the user).
        case copyAll(String)
        /// The file must not be used, for this reason (told to the user).
        case refuse(String)
    }

    /// The source the mirror serves, against what the file records of its source.
    public static func source(recorded: BitmapFileFormat.LegRecord, identity: LegIdentity, trace: LegWriteTrace,
                              stopped: String?) -> Verdict {
        let differences = identity.differences(from: recorded.identity)
        guard differences.isEmpty else {
            return .refuse("it was written for the source \(recorded.identity.summary), but \(identity.path) is another "
                           + "\(identity.kind.rawValue) (\(differences.joined(separator: ", "))): give the source it was written "
                           + "for, or remove the bitmap file to copy everything")
        }
        return compare(trace, with: recorded.trace, leg: "the source \(identity.path)",
                       since: stopped.map { "since the mirror stopped cleanly at \($0)" } ?? "since the mirror stopped cleanly")
    }

    /// A target about to be attached, against what the file records of its target.
    /// `retiredAt`: the record is of the leg `complete` retired then (its trace is of that moment).
    public static func target(recorded: BitmapFileFormat.LegRecord?, identity: LegIdentity, trace: LegWriteTrace,
                              stopped: String?, retiredAt: String? = nil) -> Verdict {
        guard let recorded else { return .copyAll("\(identity.path) is a new target: every region is copied") }
        let differences = identity.differences(from: recorded.identity)
        guard differences.isEmpty else {
            let same = recorded.identity.path == identity.path
            return .copyAll("\(identity.path) is not the target the bitmap was written for"
                            + (same ? " (it was replaced since: \(differences.joined(separator: ", ")))"
                                    : " (\(recorded.identity.summary))")
                            + ": every region is copied")
        }
        if recorded.detached == true {
            return .copyAll("\(identity.path) was removed from the mirror earlier and what it holds since is unknown: every region is copied")
        }
        let since = retiredAt.map { "since it was retired at \($0)" }
            ?? stopped.map { "since the mirror stopped cleanly at \($0)" } ?? "since the mirror stopped cleanly"
        return compare(trace, with: recorded.trace, leg: "the target \(identity.path)", since: since)
    }

    /// A leg recorded at a clean stop must show no write since; a leg in use when the mirror
    /// ended (no trace) is covered by the bits.
    private static func compare(_ trace: LegWriteTrace, with recorded: LegWriteTrace?, leg: String, since: String) -> Verdict {
        guard let recorded else { return .trust(note: nil) }
        switch trace.compared(with: recorded) {
        case .unchanged: return .trust(note: nil)
        case .written(let why): return .copyAll("\(leg) was written outside the mirror \(since) (\(why)): every region is copied")
        case .unknown(let why):
            return .trust(note: "cannot tell whether \(leg) was written outside the mirror \(since): \(why); "
                          + "--verify-clean compares the regions the bitmap calls clean before trusting them")
        }
    }
}
