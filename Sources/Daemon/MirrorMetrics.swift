import BlockIO
import Metrics
import Mirror
import MirrorModel

/// The mirror's figures as swift-metrics, sampled from its status at each scrape: copy progress,
/// speed, dirty regions, client requests in flight, state, last check's mismatches.
public final class MirrorMetrics: Sendable {
    private let dirty: Gauge
    private let total: Gauge
    private let copied: Counter
    private let speed: Gauge
    private let inFlight: Gauge
    private let mismatches: Gauge
    private let states: [(MirrorState, Gauge)]
    private let lastCopied = Mutex<UInt64>(0)

    public init(name: String) {
        let mirror = [("mirror", name)]
        dirty = Gauge(label: "blockmirror_regions_dirty", dimensions: mirror)
        total = Gauge(label: "blockmirror_regions", dimensions: mirror)
        copied = Counter(label: "blockmirror_copied_bytes_total", dimensions: mirror)
        speed = Gauge(label: "blockmirror_copy_speed_bytes_per_second", dimensions: mirror)
        inFlight = Gauge(label: "blockmirror_requests_in_flight", dimensions: mirror)
        mismatches = Gauge(label: "blockmirror_check_mismatched_sectors", dimensions: mirror)
        let all: [MirrorState] = [.degraded, .recovering, .inSync, .targetFailed, .stopping]
        states = all.map { ($0, Gauge(label: "blockmirror_state", dimensions: mirror + [("state", $0.rawValue)])) }
    }

    public func update(from status: MirrorStatus) {
        dirty.record(status.regionsDirty)
        total.record(status.regionsTotal)
        let delta: UInt64 = lastCopied.withLock { last in
            defer { last = max(last, status.bytesCopied) }
            return status.bytesCopied > last ? status.bytesCopied - last : 0
        }
        if delta > 0 { copied.increment(by: Int64(delta)) }
        speed.record(status.speedBytesPerSecond)
        inFlight.record(status.foregroundInFlight)
        mismatches.record(status.lastCheck?.mismatchedSectors ?? 0)
        for (state, gauge) in states { gauge.record(state == status.state ? 1 : 0) }
    }
}
