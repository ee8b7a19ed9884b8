import BlockIO
import CoreMetrics
import Dispatch
import NIOCore

/// Counts an export's operations in flight so `close` can wait for them and refuse new ones, and
/// records each one's latency (swift-metrics timer `blockmirror_request_duration_seconds`, dimension `op`;
/// a no-op unless the process bootstrapped a metrics backend before creating the export).
public final class InFlightTracker: Sendable {
    private struct State {
        var count = 0
        var closing = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())
    /// One latency timer per command, and one for FLUSH (no command).
    private let timers: [ExportCommand: CoreMetrics.Timer]
    private let flushTimer: CoreMetrics.Timer

    public init() {
        func timer(_ operation: String) -> CoreMetrics.Timer {
            CoreMetrics.Timer(label: "blockmirror_request_duration_seconds", dimensions: [("op", operation)])
        }
        timers = Dictionary(uniqueKeysWithValues: ExportCommand.allCases.map { ($0, timer($0.metricName)) })
        flushTimer = timer("flush")
    }

    /// Registers a new operation; false once draining has begun (the caller fails it with `.shuttingDown`).
    public func enter() -> Bool {
        state.withLock { state in
            guard !state.closing else { return false }
            state.count += 1
            return true
        }
    }

    /// Marks an operation finished.
    public func leave() {
        let waiters: [CheckedContinuation<Void, Never>] = state.withLock { state in
            state.count -= 1
            guard state.closing && state.count == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Refuses new operations and returns when the last one in flight has finished.
    public func drain() async {
        await withCheckedContinuation { continuation in
            let done: Bool = state.withLock { state in
                state.closing = true
                if state.count == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Operations in flight now.
    public var count: Int { state.withLock { $0.count } }

    /// Runs one operation of `export` as tracked: refused with `.shuttingDown` once draining,
    /// range-checked for `command` (when given), and counted until its future completes.
    public func run<T: Sendable>(
        _ export: some BlockExport, _ command: ExportCommand?, offset: UInt64, length: UInt64,
        on eventLoop: any EventLoop, _ body: (EventLoopPromise<T>) -> Void
    ) -> EventLoopFuture<T> {
        guard enter() else {
            return eventLoop.makeFailedFuture(BlockExportError(.shuttingDown, "\(export.exportDescription) is closing"))
        }
        if let command {
            do throws(BlockExportError) {
                try export.checkRange(offset: offset, length: length, for: command)
            } catch {
                leave()
                return eventLoop.makeFailedFuture(error)
            }
        }
        let promise = eventLoop.makePromise(of: T.self)
        let started = DispatchTime.now().uptimeNanoseconds
        let timer = command.flatMap { timers[$0] } ?? flushTimer
        body(promise)
        return promise.futureResult.always { _ in
            timer.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - started))
            self.leave()
        }
    }
}
