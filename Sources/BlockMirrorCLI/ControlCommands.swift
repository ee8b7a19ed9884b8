import ArgumentParser
import Control
import Foundation
import Mirror
import MirrorModel

/// `blockmirror add NAME NEW`: attaches a target to a running mirror; the recovery starts.
struct AddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Add a target to a running mirror and start the recovery (like mdadm --add).")

    @Argument(help: "The mirror's name.") var name: String
    @Argument(help: "The target device or image (NEW), at least as large as the source.") var target: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let path = absolutePath(target)
        print("\(name): " + (try attempt { try runtime.handle(for: name).add(path) }))
    }
}

/// A status with its mirror's name, encoded as one flat JSON object (`name` plus `MirrorStatus`).
struct NamedStatus: Encodable {
    let name: String
    let status: MirrorStatus

    private enum Key: String, CodingKey { case name }

    func encode(to encoder: any Encoder) throws {
        try status.encode(to: encoder)
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(name, forKey: .name)
    }

    var json: String { String(decoding: ControlCodec.encode(self).dropLast(), as: UTF8.self) }
}

/// `blockmirror check NAME [--repair]`: compares source and target; exit status 3 on mismatches.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Compare source and target of an in-sync mirror, like md's check (mismatch_cnt in 512-byte sectors).",
        discussion: "Exit status: 0 no mismatch (or all repaired with --repair), 3 mismatches found, 1 the check could not run.")

    @Argument(help: "The mirror's name.") var name: String
    @Flag(name: .long, help: "Rewrite mismatching sectors on the target from the source (md's repair).") var repair = false
    @Flag(name: .long, help: "Print the report as JSON.") var json = false
    @Option(name: .long, help: "Seconds to wait for the check to end (default: as long as it takes).") var timeout: Int?
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let report = try attempt { try runtime.handle(for: name).check(repair: repair, timeout: timeout) }
        if json {
            print(String(decoding: ControlCodec.encode(report).dropLast(), as: UTF8.self))
        } else {
            var line = "\(name): \(repair ? "repair" : "check") \(report.interrupted == nil ? "complete" : "interrupted: \(report.interrupted!)"): "
                + "mismatch_cnt=\(report.mismatchedSectors) (\(report.regionsChecked) of \(report.regionsTotal) regions compared"
                + (report.regionsSkipped > 0 ? ", \(report.regionsSkipped) still to copy" : "") + ")"
            if repair { line += ", \(report.repairedSectors) sectors repaired" }
            print(line)
            for mismatch in report.mismatches {
                print("  mismatch at offset \(mismatch.offset), \(mismatch.length) bytes")
            }
        }
        if let why = report.interrupted { throw exitWithError(CLIError("\(name): \(repair ? "repair" : "check") interrupted: \(why)")) }
        if report.mismatchedSectors > 0 && !repair { throw ExitCode(3) }
    }
}

/// `blockmirror speed NAME [--min K] [--max K|unlimited]`: changes the copy's limits live.
struct SpeedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "speed", abstract: "Change a mirror's copy speed limits while it runs (KiB/s, like md's sync_speed_min/max).")

    @Argument(help: "The mirror's name.") var name: String
    @Option(name: .long, help: "KiB/s the copy keeps under client load.") var min: UInt64?
    @Option(name: .long, help: "KiB/s the copy never exceeds, or \"unlimited\".") var max: String?
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        guard min != nil || max != nil else { throw ValidationError("give --min, --max or both") }
        if let max, max != "unlimited", UInt64(max) == nil || UInt64(max) == 0 {
            throw ValidationError("--max must be a positive number of KiB/s or \"unlimited\" (got \(max))")
        }
    }

    func run() throws {
        let maximum = max.map { $0 == "unlimited" ? 0 : UInt64($0)! }
        print("\(name): " + (try attempt { try runtime.handle(for: name).speed(minimum: min, maximum: maximum) }))
    }
}

/// `blockmirror stop NAME`: drains and stops the daemon; says whether the target is a complete copy.
struct StopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop a mirror: drain, flush both devices, save the bitmap (like mdadm --stop).")

    @Argument(help: "The mirror's name.") var name: String
    @Option(name: .long, help: "Seconds to wait for the daemon to finish stopping.") var timeout: Int = 300
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be at least 1 second") }
    }

    func run() throws {
        print(try attempt { try runtime.handle(for: name).stop(timeout: timeout) })
    }
}

/// `blockmirror detail NAME [--json]`: everything about one mirror, like `mdadm --detail`.
struct DetailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detail", abstract: "Show a mirror in detail: sizes, state, devices and their roles (like mdadm --detail).")

    @Argument(help: "The mirror's name.") var name: String
    @Flag(name: .long, help: "Print JSON: {\"name\", \"status\", \"daemon\"}.") var json = false
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let (handle, status, daemon) = try attempt {
            let handle = try runtime.handle(for: name)
            let (status, daemon) = try handle.status()
            return (handle, status, daemon)
        }
        if json {
            print(String(decoding: ControlCodec.encode(Detail(name: name, backend: handle.backend, status: status, daemon: daemon)).dropLast(),
                         as: UTF8.self))
        } else {
            print(DetailText.render(name: name, status, daemon: daemon, backend: handle.backend))
        }
    }

    struct Detail: Encodable {
        let name: String
        let backend: Backend
        let status: MirrorStatus
        let daemon: DaemonInfo?
    }
}

/// `blockmirror list [--json]`: the mirrors running, one line each.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the running mirrors, one line each.")

    @Flag(name: .long, help: "Print a JSON array of {\"name\", \"backend\", \"state\", \"source\", \"target\", \"exports\", \"pid\"}.") var json = false
    @OptionGroup var runtime: RuntimeOptions

    struct Entry: Encodable {
        let name: String, backend: String, state: MirrorState, source: String, target: String?, exports: [String], pid: Int32?
    }

    func run() throws {
        var entries: [Entry] = []
        for mirror in try attempt({ try runtime.allMirrors() }) {
            do {
                let (status, daemon) = try mirror.status()
                entries.append(Entry(name: mirror.name, backend: mirror.backend.rawValue, state: status.state, source: status.source,
                                     target: status.target, exports: daemon?.exports ?? [], pid: daemon?.pid))
            } catch {
                // A dead daemon's socket was just removed; say so and go on with the others.
                FileHandle.standardError.write(Data("blockmirror: error: \(error)\n".utf8))
            }
        }
        if json {
            print(String(decoding: ControlCodec.encode(entries).dropLast(), as: UTF8.self))
            return
        }
        for entry in entries {
            print("\(entry.name)\t\(entry.state.rawValue)\t\(entry.source) -> \(entry.target ?? "missing")\t\(entry.exports.first ?? entry.backend)")
        }
    }
}

/// `blockmirror fail NAME`: marks the target faulty, like `mdadm --fail`.
struct FailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "Mark a mirror's target faulty (like mdadm --fail): writes go to the source alone.")

    @Argument(help: "The mirror's name.") var name: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        print("\(name): " + (try attempt { try runtime.handle(for: name).fail() }))
    }
}

/// `blockmirror remove NAME`: detaches a failed target, like `mdadm --remove`.
struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Remove a failed target from a mirror (like mdadm --remove); add a new one with add.")

    @Argument(help: "The mirror's name.") var name: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        print("\(name): " + (try attempt { try runtime.handle(for: name).remove() }))
    }
}
