import BlockIO
import MirrorModel

/// A kernel md RAID1 array seen as a mirror: the same `MirrorStatus` the engine reports, so
/// `status`, `detail` and `--json` read the same for both backends.
///
/// md keeps no region bitmap for a `--build` array, so regions here are nominal 1 MiB units of
/// `sync_completed`: the dirty ones are what the running recovery has not reached yet.
public enum MDMirrorStatus {
    /// The unit regions are counted in.
    public static let regionSize: UInt64 = 1 << 20

    /// The status of array `stat` (from /proc/mdstat) with its sysfs values and, when available,
    /// `mdadm --detail` (which names the devices by path).
    public static func make(stat: MDArrayStat, sysfs: MDSysfs, detail: MDDetail?) -> MirrorStatus {
        let size = (detail?.arraySizeKiB ?? stat.blocks ?? 0).multipliedSaturating(by: 1024)
        let regionsTotal = Int(size.dividedRoundingUp(by: regionSize))
        let (source, target, faultyTarget) = devices(stat: stat, detail: detail)
        let action = sysfs.syncAction
        let recovering = action == "recover" || action == "resync" || stat.pending != nil
            || ["recovery", "resync"].contains(stat.progress?.action ?? "")
        let state: MirrorState
        if recovering { state = .recovering }
        else if faultyTarget { state = .targetFailed }
        else if sysfs.degraded > 0 || target == nil { state = .degraded }
        else { state = .inSync }

        var regionsDirty = 0
        var bytesCopied: UInt64 = 0
        switch state {
        case .recovering:
            // mdstat's (done/total) in KiB is finer than sync_completed, which moves in big steps.
            let progress: (done: UInt64, total: UInt64)? = stat.progress.map { ($0.done.multipliedSaturating(by: 1024), $0.total.multipliedSaturating(by: 1024)) }
                ?? sysfs.syncCompleted.map { ($0.done.multipliedSaturating(by: 512), $0.total.multipliedSaturating(by: 512)) }
            if let progress, progress.total > 0 {
                let remaining = progress.total - min(progress.done, progress.total)
                regionsDirty = Int(remaining.dividedRoundingUp(by: regionSize))
                bytesCopied = progress.done
            } else {
                regionsDirty = regionsTotal  // pending or delayed: nothing copied yet
            }
        case .degraded, .targetFailed: regionsDirty = regionsTotal
        case .inSync, .stopping: break
        }
        let speed = action == "idle" ? 0 : sysfs.syncSpeed.multipliedSaturating(by: 1024)
        var status = MirrorStatus(
            state: state, source: source ?? "", target: target, size: size, regionSize: regionSize, regionsTotal: regionsTotal,
            regionsDirty: regionsDirty, bytesCopied: bytesCopied, speedBytesPerSecond: speed,
            speedLimits: SpeedLimits(minimum: sysfs.speedMin, maximum: sysfs.speedMax),
            foregroundInFlight: 0, failure: faultyTarget ? "\(target ?? "the target") is faulty (kernel md)" : nil)
        if state == .recovering {
            if let pending = stat.pending { status.syncAction = pending }
            else if action == "resync" || stat.progress?.action == "resync" { status.syncAction = "resync" }
            if let minutes = stat.progress?.finishMinutes { status.etaSeconds = minutes * 60 }
            else if speed > 0 { status.etaSeconds = Double(status.bytesDirty) / Double(speed) }
        }
        if action == "check" || action == "repair" {
            var report = CheckReport(repair: action == "repair", regionsTotal: regionsTotal)
            // In Double: done × regions overflows UInt64 for arrays of a few hundred TiB.
            if let progress = stat.progress, progress.total > 0 {
                report.regionsChecked = Int(Double(progress.done) / Double(progress.total) * Double(regionsTotal))
            } else if let completed = sysfs.syncCompleted, completed.total > 0 {
                report.regionsChecked = Int(Double(completed.done) / Double(completed.total) * Double(regionsTotal))
            }
            report.mismatchedSectors = sysfs.mismatchCount
            status.check = report
        } else if state == .inSync {
            // md keeps mismatch_cnt from the last check or repair (0 if none ran).
            var last = CheckReport(repair: sysfs.lastSyncAction == "repair", regionsTotal: regionsTotal)
            last.regionsChecked = regionsTotal
            last.mismatchedSectors = sysfs.mismatchCount
            status.lastCheck = last
        }
        return status
    }

    /// The source (role 0; after `complete` removed it, the one active member left), the target
    /// (the other device, if any) and whether the target is faulty.
    static func devices(stat: MDArrayStat, detail: MDDetail?) -> (source: String?, target: String?, faulty: Bool) {
        if let detail {
            let present = detail.devices.filter { $0.path != nil }
            let active = present.filter { !$0.state.contains("faulty") && !$0.state.contains("spare") }
            let source = (present.first { $0.raidDevice == 0 && !$0.state.contains("faulty") } ?? (present.count == 1 ? active.first : nil))?.path
            let other = present.first { $0.path != source }
            return (source, other?.path, other?.state.contains("faulty") ?? false)
        }
        let sorted = stat.members.sorted { $0.number < $1.number }
        let source = sorted.first { !$0.faulty && !$0.spare }
        let other = sorted.first { $0 != source }
        return (source.map { "/dev/" + $0.device }, other.map { "/dev/" + $0.device }, other?.faulty ?? false)
    }
}
