import Control
import Foundation

/// A running plan (`blockmirror migrate`), reached on its control socket: what `status`, `speed`,
/// `wait` and `stop` do when NAME is a plan rather than a mirror.
struct PlanHandle {
    let name: String
    let directory: RuntimeDirectory

    private func send(_ request: ControlRequest, timeout: Int? = 30) throws -> ControlResponse {
        try RuntimeDirectory.validate(name: name)
        let response = try ControlClient.send(request, toPlan: name, in: directory, timeout: timeout)
        guard response.ok else { throw CLIError("\(name): \(response.error ?? "request refused")") }
        return response
    }

    func status() throws -> PlanStatus {
        guard let plan = try send(ControlRequest(verb: .status)).plan else { throw CLIError("\(name): the plan's daemon sent no status") }
        return plan
    }

    /// Changes the plan's shared rate (`maximum`, 0: unlimited) and every volume's minimum.
    func speed(minimum: UInt64?, maximum: UInt64?) throws -> String {
        try send(ControlRequest(verb: .speed, speedMin: minimum, speedMax: maximum)).message ?? "speed limits changed"
    }

    /// Stops every volume and waits for the plan's process to exit; returns the volumes' reports.
    func stop(timeout: Int?) throws -> String {
        try RuntimeDirectory.validate(name: name)
        let response = try ControlClient.stop(name, plan: true, in: directory, timeout: timeout)
        guard response.ok else { throw CLIError("\(name): \(response.error ?? "stop refused")") }
        return response.message ?? "\(name): stopped"
    }
}

extension RuntimeOptions {
    /// The plan called `name`, if one runs here and no mirror has that name (a mirror's name wins).
    func plan(named name: String) -> PlanHandle? {
        guard backend != .md, !FileManager.default.fileExists(atPath: directory.controlSocket(for: name)),
              FileManager.default.fileExists(atPath: directory.planSocket(for: name)) else { return nil }
        return PlanHandle(name: name, directory: directory)
    }
}
