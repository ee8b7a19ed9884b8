import ArgumentParser
import Control
import Foundation
import Mirror
#if canImport(Glibc)
import Glibc
#endif

/// `blockmirror status [NAME] [--json] [--watch]`: progress of one mirror or of every mirror, like
/// /proc/mdstat (and `watch cat /proc/mdstat`).
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show the state and progress of mirrors (like /proc/mdstat).")

    @Argument(help: "The mirror's or plan's name (default: every mirror in the runtime directory, with their totals).") var name: String?
    @Flag(name: .long, help: "Print JSON: one mirror's status object for NAME, {\"plan\", \"totals\"} for a plan, {\"mirrors\", \"totals\"} otherwise.") var json = false
    @Flag(name: .long, help: "Refresh every --interval seconds until interrupted (or until NAME stops).") var watch = false
    @Option(name: .long, help: "Seconds between refreshes with --watch.") var interval: Double = 1
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be from 0.1 to 3600 seconds") }
    }

    func run() throws {
        guard watch else {
            do { print(try snapshot()) } catch { throw exitWithError(error) }
            return
        }
        let terminal = isatty(1) != 0
        while true {
            let text: String
            do {
                text = try snapshot()
            } catch let error as ControlError where name != nil && error.notRunning {
                print("\(name!): no longer running (\(error))")
                return
            } catch {
                throw exitWithError(error)
            }
            // On a terminal, redraw in place like watch(1); otherwise one block per refresh.
            print(terminal ? "\u{1B}[H\u{1B}[2J" + text : text + "\n")
            fflush(nil)
            Thread.sleep(forTimeInterval: interval)
        }
    }

    /// The text (or JSON) of one refresh.
    private func snapshot() throws -> String {
        if let name, let plan = runtime.plan(named: name) {
            let status = try plan.status()
            guard json else { return StatusText.render(plan: status) }
            return String(decoding: ControlCodec.encode(PlanSnapshot(plan: status, totals: StatusTotals(plan: status))).dropLast(),
                          as: UTF8.self)
        }
        if let name {
            let (status, _) = try runtime.handle(for: name).status()
            return json ? NamedStatus(name: name, status: status).json : StatusText.render(name: name, status)
        }
        var statuses: [NamedStatus] = []
        for mirror in try runtime.allMirrors() {
            do {
                statuses.append(NamedStatus(name: mirror.name, status: try mirror.status().0))
            } catch {
                // A dead daemon's socket was just removed; say so and go on with the others.
                FileHandle.standardError.write(Data("blockmirror: error: \(error)\n".utf8))
            }
        }
        let totals = StatusTotals(statuses.map(\.status))
        if json { return String(decoding: ControlCodec.encode(Snapshot(mirrors: statuses, totals: totals)).dropLast(), as: UTF8.self) }
        if statuses.isEmpty { return "no mirrors running (runtime directory \(runtime.directory.path))" }
        return (statuses.map { StatusText.render(name: $0.name, $0.status) } + [totals.line]).joined(separator: "\n\n")
    }

    /// `status --json`: every mirror, and their totals.
    struct Snapshot: Encodable {
        let mirrors: [NamedStatus]
        let totals: StatusTotals
    }

    /// `status PLAN --json`: the plan's status, and its volumes' totals.
    struct PlanSnapshot: Encodable {
        let plan: PlanStatus
        let totals: StatusTotals
    }
}
