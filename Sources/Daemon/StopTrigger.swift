import BlockIO
import Control

/// What ends a daemon: a signal, or a `stop` request on its control socket. A `stop` requester
/// waits for the daemon's final report, which `finish` delivers once the export is closed.
final class StopTrigger: Sendable {
    enum Reason: Sendable, CustomStringConvertible {
        case signal(Int32)
        case request
        var description: String {
            switch self {
            case .signal(let number): "signal \(number)"
            case .request: "stop request"
            }
        }
    }

    private let reason = OneShot<Reason>()
    private let final = OneShot<ControlResponse>()

    /// Triggers the stop (the first reason wins).
    func fire(_ reason: Reason) { self.reason.fulfil(reason) }

    /// Whether the stop was triggered.
    var fired: Bool { reason.value != nil }

    /// Returns when the daemon must stop, and why.
    func wait() async -> Reason { await reason.wait() }

    /// A `stop` request: triggers the stop and returns the daemon's final report.
    func request() async -> ControlResponse {
        fire(.request)
        return await final.wait()
    }

    /// Hands the final report to every `stop` requester.
    func finish(_ response: ControlResponse) { final.fulfil(response) }
}
