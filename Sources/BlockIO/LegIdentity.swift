import CLibAIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a leg *is* — the file or block device behind a path — as far as the kernel can tell, so a
/// bitmap file can record it and a restart can tell the same leg from one replaced since
/// (invariant 8), and so the target can be told apart from the source whatever path names it.
///
/// Files are their inode: number, birth time (statx) and inode generation (`FS_IOC_GETVERSION`)
/// where the filesystem keeps them, so a file re-created under a reused inode number still differs.
/// The filesystem's device number takes part only when neither birth time nor generation exists
/// (device numbers of LVM volumes may change across reboots). Block devices are what the kernel keeps
/// across reboots and changes when the device is re-created: a device-mapper UUID (an LVM volume's),
/// an md array's UUID, a loop device's backing file, a disk's WWID or serial, a partition's parent
/// and start; without any of them, only the device number (weak: see docs/INVARIANTS.md).
public struct LegIdentity: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        case file, blockDevice = "block-device"
        /// An export of an NBD server, known by its URI (`path`): what the server stores it in is
        /// not the client's to see.
        case nbd
        /// The kind in words, for messages.
        public var name: String {
            switch self {
            case .file: "file"
            case .blockDevice: "block device"
            case .nbd: "NBD export"
            }
        }
    }

    public var kind: Kind
    /// The path it was opened by (for people: the same leg may be reached by another path).
    public var path: String
    /// Files: `st_dev` of the filesystem and `st_ino`.
    public var filesystem: UInt64?
    public var inode: UInt64?
    /// Files: birth time, nanoseconds since the epoch, where the filesystem records it.
    public var birth: Int64?
    /// Files: the inode generation, where the filesystem has one.
    public var inodeGeneration: UInt32?
    /// Block devices: `major:minor`.
    public var deviceNumber: String?
    /// Block devices: the identifier that survives reboots (see the type's documentation), if any.
    /// NBD exports: the server's address and the export's name, spelled one way
    /// (`NBDURI.location`).
    public var stableID: String?

    public init(kind: Kind, path: String, filesystem: UInt64? = nil, inode: UInt64? = nil, birth: Int64? = nil,
                inodeGeneration: UInt32? = nil, deviceNumber: String? = nil, stableID: String? = nil) {
        self.kind = kind; self.path = path; self.filesystem = filesystem; self.inode = inode; self.birth = birth
        self.inodeGeneration = inodeGeneration; self.deviceNumber = deviceNumber; self.stableID = stableID
    }

    /// The identity of the file or block device open as `fd` (opened by `path`).
    public static func of(_ fd: FileDescriptor, path: String) -> Result<LegIdentity, Errno> {
        fd.status().flatMap { info in
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                var seconds: Int64 = 0, nanoseconds: UInt32 = 0, generation: UInt32 = 0
                let birth = bm_birth_time(fd.rawValue, &seconds, &nanoseconds) == 0 ? seconds &* 1_000_000_000 &+ Int64(nanoseconds) : nil
                return .success(LegIdentity(kind: .file, path: path, filesystem: UInt64(info.st_dev), inode: UInt64(info.st_ino),
                                            birth: birth,
                                            inodeGeneration: bm_inode_generation(fd.rawValue, &generation) == 0 ? generation : nil))
            case S_IFBLK:
                let number = DeviceNumber(info.st_rdev)
                return .success(LegIdentity(kind: .blockDevice, path: path, deviceNumber: number.description,
                                            stableID: SysfsBlockDevice(number).stableID))
            default:
                return .failure(.invalidArgument)
            }
        }
    }

    /// The identity of what `path` names now (links followed), without opening it: enough to
    /// compare with another leg (`sharesStorage`), not to record.
    public static func probe(_ path: String) -> Result<LegIdentity, Errno> {
        var info = stat()
        guard stat(path, &info) == 0 else { return .failure(.current) }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            return .success(LegIdentity(kind: .file, path: path, filesystem: UInt64(info.st_dev), inode: UInt64(info.st_ino),
                                        birth: birthTime(of: path)))
        case S_IFBLK:
            let number = DeviceNumber(info.st_rdev)
            return .success(LegIdentity(kind: .blockDevice, path: path, deviceNumber: number.description,
                                        stableID: SysfsBlockDevice(number).stableID))
        default: return .failure(.invalidArgument)
        }
    }

    /// What differs between `recorded` and this identity, for people ("inode 12 → 40"); empty
    /// when both name the same leg (the path does not count: a leg keeps its identity under
    /// another name).
    public func differences(from recorded: LegIdentity) -> [String] {
        guard kind == recorded.kind else { return ["a \(recorded.kind.rawValue) then, a \(kind.rawValue) now"] }
        var found: [String] = []
        func compare<T: Equatable>(_ what: String, _ old: T?, _ new: T?) {
            if let old, let new, old != new { found.append("\(what) \(old) → \(new)") }
        }
        switch kind {
        case .file:
            compare("inode", recorded.inode, inode)
            compare("birth time", recorded.birth, birth)
            compare("inode generation", recorded.inodeGeneration, inodeGeneration)
            let strong = (birth != nil && recorded.birth != nil) || (inodeGeneration != nil && recorded.inodeGeneration != nil)
            if !strong { compare("filesystem device", recorded.filesystem, filesystem) }
        case .blockDevice:
            if stableID != nil || recorded.stableID != nil {
                if stableID != recorded.stableID {
                    found.append("device id \(recorded.stableID ?? "none") → \(stableID ?? "none")")
                }
            } else {
                compare("device number", recorded.deviceNumber, deviceNumber)
            }
        case .nbd:
            // Where the export is, and its name (`stableID`): what names a remote export, however the
            // URI spells it and whatever credentials it carries.
            compare("server and export", recorded.stableID ?? recorded.path, stableID ?? path)
        }
        return found
    }

    /// Whether writing one would write the other: the same file, the same device, a loop device
    /// over the file, or the same NBD URI (a server reached two ways cannot be told).
    public func sharesStorage(with other: LegIdentity) -> Bool {
        switch (kind, other.kind) {
        case (.file, .file): return filesystem == other.filesystem && inode == other.inode
        case (.blockDevice, .blockDevice): return deviceNumber == other.deviceNumber
        case (.blockDevice, .file): return stableID.map { $0.hasPrefix(other.loopPrefix) } ?? false
        case (.file, .blockDevice): return other.stableID.map { $0.hasPrefix(loopPrefix) } ?? false
        case (.nbd, .nbd): return (stableID ?? path) == (other.stableID ?? other.path)
        case (.nbd, _), (_, .nbd): return false
        }
    }

    /// How a loop device's stable ID starts when this file backs it.
    private var loopPrefix: String { "loop:\(Self.fileKey(inode: inode ?? 0, birth: birth)):" }

    /// A file as a loop device's ID names it: inode and birth time (not the filesystem's device
    /// number, which may change across reboots).
    static func fileKey(inode: UInt64, birth: Int64?) -> String { "\(inode)@\(birth.map(String.init) ?? "?")" }

    /// A path's birth time (statx, links followed), nanoseconds since the epoch, if recorded.
    static func birthTime(of path: String) -> Int64? {
        var seconds: Int64 = 0, nanoseconds: UInt32 = 0
        return bm_birth_time_of_path(path, &seconds, &nanoseconds) == 0 ? seconds &* 1_000_000_000 &+ Int64(nanoseconds) : nil
    }

    /// For people: the path, and what identifies it.
    public var summary: String {
        switch kind {
        case .file: return "\(path) (inode \(inode.map(String.init) ?? "?"))"
        case .blockDevice: return "\(path) (device \(deviceNumber ?? "?")\(stableID.map { ", \($0)" } ?? ""))"
        case .nbd: return path
        }
    }
}

/// A device number split as the kernel's `MAJOR()`/`MINOR()` do.
struct DeviceNumber: CustomStringConvertible {
    let major: UInt64, minor: UInt64
    init(_ raw: dev_t) {
        let value = UInt64(raw)
        major = ((value >> 32) & 0xFFFF_F000) | ((value >> 8) & 0xFFF)
        minor = ((value >> 12) & 0xFFFF_FF00) | (value & 0xFF)
    }
    var description: String { "\(major):\(minor)" }
}

/// What sysfs says about one block device (`/sys/dev/block/MAJOR:MINOR`).
struct SysfsBlockDevice {
    let directory: String

    init(_ number: DeviceNumber) { directory = "/sys/dev/block/\(number)" }
    init(directory: String) { self.directory = directory }

    /// One attribute, trimmed; nil when absent or empty.
    func value(_ attribute: String) -> String? {
        guard let text = try? String(contentsOfFile: "\(directory)/\(attribute)", encoding: .utf8) else { return nil }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty ? nil : trimmed
    }

    /// The identifier that survives reboots and changes when the device is re-created.
    var stableID: String? {
        if let uuid = value("dm/uuid") { return "dm:\(uuid)" }
        if let uuid = value("md/uuid") { return "md:\(uuid)" }
        if let backing = loopBackingFile {
            var info = stat()
            let file = stat(backing, &info) == 0 ? LegIdentity.fileKey(inode: UInt64(info.st_ino), birth: LegIdentity.birthTime(of: backing))
                                                 : "deleted"
            return "loop:\(file):\(value("loop/offset") ?? "0"):\(value("loop/sizelimit") ?? "0")"
        }
        if value("partition") != nil {
            let parent = SysfsBlockDevice(directory: (URL(fileURLWithPath: directory).resolvingSymlinksInPath().path as NSString)
                .deletingLastPathComponent)
            guard let parentID = parent.stableID else { return nil }
            return "\(parentID):part\(value("partition") ?? "?")@\(value("start") ?? "?")"
        }
        for attribute in ["wwid", "device/wwid", "serial", "device/serial"] {
            if let id = value(attribute) { return "\(attribute.hasSuffix("wwid") ? "wwid" : "serial"):\(id)" }
        }
        return nil
    }

    /// A loop device's backing file, if this is one.
    var loopBackingFile: String? { value("loop/backing_file") }
}
