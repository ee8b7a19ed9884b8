import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What shows that a leg was written: recorded in the bitmap file when a mirror stops cleanly, and
/// compared (`compared(with:)`) when the bitmap is used again, so writes made outside the mirror in between (a degraded
/// run without the bitmap, `blockmirror serve OLD`, a mount, `dd`) make the bitmap distrusted
/// instead of read as "in sync" (invariant 8).
///
/// Files, and loop devices through their backing file: the size and the inode's change time
/// (ctime), which every write, truncation or metadata change moves. Other block devices: the size
/// and the kernel's counters of written and discarded sectors, which only compare within one boot
/// and one attachment of the device (boot id and disk sequence number): across a reboot nothing
/// can be told, and the comparison says so (docs/INVARIANTS.md).
public struct LegWriteTrace: Sendable, Equatable, Codable {
    public var size: UInt64
    /// Files (and loop devices' backing files): ctime, nanoseconds since the epoch.
    public var changed: Int64?
    /// Block devices: the boot the counters below belong to.
    public var bootID: String?
    /// Block devices: the kernel's disk sequence number (a new one each time the device is attached).
    public var diskSequence: UInt64?
    /// Block devices: write and discard requests, and sectors written and discarded, since boot.
    public var writeRequests: UInt64?
    public var sectorsWritten: UInt64?
    /// Why nothing but the size can show a write (an NBD export: its server reports no writes),
    /// for people.
    public var untraceable: String?

    public init(size: UInt64, changed: Int64? = nil, bootID: String? = nil, diskSequence: UInt64? = nil,
                writeRequests: UInt64? = nil, sectorsWritten: UInt64? = nil, untraceable: String? = nil) {
        self.size = size; self.changed = changed; self.bootID = bootID; self.diskSequence = diskSequence
        self.writeRequests = writeRequests; self.sectorsWritten = sectorsWritten; self.untraceable = untraceable
    }

    /// The trace of the file or device open as `fd`, whose size is `size` now.
    public static func of(_ fd: FileDescriptor, size: UInt64) -> LegWriteTrace {
        guard case .success(let info) = fd.status() else { return LegWriteTrace(size: size) }
        if info.st_mode & S_IFMT == S_IFREG { return LegWriteTrace(size: size, changed: changeTime(info)) }
        let device = SysfsBlockDevice(DeviceNumber(info.st_rdev))
        if let backing = device.loopBackingFile {
            var file = stat()
            return LegWriteTrace(size: size, changed: stat(backing, &file) == 0 ? changeTime(file) : nil)
        }
        // /sys/block/X/stat: reads (4 fields), writes: requests, merges, sectors, ticks; in flight,
        // io ticks, queue time; discards: requests, merges, sectors, ticks; flushes.
        let fields = (device.value("stat") ?? "").split(separator: " ").compactMap { UInt64($0) }
        guard fields.count >= 15 else { return LegWriteTrace(size: size) }
        return LegWriteTrace(size: size, bootID: bootID, diskSequence: device.value("diskseq").flatMap { UInt64($0) },
                             writeRequests: fields[4] &+ fields[11], sectorsWritten: fields[6] &+ fields[13])
    }

    /// What a comparison with an earlier trace tells.
    public enum Comparison: Sendable, Equatable {
        /// Nothing shows a write since.
        case unchanged
        /// Something was written since: what shows it, for people.
        case written(String)
        /// Nothing can be told (a block device across a reboot): why, for people.
        case unknown(String)
    }

    /// Whether anything shows writes since `recorded` was taken.
    public func compared(with recorded: LegWriteTrace) -> Comparison {
        if size != recorded.size { return .written("its size changed from \(recorded.size) to \(size) bytes") }
        if let why = untraceable ?? recorded.untraceable { return .unknown(why) }
        if let old = recorded.changed, let new = changed {
            return old == new ? .unchanged : .written("its change time moved from \(Self.format(old)) to \(Self.format(new))")
        }
        guard let old = recorded.sectorsWritten, let new = sectorsWritten, let oldRequests = recorded.writeRequests,
              let newRequests = writeRequests else {
            return .unknown("the kernel keeps no write counters for it")
        }
        guard let bootID, bootID == recorded.bootID else {
            return .unknown("the host rebooted since, and the kernel's write counters start again at each boot")
        }
        if let oldSequence = recorded.diskSequence, let newSequence = diskSequence, oldSequence != newSequence {
            return .written("the device was attached again (disk sequence \(oldSequence) → \(newSequence))")
        }
        if old != new || oldRequests != newRequests {
            return .written("\(newRequests &- oldRequests) write or discard requests (\(new &- old) sectors) reached it")
        }
        return .unchanged
    }

    private static func changeTime(_ info: stat) -> Int64 {
        Int64(info.st_ctim.tv_sec) &* 1_000_000_000 &+ Int64(info.st_ctim.tv_nsec)
    }

    /// `nanoseconds` since 1970 as a UTC time with nanoseconds, "2026-12-01T15:38:51.123456789Z"
    /// (`gmtime_r(3)`: a formatter object costs more than the whole comparison); a time beyond what
    /// it represents is given as the count.
    static func format(_ nanoseconds: Int64) -> String {
        var (seconds, fraction) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        if fraction < 0 { (seconds, fraction) = (seconds - 1, fraction + 1_000_000_000) }
        var time = time_t(seconds)
        var fields = tm()
        guard gmtime_r(&time, &fields) != nil else { return "\(nanoseconds) ns after 1970-01-01T00:00:00Z" }
        func padded(_ value: some BinaryInteger, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(padded(Int(fields.tm_year) + 1900, 4))-\(padded(fields.tm_mon + 1, 2))-\(padded(fields.tm_mday, 2))"
            + "T\(padded(fields.tm_hour, 2)):\(padded(fields.tm_min, 2)):\(padded(fields.tm_sec, 2)).\(padded(fraction, 9))Z"
    }

    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    static let bootID: String? = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
        .trimmingCharacters(in: .whitespacesAndNewlines)
}
