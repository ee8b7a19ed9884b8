import ArgumentParser
import Control
import Foundation

/// `wait PLAN` and `migrate PLAN --wait`: polls a plan until no volume starts, waits or copies,
/// printing each volume's outcome as it comes and the totals every 5 s. Exit status 0 when every
/// volume is in sync, 1 otherwise (each failure said with its reason).
struct PlanWaiter {
    let plan: PlanHandle
    let interval: Double

    func run() throws {
        var reported: [String: PlanStatus.Phase] = [:]
        var lastTotals = Date()
        while true {
            let status = try attempt { try plan.status() }
            for volume in status.volumes where volume.phase != reported[volume.name] && Self.ended(volume.phase) {
                reported[volume.name] = volume.phase
                let line = "\(volume.name): \(Self.succeeded(volume.phase) ? volume.phase == .inSync ? "in sync" : "completed" : volume.phase.rawValue)"
                    + (volume.error.map { ": \($0)" } ?? "")
                if Self.succeeded(volume.phase) { print(line) } else { FileHandle.standardError.write(Data("blockmirror: error: \(line)\n".utf8)) }
            }
            fflush(nil)
            if status.volumes.allSatisfy({ Self.ended($0.phase) }) {
                let failed = status.volumes.filter { !Self.succeeded($0.phase) }.count
                print("\(plan.name): \(status.volumes.count - failed) of \(status.volumes.count) volumes in sync")
                if failed > 0 { throw ExitCode(1) }
                return
            }
            if Date().timeIntervalSince(lastTotals) >= 5 {
                print("\(plan.name): " + StatusTotals(plan: status).line)
                lastTotals = Date()
            }
            Thread.sleep(forTimeInterval: interval)
        }
    }

    private static func ended(_ phase: PlanStatus.Phase) -> Bool { succeeded(phase) || phase == .failed || phase == .stopped }

    /// In sync, or switched onto the new storage.
    private static func succeeded(_ phase: PlanStatus.Phase) -> Bool { phase == .inSync || phase == .completed }
}
