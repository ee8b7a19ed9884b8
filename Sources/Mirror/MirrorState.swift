/// Where a mirror stands, as `status` and `detail` report it.
public enum MirrorState: String, Sendable, Equatable {
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

/// A snapshot of a mirror's progress.
public struct MirrorStatus: Sendable, Equatable {
    public var state: MirrorState
    public var regionSize: UInt64
    public var regionsTotal: Int
    public var regionsDirty: Int
    public var bytesCopied: UInt64
    /// Why the target failed, naming device and offset.
    public var failure: String?
}
