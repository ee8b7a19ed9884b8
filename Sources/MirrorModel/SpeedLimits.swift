/// md-style limits on the background copy and check, in KiB/s like md's `sync_speed_min` and
/// `sync_speed_max`.
///
/// Under foreground I/O the copier yields (fewer copies in flight) as long as it still copies at
/// least `minimum`; it never goes faster than `maximum`. Both can change while it runs.
public struct SpeedLimits: Sendable, Equatable, Codable {
    /// KiB/s the copy keeps even under foreground load (md's default: 1000).
    public var minimum: UInt64
    /// KiB/s the copy never exceeds; nil: as fast as the devices go.
    public var maximum: UInt64?

    public init(minimum: UInt64 = 1000, maximum: UInt64? = nil) {
        self.minimum = minimum
        self.maximum = maximum
    }
}
