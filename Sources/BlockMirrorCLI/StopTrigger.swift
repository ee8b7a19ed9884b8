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

    private struct State {
        var reason: Reason?
        var waiter: CheckedContinuation<Reason, Never>?
        var requesters: [CheckedContinuation<ControlResponse, Never>] = []
        var final: ControlResponse?
    }
    private let state = Mutex(State())

    /// Triggers the stop (the first reason wins).
    func fire(_ reason: Reason) {
        let waiter: CheckedContinuation<Reason, Never>? = state.withLock { state in
            guard state.reason == nil else { return nil }
            state.reason = reason
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: reason)
    }

    /// Returns when the daemon must stop, and why.
    func wait() async -> Reason {
        await withCheckedContinuation { continuation in
            let reason: Reason? = state.withLock { state in
                if let reason = state.reason { return reason }
                state.waiter = continuation
                return nil
            }
            if let reason { continuation.resume(returning: reason) }
        }
    }

    /// A `stop` request: triggers the stop and returns the daemon's final report.
    func request() async -> ControlResponse {
        fire(.request)
        let response: ControlResponse = await withCheckedContinuation { continuation in
            let final: ControlResponse? = state.withLock { state in
                if let final = state.final { return final }
                state.requesters.append(continuation)
                return nil
            }
            if let final { continuation.resume(returning: final) }
        }
        return response
    }

    /// Hands the final report to every `stop` requester.
    func finish(_ response: ControlResponse) {
        let requesters: [CheckedContinuation<ControlResponse, Never>] = state.withLock { state in
            state.final = response
            defer { state.requesters = [] }
            return state.requesters
        }
        for requester in requesters { requester.resume(returning: response) }
    }
}
