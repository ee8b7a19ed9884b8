import Testing
@testable import BlockExport

/// The adaptive busy-poll window: it opens for gaps polling would have caught, doubles up to the
/// maximum, halves (then closes) for gaps longer than the maximum, and stays for gaps it covers.
@Suite struct PollWindowTests {
    @Test func opensAtFourMicrosecondsAndDoublesUpToTheMaximum() {
        var window = PollWindow(maximum: 100_000)
        #expect(window.current == 0)
        var lengths: [UInt64] = []
        for _ in 0..<7 {
            window.waited(90_000)  // a gap a 100 µs window would have caught
            lengths.append(window.current)
        }
        #expect(lengths == [4_000, 8_000, 16_000, 32_000, 64_000, 100_000, 100_000])
    }

    @Test func aGapTheWindowCoversChangesNothing() {
        var window = PollWindow(maximum: 100_000)
        for _ in 0..<4 { window.waited(90_000) }
        let before = window.current
        window.waited(before)
        window.waited(1)
        window.waited(0)
        #expect(window.current == before)
    }

    @Test func gapsLongerThanTheMaximumHalveItThenCloseIt() {
        var window = PollWindow(maximum: 64_000)
        for _ in 0..<5 { window.waited(60_000) }
        #expect(window.current == 64_000)
        var lengths: [UInt64] = []
        for _ in 0..<5 {
            window.waited(5_000_000)  // a client that comes back milliseconds later
            lengths.append(window.current)
        }
        #expect(lengths == [32_000, 16_000, 8_000, 4_000, 0])
        window.waited(5_000_000)
        #expect(window.current == 0)
    }

    @Test func aZeroMaximumNeverPolls() {
        var window = PollWindow(maximum: 0)
        for gap: UInt64 in [0, 1, 1_000, 4_000, 1_000_000] { window.waited(gap) }
        #expect(window.current == 0)
    }

    @Test func aMaximumBelowTheFirstStepPollsThatLong() {
        var window = PollWindow(maximum: 2_000)
        window.waited(1_500)
        #expect(window.current == 2_000)
        window.waited(3_000)
        #expect(window.current == 0)
    }
}
