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

    init(_ statuses: [MirrorStatus]) {
        for status in statuses {
            mirrors += 1
            switch status.state {
            case .inSync: inSync += 1
            case .recovering: copying += 1
            case .degraded, .stopping: waiting += 1
            case .targetFailed: failed += 1
            }
            if status.state != .inSync { bytesLeft += status.bytesDirty }
            bytesPerSecond += status.speedBytesPerSecond
        }
        etaSeconds = bytesPerSecond > 0 && bytesLeft > 0 ? Double(bytesLeft) / Double(bytesPerSecond) : nil
    }

    /// One line, in /proc/mdstat's units.
    var line: String {
        var text = "totals: \(mirrors) mirror\(mirrors == 1 ? "" : "s"): \(inSync) in sync, \(copying) copying, \(waiting) waiting, \(failed) failed; "
            + "\(bytesLeft / 1024)K left, speed=\(bytesPerSecond / 1024)K/sec"
        if let etaSeconds { text += " finish=\(String(format: "%.1f", etaSeconds / 60))min" }
        return text
    }
}
