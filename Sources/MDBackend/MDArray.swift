import Foundation
import MirrorModel

/// One kernel md RAID1 array driven as a mirror: the verbs run mdadm, the status reads
/// /proc/mdstat, sysfs and `mdadm --detail`.
public struct MDArray: Sendable {
    /// The kernel's name for it (`md0`).
    public let name: String
    private let mdadm: MDAdm
    private let procRoot: String
    private let sysRoot: String

    /// The array `name` (`md0` or `/dev/md0`). `procRoot`/`sysRoot` are for tests.
    public init(_ name: String, procRoot: String = "/proc", sysRoot: String = "/sys/block") throws(MDError) {
        self.name = name.hasPrefix("/dev/") ? String(name.dropFirst(5)) : name
        self.mdadm = try MDAdm()
        self.procRoot = procRoot
        self.sysRoot = sysRoot
    }

    /// `/dev/md0`.
    public var device: String { "/dev/\(name)" }

    /// Whether the kernel knows this array now.
    public var exists: Bool { FileManager.default.fileExists(atPath: "\(sysRoot)/\(name)/md") }

    /// `mdadm --build /dev/mdX --level=1 --raid-disks=2 SOURCE TARGET|missing`: a RAID1 without
    /// superblocks, the source first (it is the copy md reads from during the recovery).
    public func build(source: String, target: String?) throws(MDError) {
        guard !exists else { throw MDError("\(device) already exists (stop it first, or pick another name)") }
        try mdadm.run(["--build", device, "--level=1", "--raid-disks=2", source, target ?? "missing"])
    }

    /// `mdadm --add`: the recovery starts.
    public func add(_ target: String) throws(MDError) {
        try requireExists()
        try mdadm.run([device, "--add", target])
    }

    /// `mdadm --fail` of the target.
    public func failTarget() throws(MDError) {
        let status = try status()
        guard let target = status.target, status.state != .targetFailed else {
            throw MDError("\(device): no healthy target to fail (state \(status.state.rawValue))")
        }
        try mdadm.run([device, "--fail", target])
    }

    /// `mdadm --remove` of a failed target; returns its path.
    public func removeTarget() throws(MDError) -> String {
        let status = try status()
        guard let target = status.target else { throw MDError("\(device): no target to remove") }
        guard status.state == .targetFailed else { throw MDError("\(target) is active: fail it first (blockmirror fail)") }
        try mdadm.run([device, "--remove", target])
        return target
    }

    /// `complete`: once the target is in sync, `mdadm --fail` and `--remove` of the source, so
    /// the array runs on the target alone (the source keeps what it held then).
    public func completeOntoTarget() throws(MDError) -> String {
        let status = try status()
        guard status.state == .inSync, let target = status.target else {
            throw MDError("\(device): complete needs the target in sync (state \(status.state.rawValue), "
                          + "\(status.regionsDirty) of \(status.regionsTotal) regions to copy)")
        }
        try mdadm.run([device, "--fail", status.source])
        try mdadm.run([device, "--remove", status.source])
        return "\(target) serves alone; \(status.source) removed (mdadm --fail, --remove) and holds what it held at the switch"
    }

    /// `mdadm --stop`; says whether the target was a complete copy when it stopped.
    public func stop() throws(MDError) -> String {
        let status = try status()
        try mdadm.run(["--stop", device])
        guard let target = status.target else {
            return "\(name): degraded: no target attached; \(status.source) holds every write"
        }
        if status.state == .inSync, let last = status.lastCheck, !last.repair, last.mismatchedSectors > 0 {
            // md stays "clean" after a check that found differences; the copy is not complete.
            return "\(name): not in sync: the last check found mismatch_cnt=\(last.mismatchedSectors) between \(status.source) "
                + "and \(target), which md does not repair by itself (run blockmirror check --repair before stopping)"
        }
        if status.state == .inSync { return "\(name): in sync: \(target) is a complete copy of \(status.source)" }
        let why = status.failure.map { " (\($0))" } ?? ""
        return "\(name): not in sync\(why): \(target) is incomplete (md keeps no bitmap for a --build array: the next add copies everything)"
    }

    /// The array's status, the same type the engine reports.
    public func status() throws(MDError) -> MirrorStatus {
        try requireExists()
        let stat: MDStat
        let sysfs: MDSysfs
        do {
            stat = try MDStat(parsing: (try? String(contentsOfFile: procRoot + "/mdstat", encoding: .utf8)) ?? "")
            sysfs = try MDSysfs.read(array: name, root: sysRoot)
        } catch {
            throw MDError("cannot read \(device)'s state: \(error)")
        }
        guard let array = stat.array(name) else { throw MDError("\(device) is not in \(procRoot)/mdstat") }
        return MDMirrorStatus.make(stat: array, sysfs: sysfs, detail: try? detail())
    }

    /// `mdadm --detail`, parsed.
    public func detail() throws(MDError) -> MDDetail {
        let output = try mdadm.run(["--detail", device])
        do { return try MDDetail(parsing: output.stdout) } catch { throw MDError("\(error)") }
    }

    /// md's check (or repair): writes `sync_action`, waits until it is idle again, and reports
    /// `mismatch_cnt`.
    public func check(repair: Bool) throws(MDError) -> CheckReport {
        let before = try status()
        guard before.state == .inSync else {
            throw MDError("\(device) is \(before.state.rawValue): check once in sync")
        }
        try writeSysfs("sync_action", repair ? "repair" : "check")
        var status = try status()
        while status.check != nil {
            usleep(200_000)
            status = try self.status()
        }
        let mismatches = (try? MDSysfs.read(array: name, root: sysRoot).mismatchCount) ?? 0
        var report = CheckReport(repair: repair, regionsTotal: status.regionsTotal)
        report.mismatchedSectors = mismatches
        if status.state == .inSync {
            report.regionsChecked = status.regionsTotal
        } else {
            // md ends a check early when the array degrades or starts recovering.
            report.interrupted = "\(device) became \(status.state.rawValue) during the \(repair ? "repair" : "check")"
        }
        if repair { report.repairedSectors = mismatches }
        return report
    }

    /// Sets `sync_speed_min`/`sync_speed_max` of this array (KiB/s; nil leaves one as is; a
    /// maximum of 0 means md's system-wide default).
    public func setSpeed(minimum: UInt64?, maximum: UInt64?) throws(MDError) {
        try requireExists()
        if let minimum { try writeSysfs("sync_speed_min", "\(minimum)") }
        if let maximum { try writeSysfs("sync_speed_max", maximum == 0 ? "system" : "\(maximum)") }
    }

    private func requireExists() throws(MDError) {
        guard exists else { throw MDError("no md array \(name) (\(sysRoot)/\(name)/md is missing)") }
    }

    private func writeSysfs(_ file: String, _ value: String) throws(MDError) {
        let path = "\(sysRoot)/\(name)/md/\(file)"
        do { try value.write(toFile: path, atomically: false, encoding: .utf8) } catch {
            throw MDError("cannot write \(value) to \(path): \((error as NSError).localizedDescription)")
        }
    }
}
