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
    }
    private let state = Mutex(State())
    /// Fulfilled when draining has begun and nothing is in flight.
    private let drained = OneShot<Void>()
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
        let last = state.withLock { state in
            state.count -= 1
            return state.closing && state.count == 0
        }
        if last { drained.fulfil() }
    }

    /// Refuses new operations and returns when the last one in flight has finished.
    public func drain() async {
        let idle = state.withLock { state in
            state.closing = true
            return state.count == 0
        }
        if idle { drained.fulfil() }
        await drained.wait()
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
