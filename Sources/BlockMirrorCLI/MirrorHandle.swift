import Control
import Foundation
import BlockIO
import NBD
import MDBackend
import Mirror
import MirrorModel

/// What the verbs need from a mirror, whichever backend runs it: the engine's daemon (over its
/// control socket) or a kernel md array (through mdadm, /proc/mdstat and sysfs). Both answer with
/// the same types, so `status`, `detail` and `--json` read the same.
protocol MirrorHandle {
    var name: String { get }
    var backend: Backend { get }
    /// The status, and the daemon behind it (nil for md).
    func status() throws -> (MirrorStatus, DaemonInfo?)
    func add(_ target: String) throws -> String
    func fail() throws -> String
    func remove() throws -> String
    func speed(minimum: UInt64?, maximum: UInt64?) throws -> String
    /// `timeout`: seconds to wait for the answer (nil: as long as it takes).
    func check(repair: Bool, timeout: Int?) throws -> CheckReport
    /// Switches onto the in-sync target (`keepOld`: the old source stays as the target).
    func complete(keepOld: Bool) throws -> String
    /// Swaps the roles of an in-sync mirror.
    func reverse() throws -> String
    func stop(timeout: Int?) throws -> String
}

/// `--backend`: which kind of mirror a name refers to.
enum Backend: String, CaseIterable, Codable {
    case engine, md
}

/// A mirror of the engine: requests on its daemon's control socket.
struct EngineMirror: MirrorHandle {
    let name: String
    let directory: RuntimeDirectory
    var backend: Backend { .engine }

    private func send(_ request: ControlRequest, timeout: Int? = 30) throws -> ControlResponse {
        try RuntimeDirectory.validate(name: name)
        return try accepted(ControlClient.send(request, to: name, in: directory, timeout: timeout))
    }

    /// `response`, unless the daemon refused the request.
    private func accepted(_ response: ControlResponse) throws -> ControlResponse {
        guard response.ok else { throw CLIError("\(name): \(response.error ?? "request refused")") }
        return response
    }

    func status() throws -> (MirrorStatus, DaemonInfo?) {
        let response = try send(ControlRequest(verb: .status))
        guard let status = response.status else { throw CLIError("\(name): the daemon sent no status") }
        return (status, response.daemon)
    }

    func add(_ target: String) throws -> String {
        try send(ControlRequest(verb: .add, target: target)).message ?? "added \(target)"
    }

    func fail() throws -> String { try send(ControlRequest(verb: .fail)).message ?? "target marked faulty" }

    func remove() throws -> String { try send(ControlRequest(verb: .remove)).message ?? "target removed" }

    func speed(minimum: UInt64?, maximum: UInt64?) throws -> String {
        try send(ControlRequest(verb: .speed, speedMin: minimum, speedMax: maximum)).message ?? "speed limits changed"
    }

    func check(repair: Bool, timeout: Int?) throws -> CheckReport {
        guard let report = try send(ControlRequest(verb: .check, repair: repair), timeout: timeout).check else {
            throw CLIError("\(name): the daemon sent no check report")
        }
        return report
    }

    func complete(keepOld: Bool) throws -> String {
        try switching("complete") { try send(ControlRequest(verb: .complete, keepOld: keepOld), timeout: 300).message ?? "completed" }
    }

    func reverse() throws -> String {
        try switching("reverse") { try send(ControlRequest(verb: .reverse), timeout: 300).message ?? "reversed" }
    }

    /// A role switch asked with `body`: an answer that does not come in time leaves the outcome open.
    private func switching(_ verb: String, _ body: () throws -> String) throws -> String {
        do { return try body() } catch {
            guard (error as? ControlError)?.timedOut == true else { throw error }
            throw CLIError("\(name): the daemon did not answer \(verb) within 300 s: whether the roles switched is unknown "
                           + "(blockmirror status \(name) shows the source now; see \(directory.logFile(for: name)))")
        }
    }

    func stop(timeout: Int?) throws -> String {
        try RuntimeDirectory.validate(name: name)
        let response: ControlResponse
        do {
            response = try ControlClient.stop(name, in: directory, timeout: timeout)
        } catch {
            guard error.timedOut else { throw error }
            throw CLIError("\(name): the daemon did not finish stopping within \(timeout ?? 0) s; the stop is still queued "
                           + "(see \(directory.logFile(for: name)); kill it with SIGKILL only if it is wedged: the bitmap resumes the copy)")
        }
        return try accepted(response).message ?? "\(name): stopped"
    }
}

/// A kernel md RAID1 array.
struct MDMirror: MirrorHandle {
    let array: MDArray
    var name: String { array.name }
    var backend: Backend { .md }

    /// Why `uri` cannot be a leg of a kernel md array.
    static func noURIs(_ uri: String) -> String {
        "\(UntrustedText.escape(uri)): kernel md mirrors block devices, not NBD URIs (use the engine backend, or connect "
            + "the export to a device first: nbd-client or qemu-nbd --connect)"
    }

    func status() throws -> (MirrorStatus, DaemonInfo?) { (try array.status(), nil) }

    func add(_ target: String) throws -> String {
        if NBDURI.isURI(target) { throw CLIError(MDMirror.noURIs(target)) }
        try array.add(target)
        return "added \(target): recovery started (mdadm --add)"
    }

    func fail() throws -> String {
        let target = try array.status().target ?? "the target"
        try array.failTarget()
        return "marked \(target) faulty (mdadm --fail)"
    }

    func remove() throws -> String { "removed \(try array.removeTarget()) (mdadm --remove)" }

    func speed(minimum: UInt64?, maximum: UInt64?) throws -> String {
        try array.setSpeed(minimum: minimum, maximum: maximum)
        let limits = try array.status().speedLimits
        return "speed limits: min \(limits.minimum)K/sec, max \(limits.maximum.map { "\($0)K/sec" } ?? "unlimited")"
    }

    func check(repair: Bool, timeout: Int?) throws -> CheckReport { try array.check(repair: repair) }

    func complete(keepOld: Bool) throws -> String {
        guard !keepOld else {
            throw CLIError("\(name): md has nothing to switch with --keep-old: both members of a RAID1 are written on every write "
                           + "already; complete without it fails and removes the source (mdadm --fail, --remove)")
        }
        return try array.completeOntoTarget()
    }

    func reverse() throws -> String {
        throw CLIError("\(name): md cannot reverse: a RAID1's members have no source and target roles to swap (an in-sync "
                       + "array reads from either); use the engine backend for the way back with a bitmap")
    }

    func stop(timeout: Int?) throws -> String { try array.stop() }
}

extension RuntimeOptions {
    /// The mirror called `name`: `--backend` if given; otherwise the engine if a daemon of that
    /// name has a control socket, kernel md if an md array of that name exists, else the engine
    /// (whose error says there is no such mirror).
    func handle(for name: String) throws -> any MirrorHandle {
        if plan(named: name) != nil {
            throw CLIError("\(name) is a plan: name one of its volumes (blockmirror status \(name) lists them); status, speed, wait and stop take the plan")
        }
        switch backend ?? detectBackend(of: name) {
        case .engine: return EngineMirror(name: name, directory: directory)
        case .md: return MDMirror(array: try MDArray(name))
        }
    }

    private func detectBackend(of name: String) -> Backend {
        if FileManager.default.fileExists(atPath: directory.controlSocket(for: name)) { return .engine }
        let kernelName = name.hasPrefix("/dev/") ? String(name.dropFirst(5)) : name
        return FileManager.default.fileExists(atPath: "/sys/block/\(kernelName)/md") ? .md : .engine
    }

    /// Every mirror: the engine daemons of the runtime directory, then the kernel's RAID1 arrays.
    /// A runtime directory that is unsafe or cannot be read is an error, not an empty list.
    func allMirrors() throws -> [any MirrorHandle] {
        var handles: [any MirrorHandle] = []
        if backend != .md {
            handles += try directory.mirrorNames().map { EngineMirror(name: $0, directory: directory) }
        }
        if backend != .engine, let text = try? String(contentsOfFile: "/proc/mdstat", encoding: .utf8),
           let stat = try? MDStat(parsing: text) {
            for array in stat.arrays where array.level == "raid1" {
                if let md = try? MDArray(array.name) { handles.append(MDMirror(array: md)) }
            }
        }
        return handles
    }
}
