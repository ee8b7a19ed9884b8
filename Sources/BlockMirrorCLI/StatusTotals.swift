import Control
import Foundation
import MirrorModel

/// What many mirrors add up to (`status` without a name, `status PLAN`): how many are in sync,
/// copying, waiting (degraded: no target yet, or none copying) and failed, the bytes their targets
/// still lack, the copies' speed together and when they would all finish at it.
struct StatusTotals: Encodable, Equatable {
    var mirrors = 0
    var inSync = 0
    var copying = 0
    var waiting = 0
    var failed = 0
    /// Bytes the targets still lack (a degraded mirror's: what it recorded dirty).
    var bytesLeft: UInt64 = 0
    /// The copies' speed together.
    var bytesPerSecond: UInt64 = 0
    /// `bytesLeft` at `bytesPerSecond`; nil while nothing copies.
    var etaSeconds: Double?

    /// Mirrors counted by their state.
    init(_ statuses: [MirrorStatus]) {
        for status in statuses {
            switch status.state {
            case .inSync: count(status, as: .inSync)
            case .recovering: count(status, as: .copying)
            case .degraded, .stopping: count(status, as: .waiting)
            case .targetFailed: count(status, as: .failed)
            }
        }
        finish()
    }

    /// A plan's volumes counted by their phase in it (a volume whose target could not be attached
    /// is failed, not waiting; one `complete` switched is done, counted in sync).
    init(plan: PlanStatus) {
        for volume in plan.volumes {
            switch volume.phase {
            case .inSync, .completed: count(volume.status, as: .inSync)
            case .copying: count(volume.status, as: .copying)
            case .starting, .waiting: count(volume.status, as: .waiting)
            case .failed: count(volume.status, as: .failed)
            case .stopped: continue
            }
        }
        finish()
    }

    private enum Kind { case inSync, copying, waiting, failed }

    private mutating func count(_ status: MirrorStatus?, as kind: Kind) {
        mirrors += 1
        switch kind {
        case .inSync: inSync += 1
        case .copying: copying += 1
        case .waiting: waiting += 1
        case .failed: failed += 1
        }
        guard let status else { return }
        if kind != .inSync { bytesLeft += status.bytesDirty }
        // Only copies count: an in-sync mirror's average still holds its last seconds of copying.
        if kind == .copying { bytesPerSecond += status.speedBytesPerSecond }
    }

    private mutating func finish() {
        etaSeconds = copying > 0 && bytesPerSecond > 0 && bytesLeft > 0 ? Double(bytesLeft) / Double(bytesPerSecond) : nil
    }

    /// One line, in /proc/mdstat's units.
    var line: String {
        var text = "totals: \(mirrors) mirror\(mirrors == 1 ? "" : "s"): \(inSync) in sync, \(copying) copying, \(waiting) waiting, \(failed) failed; "
            + "\(bytesLeft / 1024)K left, speed=\(bytesPerSecond / 1024)K/sec"
        if let etaSeconds { text += " finish=\(String(format: "%.1f", etaSeconds / 60))min" }
        return text
    }
}
