import BlockIO

/// Where a mirror stands, as `status` and `detail` report it.
public enum MirrorState: String, Sendable, Equatable, Codable {
    /// Serving from the source alone; no target attached (`--target missing`).
    case degraded
    /// A target is attached and the copier is filling it.
    case recovering
    /// The target is a complete copy; every write goes to both.
    case inSync = "in-sync"
    /// The target failed an I/O; serving from the source alone.
    case targetFailed = "target-failed"
    /// Draining for stop.
    case stopping
}

/// A snapshot of a mirror's progress: what `status`, `detail` and `--json` show.
public struct MirrorStatus: Sendable, Equatable, Codable {
    public var state: MirrorState
    /// The source device (OLD).
    public var source: String
    /// The attached target (NEW), also after it failed; nil when none was ever attached.
    public var target: String?
    /// Bytes exported (the source's size).
    public var size: UInt64
    public var regionSize: UInt64
    public var regionsTotal: Int
    /// Regions the target may lack.
    public var regionsDirty: Int
    /// Bytes the background copy has written to the target since the daemon started.
    public var bytesCopied: UInt64
    /// The copy (or check) speed, bytes per second, averaged over the last 5 seconds.
    public var speedBytesPerSecond: UInt64
    /// Seconds until in sync at the current speed; nil when not recovering or not moving.
    public var etaSeconds: Double?
    public var speedLimits: SpeedLimits
    /// Client requests being served right now.
    public var foregroundInFlight: Int
    /// The check running now, with its progress so far.
    public var check: CheckReport?
    /// The last check that ended (like md's `mismatch_cnt`).
    public var lastCheck: CheckReport?
    /// Why the target failed, naming device and offset.
    public var failure: String?
    /// The write-intent bitmap file, if any.
    public var bitmap: String?
    /// The source's path no longer names the file or device served (deleted or replaced while in
    /// use): its data lives on in the daemon only, and in the target if it is in sync.
    public var sourceProblem: String?
    /// Regions the copier compares before copying (the bitmap called them clean, but that is in
    /// doubt), and how many of those compared so far differed.
    public var regionsVerifying: Int?
    public var verifiedDiffering: Int?
    /// How kernel md names a `recovering` state's work when it is not a recovery onto a new
    /// target: `resync` (both legs present, made consistent), or `resync=PENDING`/`resync=DELAYED`
    /// while it waits its turn. Nil for the engine, whose only such work is a recovery.
    public var syncAction: String?
    /// When `complete` or `reverse` last switched the roles (ISO 8601): `source` is then not
    /// necessarily the leg the mirror was built with as its source.
    public var switched: String?
    /// The leg `complete` retired: served until then, written no more, holding what it held then.
    public var retired: String?
    /// A plan's volume whose copy has not started: it waits for one of the plan's copy slots
    /// (`wait` waits on, `stop` says so). Nil for every other mirror.
    public var pendingCopy: PendingCopy?

    /// The copy a plan will start on a volume once a slot frees (`blockmirror migrate`).
    public struct PendingCopy: Sendable, Equatable, Codable {
        /// The plan's name and its file.
        public var plan: String
        public var planFile: String
        /// The target the plan attaches.
        public var target: String

        public init(plan: String, planFile: String, target: String) {
            self.plan = plan; self.planFile = planFile; self.target = target
        }
    }

    /// Bytes the target still lacks (whole regions; the last may be partial).
    public var bytesDirty: UInt64 { min(UInt64(regionsDirty) * regionSize, size) }

    /// A status with every field; what a backend does not know stays nil.
    public init(state: MirrorState, source: String, target: String?, size: UInt64, regionSize: UInt64, regionsTotal: Int,
                regionsDirty: Int, bytesCopied: UInt64, speedBytesPerSecond: UInt64, etaSeconds: Double? = nil,
                speedLimits: SpeedLimits, foregroundInFlight: Int, check: CheckReport? = nil, lastCheck: CheckReport? = nil,
                failure: String?, bitmap: String? = nil, sourceProblem: String? = nil, regionsVerifying: Int? = nil,
                verifiedDiffering: Int? = nil, syncAction: String? = nil, switched: String? = nil, retired: String? = nil) {
        self.state = state; self.source = source; self.target = target; self.size = size; self.regionSize = regionSize
        self.regionsTotal = regionsTotal; self.regionsDirty = regionsDirty; self.bytesCopied = bytesCopied
        self.speedBytesPerSecond = speedBytesPerSecond; self.etaSeconds = etaSeconds; self.speedLimits = speedLimits
        self.foregroundInFlight = foregroundInFlight; self.check = check; self.lastCheck = lastCheck; self.failure = failure
        self.bitmap = bitmap; self.sourceProblem = sourceProblem; self.regionsVerifying = regionsVerifying
        self.verifiedDiffering = verifiedDiffering; self.syncAction = syncAction; self.switched = switched; self.retired = retired
    }
}

/// What a check found (md's `check` and `repair` actions): source and target compared region by
/// region, mismatches counted in 512-byte sectors like md's `mismatch_cnt`.
public struct CheckReport: Sendable, Equatable, Codable {
    /// A byte range where the legs differ.
    public struct Mismatch: Sendable, Equatable, Codable {
        public var offset: UInt64
        public var length: UInt64

        public init(offset: UInt64, length: UInt64) {
            self.offset = offset
            self.length = length
        }
    }

    /// Whether mismatches are rewritten on the target from the source.
    public var repair: Bool
    public var regionsTotal: Int
    /// Regions compared so far.
    public var regionsChecked: Int = 0
    /// Regions not compared because they were still to be copied (they are known to differ).
    public var regionsSkipped: Int = 0
    /// 512-byte sectors that differ.
    public var mismatchedSectors: UInt64 = 0
    /// Sectors rewritten on the target (repair only).
    public var repairedSectors: UInt64 = 0
    /// Regions found to differ and marked dirty (check without repair): the copier copies them
    /// again, and the mirror is not in sync until it has.
    public var regionsMarkedDirty: Int = 0
    /// The first mismatching ranges, in device order per region (at most `maximumListed`).
    public var mismatches: [Mismatch] = []
    /// Why the check ended early; nil when it compared every region.
    public var interrupted: String?

    /// How many mismatching ranges a report lists.
    public static let maximumListed = 64
    /// The unit mismatches are counted in (md's `mismatch_cnt` counts 512-byte sectors).
    public static let sectorSize = 512

    public init(repair: Bool, regionsTotal: Int) {
        self.repair = repair
        self.regionsTotal = regionsTotal
    }

    /// Adds mismatching ranges found in one region.
    public mutating func record(_ ranges: [Mismatch]) {
        for range in ranges {
            mismatchedSectors += range.length.dividedRoundingUp(by: UInt64(Self.sectorSize))
            if mismatches.count < Self.maximumListed { mismatches.append(range) }
        }
    }
}
