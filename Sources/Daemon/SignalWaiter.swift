import BlockIO
import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// SIGINT and SIGTERM, delivered through Dispatch so no handler runs in signal context.
///
/// `install()` takes the signals over at once (before the daemon says it is ready, so a signal
/// sent right after the URI line is not fatal); `wait()` returns the first one that arrived.
final class SignalWaiter: @unchecked Sendable {
    /// Kept alive here; only `install` (called once, before any `wait`) touches it.
    private var sources: [any DispatchSourceSignal] = []
    private let received = OneShot<Int32>()
    private let queue = DispatchQueue(label: "blockmirror.signals")

    /// Ignores the default action of `signals` and starts recording them.
    func install(_ signals: [Int32] = [SIGINT, SIGTERM]) {
        for number in signals {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [received] in received.fulfil(number) }
            source.resume()
            sources.append(source)
        }
    }

    /// Returns the first signal received (at once if one already was).
    func wait() async -> Int32 { await received.wait() }
}
