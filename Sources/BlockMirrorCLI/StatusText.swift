import Control
import Mirror
import MirrorModel

/// Renders a mirror's status for people, in the shape of /proc/mdstat.
enum StatusText {
    /// Three lines, as /proc/mdstat shows an array:
    ///
    ///     m0 : recovering /var/tmp/old.img[0] /var/tmp/new.img[1]
    ///           2097152K, 1024K regions, speed limits 1000K-unlimited [2/1] [U_]
    ///           [=>...................]  recovery =  8.5% (178944/2097152) finish=0.8min speed=19884K/sec
    static func render(name: String, _ status: MirrorStatus) -> String {
        var devices = "\(status.source)[0]"
        if let target = status.target { devices += " \(target)[1]" + (status.failure != nil ? "(F)" : "") }
        let healthy = status.state == .inSync || status.syncAction != nil ? "[2/2] [UU]" : "[2/1] [U_]"
        let limits = "\(status.speedLimits.minimum)K-" + (status.speedLimits.maximum.map { "\($0)K" } ?? "unlimited")
        var lines = ["\(name) : \(status.state.rawValue) \(devices)",
                     "      \(status.size / 1024)K, \(status.regionSize / 1024)K regions, speed limits \(limits) \(healthy)"]
        if let line = progressLine(status) ?? status.pendingCopy.map(waitingLine) { lines.append("      " + line) }
        if let failure = status.failure { lines.append("      target failed: \(failure)") }
        if let retired = status.retired {
            lines.append("      completed at \(status.switched ?? "?"): \(retired) retired, holding what it held then")
        }
        if let last = status.lastCheck, status.check == nil {
            lines.append("      last \(last.repair ? "repair" : "check"): mismatch_cnt=\(last.mismatchedSectors)"
                         + (last.interrupted.map { " (interrupted: \($0))" } ?? ""))
        }
        return lines.joined(separator: "\n")
    }

    /// The progress line of a recovery or a check in progress, nil when neither runs.
    static func progressLine(_ status: MirrorStatus) -> String? {
        if status.state == .recovering {
            let total = status.size / 1024
            let done = total - min(total, status.bytesDirty / 1024)
            if let pending = status.syncAction, pending.contains("=") { return pending }  // md: resync=PENDING
            return progress(action: status.syncAction ?? "recovery", done: done, total: total, speed: status.speedBytesPerSecond,
                            eta: status.etaSeconds)
        }
        if let check = status.check {
            let total = status.size / 1024
            let done = min(total, UInt64(check.regionsChecked + check.regionsSkipped) * (status.regionSize / 1024))
            return progress(action: check.repair ? "repair" : "check", done: done, total: total, speed: status.speedBytesPerSecond, eta: nil)
        }
        return nil
    }

    /// What a plan's volume waiting for a copy slot shows in place of a progress line.
    static func waitingLine(_ pending: MirrorStatus.PendingCopy) -> String {
        "waiting for a copy slot of plan \(pending.plan) (then onto \(pending.target))"
    }

    /// md's progress line: a 20-step bar, per-mille percentage, done/total, finish and speed.
    static func progress(action: String, done: UInt64, total: UInt64, speed: UInt64, eta: Double?) -> String {
        let perMille = total == 0 ? 1000 : Int(done * 1000 / total)
        let filled = perMille / 50
        let bar = "[" + String(repeating: "=", count: filled) + ">" + String(repeating: ".", count: 20 - filled) + "]"
        let percent = "\(perMille / 10).\(perMille % 10)%"
        let padded = String(repeating: " ", count: max(0, 5 - percent.count)) + percent
        var line = "\(bar)  \(action) = \(padded) (\(done)/\(total))"
        if let eta { line += " finish=\(String(format: "%.1f", eta / 60))min" }
        line += " speed=\(speed / 1024)K/sec"
        return line
    }

    /// A plan: a line of its own, each volume as /proc/mdstat shows an array (with its phase in
    /// the plan where the mirror's state does not say it), and the totals.
    static func render(plan: PlanStatus) -> String {
        var blocks = ["plan \(plan.name) (\(plan.plan)): \(plan.concurrency) copying at most (peak \(plan.peakCopying)), "
                      + "together at most " + (plan.speedMax.map { "\($0)K/sec" } ?? "unlimited")]
        for volume in plan.volumes {
            var lines: [String] = []
            if let status = volume.status { lines.append(render(name: volume.name, status)) } else { lines.append("\(volume.name) : \(volume.phase.rawValue)") }
            switch volume.phase {
            case .waiting: lines.append("      waiting for its copy to start")
            case .failed: lines.append("      failed: \(volume.error ?? "?")")
            case .stopped: lines.append("      stopped")
            case .completed: lines.append("      completed: its new storage serves alone")
            case .starting, .copying, .inSync: break
            }
            blocks.append(lines.joined(separator: "\n"))
        }
        blocks.append(StatusTotals(plan: plan).line)
        return blocks.joined(separator: "\n\n")
    }
}
