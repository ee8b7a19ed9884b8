import Control
import MirrorModel

/// Which of a plan's volumes copy when, and what phase each is in: pure bookkeeping, no I/O (the
/// plan's daemon runs what it decides, and asks it again whenever it looks at its volumes).
///
/// A volume's phase follows its mirror's live state, not a record of what the plan did: a volume
/// whose target fails after it was in sync is `failed`, one that a `check` sends back to copying
/// is `copying`, one whose failed target was added again by hand copies and ends `in-sync`. The
/// slots count every volume that copies, whoever started its copy (a hand `add` too), so at most
/// `concurrency` copies the plan starts run beside them.
public struct PlanScheduler: Sendable, Equatable {
    public typealias Phase = PlanStatus.Phase

    /// What the daemon knows of a volume now.
    public enum Live: Sendable, Equatable {
        /// Being opened and exported.
        case starting
        /// It could not start (why).
        case failedToStart(String)
        /// It serves: its mirror's state, whether `complete` switched it onto its target, and why
        /// its target failed (if it did).
        case serving(MirrorState, switched: Bool, failure: String?)
        /// Stopped on its own.
        case stopped
    }

    /// The volumes in the order their copies start.
    public let order: [String]
    public let concurrency: Int
    /// Volumes whose copy the plan started (or tried to): the plan does not start them again.
    public private(set) var started: Set<String> = []
    /// Volumes whose target the plan is attaching now (they count as copying).
    public private(set) var attaching: Set<String> = []
    /// Volumes the plan checks after a restart for a target with nothing to copy (not started meanwhile).
    public private(set) var resuming: Set<String> = []
    /// Why the plan could not attach a volume's target.
    public private(set) var errors: [String: String] = [:]
    /// The most volumes that copied at once.
    public private(set) var peakCopying = 0
    /// The plan stops: no copy starts any more.
    public private(set) var stopping = false

    public init(order: [String], concurrency: Int) {
        self.order = order
        self.concurrency = concurrency
    }

    /// `volume`'s phase, given what the daemon knows of it now.
    public func phase(_ volume: String, _ live: Live) -> Phase {
        switch live {
        case .starting: return .starting
        case .failedToStart: return .failed
        case .stopped: return .stopped
        case .serving(let state, let switched, _):
            if attaching.contains(volume) { return .copying }
            switch state {
            case .inSync: return .inSync
            case .recovering: return .copying
            case .targetFailed: return .failed
            case .stopping: return .stopped
            case .degraded:
                if switched { return .completed }
                if errors[volume] != nil || started.contains(volume) { return .failed }
                return .waiting
            }
        }
    }

    /// Why `volume` is `failed` (nil if it is not).
    public func error(_ volume: String, _ live: Live) -> String? {
        guard phase(volume, live) == .failed else { return nil }
        switch live {
        case .failedToStart(let why): return why
        case .serving(_, _, let failure?): return "its target failed: \(failure)"
        default: return errors[volume] ?? "its target was removed: it serves from its source alone"
        }
    }

    /// The volumes whose copy starts now, in order, up to the free slots: each is `attaching`
    /// until `attached` or `attachFailed`.
    public mutating func next(_ live: [String: Live]) -> [String] {
        guard !stopping else { return [] }
        var copying = copying(live)
        var starting: [String] = []
        for volume in order where copying < concurrency && !resuming.contains(volume) {
            guard let now = live[volume], phase(volume, now) == .waiting else { continue }
            attaching.insert(volume)
            started.insert(volume)
            starting.append(volume)
            copying += 1
        }
        peakCopying = max(peakCopying, copying)
        return starting
    }

    /// A copy started by hand or already running counts toward the peak too.
    public mutating func observe(_ live: [String: Live]) {
        peakCopying = max(peakCopying, copying(live))
    }

    /// The plan attached `volume`'s target: its mirror's state says the rest.
    public mutating func attached(_ volume: String) {
        attaching.remove(volume)
        errors[volume] = nil
    }

    /// The plan could not attach `volume`'s target (why).
    public mutating func attachFailed(_ volume: String, _ why: String) {
        attaching.remove(volume)
        errors[volume] = why
    }

    /// `volume` is checked for a target with nothing to copy (after a restart); until `resumed`,
    /// no copy of it starts.
    public mutating func resume(_ volume: String) { resuming.insert(volume) }

    /// The check of `volume` ended (its target attached in sync, or left for its turn).
    public mutating func resumed(_ volume: String) { resuming.remove(volume) }

    /// The plan stops: no copy starts from now on.
    public mutating func stop() { stopping = true }

    /// How many volumes copy now.
    private func copying(_ live: [String: Live]) -> Int {
        order.filter { volume in live[volume].map { phase(volume, $0) == .copying } ?? false }.count
    }
}
