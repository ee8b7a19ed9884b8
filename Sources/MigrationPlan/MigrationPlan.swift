import BlockIO

/// A fleet migration: many volumes, each a mirror from its old storage onto its new, copied a few
/// at a time within a shared copy rate — what `blockmirror migrate PLAN` runs. Read from a TOML
/// file (`MigrationPlan(toml:)`); docs/PLAN.md describes every key.
///
/// A mistake in the plan as a whole (TOML that does not parse, an unknown top-level key, a wrong
/// type) refuses the plan: nothing starts. A mistake in one volume (a missing or misspelt key, a
/// duplicate name, an unknown group) refuses that volume alone, named with the key
/// (`rejected`): the others go on.
public struct MigrationPlan: Sendable, Equatable {
    /// The plan's name: its control socket and log in the runtime directory (default: the file's
    /// name without `.toml`).
    public var name: String
    /// Volumes copying at once (md copies arrays that share disks one at a time).
    public var concurrency: Int
    /// KiB/s all copies together stay within (md's `speed_limit_max`, system-wide); nil: no limit.
    public var speedMax: UInt64?
    /// Where bitmaps are kept across reboots (`STATE_DIR/NAME.bitmap` unless a volume names one).
    public var stateDirectory: String
    /// Groups of volumes sharing a copy rate of their own (the volumes of one old array, whose
    /// disks limit how fast all of them can be read).
    public var groups: [Group]
    /// The volumes that are valid, in the plan's order.
    public var volumes: [Volume]
    /// The volumes refused, with why: they do not start; the others do.
    public var rejected: [Rejection]

    /// A group of volumes with a copy rate of its own.
    public struct Group: Sendable, Equatable {
        public var name: String
        /// KiB/s the group's copies together stay within; nil: no limit of its own.
        public var speedMax: UInt64?
    }

    /// One volume: a mirror of `source` onto `target`, exported on `listen`.
    public struct Volume: Sendable, Equatable {
        /// Its mirror's name (letters, digits, `.`, `_`, `-`).
        public var name: String
        /// The old storage: a path or an NBD URI.
        public var source: String
        /// The new storage: a path or an NBD URI.
        public var target: String
        /// Where its NBD export listens (`unix:PATH`, `tcp:HOST:PORT`), `{name}` replaced.
        public var listen: [String]
        /// Its write-intent bitmap file.
        public var bitmap: String
        /// The group whose rate it shares, if any.
        public var group: String?
        /// Higher copies first; equal priorities in the plan's order.
        public var priority: Int
        /// KiB/s its copy keeps under client I/O (md's `sync_speed_min`).
        public var speedMin: UInt64
        /// KiB/s its copy never exceeds on its own; nil: only the shared limits.
        public var speedMax: UInt64?
    }

    /// A volume the plan refuses, and why (naming the volume and the key).
    public struct Rejection: Sendable, Equatable, CustomStringConvertible {
        /// The volume's name, if it has a usable one.
        public var volume: String?
        /// Its place in the plan (1-based), for a volume without a name.
        public var index: Int
        public var reason: String
        /// Escaped: a rejected volume's name is whatever the file held.
        public var description: String { "volume \(volume.map { "\"\(UntrustedText.escape($0))\"" } ?? "#\(index)"): \(reason)" }
    }

    /// md's default minimum copy rate, KiB/s.
    public static let defaultSpeedMin: UInt64 = 1000
    public static let defaultStateDirectory = "/var/lib/blockmirror"
    public static let defaultListen = "unix:/run/blockmirror/{name}.sock"

    /// The volumes in the order their copies start: higher priority first, then the plan's order.
    public var copyOrder: [Volume] {
        volumes.enumerated().sorted { ($0.element.priority, -$0.offset) > ($1.element.priority, -$1.offset) }.map(\.element)
    }
}

/// Why a plan cannot run at all, for people: names the file, the key, and the line where TOML
/// says.
public struct PlanError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
