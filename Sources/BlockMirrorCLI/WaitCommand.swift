import ArgumentParser
import Control
import Foundation
import Mirror
#if canImport(Glibc)
import Glibc
#endif

/// `blockmirror wait NAME`: blocks until the recovery (and any check) is over, like `mdadm --wait`,
/// with a live progress line on a terminal. Exit status 0 when in sync, 1 otherwise.
struct WaitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait",
        abstract: "Wait until a mirror's recovery is over (like mdadm --wait), with a live progress bar on a terminal.",
        discussion: "A plan's volume still waiting for a copy slot is waited for until its copy is over. "
            + "Exit status: 0 in sync (a plan: every volume); 1 the target failed, no target is attached, or the mirror stopped (a plan: any volume failed or stopped).")

    @Argument(help: "The mirror's name, or a plan's: then until every volume's copy is over.") var name: String
    @Option(name: .long, help: "Seconds between polls.") var interval: Double = 0.5
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        guard interval >= 0.05, interval <= 3600 else { throw ValidationError("--interval must be from 0.05 to 3600 seconds") }
    }

    func run() throws {
        if let plan = runtime.plan(named: name) { return try PlanWaiter(plan: plan, interval: interval).run() }
        let terminal = isatty(1) != 0
        var lastPrinted = Date.distantPast
        var drewLine = false
        while true {
            let status = try attempt { try runtime.handle(for: name).status().0 }
            // A plan's volume waiting for a copy slot: its copy is still to come.
            let waiting = status.state == .degraded ? status.pendingCopy : nil
            let busy = status.state == .recovering || status.check != nil || waiting != nil
            if busy, let line = StatusText.progressLine(status) ?? waiting.map(StatusText.waitingLine) {
                if terminal {
                    print("\r\(name): \(line)\u{1B}[K", terminator: "")
                    drewLine = true
                } else if Date().timeIntervalSince(lastPrinted) >= 5 {
                    print("\(name): \(line)")
                    lastPrinted = Date()
                }
                fflush(nil)
            }
            if !busy {
                if drewLine { print() }
                switch status.state {
                case .inSync:
                    print("\(name): in sync")
                    return
                case .targetFailed: throw exitWithError(CLIError("\(name): target failed: \(status.failure ?? "")"))
                case .degraded: throw exitWithError(CLIError("\(name): degraded, no target to wait for"))
                case .stopping, .recovering: throw exitWithError(CLIError("\(name): stopping"))
                }
            }
            Thread.sleep(forTimeInterval: interval)
        }
    }
}
