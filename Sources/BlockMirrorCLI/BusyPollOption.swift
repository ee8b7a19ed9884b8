import ArgumentParser
import NIOCore

/// `--busy-poll MICROSECONDS` (`serve` and `build`): how long an event loop spins after its I/O
/// before it sleeps, at most (`LoopPoller`; the length adapts to the gaps the loop sees).
struct BusyPollOption: ParsableArguments {
    /// The default: long enough to cover a fast disk's 4 KiB read plus a client's turnaround.
    static let defaultMicroseconds = 100

    @Option(name: .long, help: ArgumentHelp(
        "Spin up to this long after disk I/O or a reply, watching for the completion or the client's next request, instead of sleeping in the kernel (0: never). Cuts a small request's latency by a wake-up or two; adapts, so a loop whose events come milliseconds apart soon stops spinning.",
        valueName: "MICROSECONDS"))
    var busyPoll: Int = defaultMicroseconds

    func validate() throws {
        guard (0...10_000).contains(busyPoll) else {
            throw ValidationError("--busy-poll must be 0 (off) to 10000 microseconds (got \(busyPoll))")
        }
    }

    var amount: TimeAmount { .microseconds(Int64(busyPoll)) }
}
