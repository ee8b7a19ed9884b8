/// A moving average of bytes per second over the last few seconds, as md's `sync_speed` shows it.
///
/// Bytes are counted into fixed time slots; the rate is what the slots inside the window hold,
/// divided by the time they cover. A plain value: the owner locks it.
public struct RateMeter: Sendable {
    /// Width of one slot, in nanoseconds.
    public let slotNanos: UInt64
    private var slots: [UInt64]
    /// The slot index (time / slotNanos) each entry of `slots` belongs to.
    private var slotIDs: [UInt64]
    private var firstSample: UInt64?
    private var lastSample: UInt64 = 0

    /// A meter averaging over `slotCount` slots of `slotNanos` each (default: 5 s in 250 ms slots).
    public init(slotNanos: UInt64 = 250_000_000, slotCount: Int = 20) {
        self.slotNanos = slotNanos
        slots = Array(repeating: 0, count: slotCount)
        slotIDs = Array(repeating: .max, count: slotCount)
    }

    /// Counts `bytes` done at monotonic time `now` (nanoseconds).
    public mutating func add(_ bytes: UInt64, now: UInt64) {
        // After an idle spell longer than the window, a new run starts its own average.
        if firstSample == nil || (now > lastSample && now - lastSample > slotNanos * UInt64(slots.count)) { firstSample = now }
        lastSample = max(lastSample, now)
        let id = now / slotNanos
        let index = Int(id % UInt64(slots.count))
        if slotIDs[index] != id { slotIDs[index] = id; slots[index] = 0 }
        slots[index] += bytes
    }

    /// Bytes per second over the window ending at `now`; 0 before anything was counted.
    public func bytesPerSecond(now: UInt64) -> Double {
        guard let firstSample else { return 0 }
        let current = now / slotNanos
        let window = UInt64(slots.count)
        var total: UInt64 = 0
        for (index, id) in slotIDs.enumerated() where id != .max && id <= current && current - id < window {
            total += slots[index]
        }
        // The window covers at most `slotCount` slots, and no more time than since the first sample.
        // `now` may be a little older than the first sample (clocks read before the owner's lock).
        let covered = min(window * slotNanos, max(now > firstSample ? now - firstSample : 0, slotNanos))
        return Double(total) * 1e9 / Double(covered)
    }
}
