/// How long an event loop busy-polls before it blocks, adapted to the gaps it sees between
/// events, as qemu adapts an AioContext's polling time (`poll-max-ns`, util/aio-posix.c).
///
/// An event the loop would have caught by polling costs nothing to adapt; a gap the window did not
/// cover grows the window (from 4 µs, doubling) if polling that long would have caught it, and
/// halves it (down to 0, no polling) if it is longer than `maximum`. So a client that sends its
/// next request tens of microseconds after each reply, or a disk that answers in that time, keeps
/// the loop polling, while a loop whose events come milliseconds apart stops spinning after a few
/// of them and sleeps in the kernel as before. Pure: `LoopPoller` feeds it the gaps it measures.
public struct PollWindow: Sendable, Equatable {
    /// The longest the loop polls, in nanoseconds; 0 turns polling off.
    public let maximum: UInt64
    /// How long the loop polls now, in nanoseconds (0: it blocks at once).
    public private(set) var current: UInt64 = 0
    /// Where polling starts once a gap says it would pay (qemu's 4 µs).
    static let first: UInt64 = 4_000

    public init(maximum: UInt64) { self.maximum = maximum }

    /// The loop waited `gap` nanoseconds from its last event to this one (polling, then blocking).
    public mutating func waited(_ gap: UInt64) {
        guard gap > current else { return }  // polling caught it, or would have
        if gap > maximum {
            current /= 2
            if current < Self.first { current = 0 }
        } else {
            current = min(maximum, current == 0 ? Self.first : current * 2)
        }
    }
}
