import Control
import Foundation
import Mirror
import MirrorModel

/// Renders a mirror for people in the shape of `mdadm --detail`: sizes, state, device counts,
/// rebuild status, and each device with its role.
enum DetailText {
    static func render(name: String, _ status: MirrorStatus, daemon: DaemonInfo?, backend: Backend) -> String {
        let kib = status.size / 1024
        var rows: [(String, String)] = [
            ("Backend", backend == .md ? "md (kernel)" : "engine"),
            ("Started", daemon?.started ?? "-"),
            ("Mirror Size", "\(kib) (\(humanBinary(status.size)) \(humanDecimal(status.size)))"),
            ("Region Size", "\(status.regionSize / 1024)K"),
            ("Bitmap", status.bitmap ?? "none (a crash means a full recopy)"),
            ("Raid Devices", "2"),
            ("Total Devices", status.target == nil ? "1" : "2"),
            ("", ""),
            ("State", state(status)),
            ("Active Devices", status.state == .inSync ? "2" : "1"),
            ("Working Devices", status.target != nil && status.failure == nil ? "2" : "1"),
            ("Failed Devices", status.failure != nil ? "1" : "0"),
            ("Spare Devices", status.state == .recovering ? "1" : "0"),
        ]
        if status.state == .recovering {
            rows.append(("", ""))
            rows.append((status.syncAction == nil ? "Rebuild Status" : "Resync Status", "\(percent(done: status.regionsTotal - status.regionsDirty, of: status.regionsTotal)) complete"))
            if let eta = status.etaSeconds { rows.append(("Rebuild Finish", String(format: "%.1fmin at %lluK/sec", eta / 60, status.speedBytesPerSecond / 1024))) }
        }
        if let check = status.check {
            rows.append(("", ""))
            rows.append(("\(check.repair ? "Repair" : "Check") Status",
                         "\(percent(done: check.regionsChecked + check.regionsSkipped, of: check.regionsTotal)) complete"))
        }
        if let last = status.lastCheck {
            rows.append(("Mismatch Count", "\(last.mismatchedSectors)" + (last.interrupted.map { " (check interrupted: \($0))" } ?? "")))
        }
        rows.append(("Speed Limits", "\(status.speedLimits.minimum)K/sec min, " + (status.speedLimits.maximum.map { "\($0)K/sec max" } ?? "unlimited max")))
        if let failure = status.failure { rows.append(("Failure", failure)) }
        if let switched = status.switched { rows.append(("Roles Switched", switched)) }
        if let retired = status.retired { rows.append(("Retired", "\(retired) (written no more since the switch)")) }
        for (index, uri) in (daemon?.exports ?? []).enumerated() { rows.append((index == 0 ? "Exports" : "", uri)) }
        if let pid = daemon?.pid { rows.append(("Daemon PID", "\(pid)")) }

        var lines = ["\(name):"]
        for (key, value) in rows {
            lines.append(key.isEmpty && value.isEmpty ? "" : String(repeating: " ", count: max(0, 15 - key.count)) + key + (key.isEmpty ? "   " : " : ") + value)
        }
        lines.append("")
        lines.append("    Number   RaidDevice State")
        lines.append("       0        0      active sync   \(status.source)")
        if let target = status.target {
            let role: String
            switch status.state {
            case .inSync: role = "active sync  "
            case .recovering: role = status.syncAction == nil ? "spare rebuilding" : "active sync  "
            case .targetFailed: role = "faulty       "
            case .degraded, .stopping: role = status.failure != nil ? "faulty       " : status.regionsDirty == 0 ? "active sync  " : "spare        "
            }
            lines.append("       1        1      \(role) \(target)")
        } else {
            lines.append("       -        1      removed")
        }
        return lines.joined(separator: "\n")
    }

    /// md's state words: clean, degraded, recovering (plus checking, stopping).
    static func state(_ status: MirrorStatus) -> String {
        var words = ["clean"]
        switch status.state {
        case .inSync: break
        case .recovering:
            switch status.syncAction {
            case .none: words += ["degraded", "recovering"]
            case .some(let action):
                // md: "resync" → resyncing; "resync=PENDING" → resyncing (PENDING).
                let parts = action.split(separator: "=")
                words.append("\(parts[0])ing" + (parts.count > 1 ? " (\(parts[1]))" : ""))
            }
        case .degraded, .targetFailed: words.append("degraded")
        case .stopping: words.append("stopping")
        }
        if let check = status.check { words.append(check.repair ? "repairing" : "checking") }
        return words.joined(separator: ", ")
    }

    static func percent(done: Int, of total: Int) -> String {
        "\(total == 0 ? 100 : done * 100 / total)%"
    }

    static func humanBinary(_ bytes: UInt64) -> String {
        String(format: "%.2f GiB", Double(bytes) / Double(1 << 30))
    }

    static func humanDecimal(_ bytes: UInt64) -> String {
        String(format: "%.2f GB", Double(bytes) / 1e9)
    }
}
