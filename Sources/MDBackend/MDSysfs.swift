import Foundation

/// The md files of `/sys/block/mdX/md/` a mirror's status needs.
public struct MDSysfs: Sendable, Equatable {
    /// `idle`, `resync`, `recover`, `check`, `repair`, `frozen`, `reshape`.
    public var syncAction: String
    /// `sync_completed`: sectors done and in all while an action runs; nil when `none` or
    /// `delayed`. It moves in coarse steps: mdstat's `(done/total)` is finer.
    public var syncCompleted: (done: UInt64, total: UInt64)?
    /// `sync_speed`: KiB/s of the current action (`none` when idle: 0).
    public var syncSpeed: UInt64
    /// `sync_speed_min`/`max` in KiB/s (`1000 (system)` reads as 1000).
    public var speedMin: UInt64
    public var speedMax: UInt64
    /// `mismatch_cnt`: sectors found different by the last check (or repaired by the last repair),
    /// counted in whole resync blocks (64 KiB = 128 sectors for RAID1), not sector by sector.
    public var mismatchCount: UInt64
    /// `degraded`: devices missing from the array.
    public var degraded: Int
    /// `array_state`: `clean`, `active`, `readonly` …
    public var arrayState: String
    /// `last_sync_action`: what ran last (`check`, `repair`, `recovery`, `resync`); nil if unknown.
    public var lastSyncAction: String?

    public static func == (a: MDSysfs, b: MDSysfs) -> Bool {
        a.syncAction == b.syncAction && a.syncCompleted?.done == b.syncCompleted?.done && a.syncCompleted?.total == b.syncCompleted?.total
            && a.syncSpeed == b.syncSpeed && a.speedMin == b.speedMin && a.speedMax == b.speedMax
            && a.mismatchCount == b.mismatchCount && a.degraded == b.degraded && a.arrayState == b.arrayState
            && a.lastSyncAction == b.lastSyncAction
    }

    /// Reads the values from `key=value` lines (a fixture) or, with `read`, from files.
    public init(values: [String: String]) throws(MDParseError) {
        func value(_ key: String) throws(MDParseError) -> String {
            guard let text = values[key] else { throw MDParseError(source: "sysfs", line: key, reason: "missing") }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        func number(_ key: String) throws(MDParseError) -> UInt64 {
            let text = try value(key)
            if text == "none" { return 0 }
            guard let parsed = UInt64(text.split(separator: " ").first ?? "") else {
                throw MDParseError(source: "sysfs \(key)", line: text, reason: "not a number")
            }
            return parsed
        }
        syncAction = try value("sync_action")
        let completed = try value("sync_completed")
        if completed == "none" || completed == "delayed" {
            syncCompleted = nil
        } else {
            let parts = completed.split(separator: "/").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let done = UInt64(parts[0]), let total = UInt64(parts[1]) else {
                throw MDParseError(source: "sysfs sync_completed", line: completed, reason: "expected DONE / TOTAL")
            }
            syncCompleted = (done, total)
        }
        syncSpeed = try number("sync_speed")
        speedMin = try number("sync_speed_min")
        speedMax = try number("sync_speed_max")
        mismatchCount = try number("mismatch_cnt")
        degraded = Int(try number("degraded"))
        arrayState = try value("array_state")
        lastSyncAction = values["last_sync_action"].map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// The files `/sys/block/NAME/md/*` of a running array.
    public static let files = ["sync_action", "sync_completed", "sync_speed", "sync_speed_min", "sync_speed_max",
                               "mismatch_cnt", "degraded", "array_state", "last_sync_action"]

    /// Reads the files of array `name` (`md0`) from `root` (`/sys/block` normally).
    public static func read(array name: String, root: String = "/sys/block") throws(MDParseError) -> MDSysfs {
        var values: [String: String] = [:]
        for file in files {
            values[file] = try? String(contentsOfFile: "\(root)/\(name)/md/\(file)", encoding: .utf8)
        }
        return try MDSysfs(values: values)
    }

    /// Parses `key=value` lines (how fixtures store a sysfs snapshot).
    public static func parse(keyValueLines text: String) throws(MDParseError) -> MDSysfs {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            values[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return try MDSysfs(values: values)
    }
}
