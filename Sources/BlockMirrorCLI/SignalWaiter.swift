import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Waits for SIGINT or SIGTERM, delivered through Dispatch so no handler runs in signal context.
final class SignalWaiter: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []

    /// Returns the signal's number when one of `signals` arrives.
    func wait(for signals: [Int32] = [SIGINT, SIGTERM]) async -> Int32 {
        await withCheckedContinuation { continuation in
            let once = DispatchQueue(label: "blockmirror.signals")
            var resumed = false
            for number in signals {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: once)
                source.setEventHandler {
                    guard !resumed else { return }
                    resumed = true
                    continuation.resume(returning: number)
                }
                source.resume()
                sources.append(source)
            }
        }
    }
}
