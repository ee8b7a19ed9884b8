import MirrorModel

/// What a plan's daemon reports (`blockmirror status PLAN`): its limits, and each volume's phase
/// in the plan and its mirror's status.
public struct PlanStatus: Codable, Sendable, Equatable {
    /// A volume's place in the plan's progress.
    public enum Phase: String, Codable, Sendable, CaseIterable {
        /// Being opened and exported.
        case starting
        /// Serving degraded on its source, its copy not started yet (waiting for a slot).
        case waiting
        /// Its copy runs (counts against `concurrency`).
        case copying
        /// Its target is a complete copy, kept so by every write.
        case inSync = "in-sync"
        /// It could not start, its target could not be attached or failed, or it was removed:
        /// `error` says why (the export, if it started, goes on serving from the source).
        case failed
        /// Switched onto its target by `complete`: the new storage serves alone, the old one retired.
        case completed
        /// Stopped on its own (`blockmirror stop VOLUME`).
        case stopped
    }

    public struct Volume: Codable, Sendable, Equatable {
        public var name: String
        public var phase: Phase
        public var error: String?
        /// Its mirror's status (nil if it never started).
        public var status: MirrorStatus?
        public init(name: String, phase: Phase, error: String? = nil, status: MirrorStatus? = nil) {
            self.name = name; self.phase = phase; self.error = error; self.status = status
        }
    }

    public var name: String
    /// The plan file it runs.
    public var plan: String
    /// Volumes copying at once, at most.
    public var concurrency: Int
    /// The most volumes that have copied at once so far.
    public var peakCopying: Int
    /// KiB/s all copies together stay within; nil: no limit.
    public var speedMax: UInt64?
    public var volumes: [Volume]

    public init(name: String, plan: String, concurrency: Int, peakCopying: Int, speedMax: UInt64?, volumes: [Volume]) {
        self.name = name; self.plan = plan; self.concurrency = concurrency; self.peakCopying = peakCopying
        self.speedMax = speedMax; self.volumes = volumes
    }
}
