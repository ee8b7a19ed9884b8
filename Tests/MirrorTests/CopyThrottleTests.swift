import MirrorModel
import Testing
@testable import Mirror

/// The pacing rules on a synthetic clock: no sleeping, no timing asserts.
@Suite struct CopyThrottleTests {
    static let second: UInt64 = 1_000_000_000

    /// Without a maximum everything is admitted at once.
    @Test func unlimitedAdmitsEverything() {
        let throttle = CopyThrottle(limits: SpeedLimits(minimum: 1000, maximum: nil))
        for step in 0..<1000 { #expect(throttle.admit(1 << 20, now: UInt64(step)) == nil) }
    }

    /// With a maximum, the bytes admitted over a simulated minute never exceed the limit by more
    /// than one burst plus one request, and the copy never stalls for good.
    @Test func speedMaxBoundsTheAdmittedBytes() {
        let limitKiB: UInt64 = 10_000
        let throttle = CopyThrottle(limits: SpeedLimits(minimum: 1000, maximum: limitKiB))
        var now: UInt64 = 5 * Self.second
        let start = now
        var admitted: UInt64 = 0
        while now - start < 60 * Self.second {
            if let wait = throttle.admit(1 << 20, now: now) {
                #expect(wait > 0 && wait <= 2 * Self.second)
                now += wait
            } else {
                admitted += 1 << 20
            }
        }
        let allowed = Double(limitKiB * 1024) * 60
        #expect(Double(admitted) <= allowed + Double(limitKiB * 1024) * 0.2 + Double(1 << 20))
        #expect(Double(admitted) >= allowed * 0.9)
    }

    /// Three mirrors sharing one budget, each unlimited on its own, copy together within it over
    /// a simulated minute (plus the burst and one request each); raising the budget live lets them
    /// go faster at once, and a mirror's own lower limit still holds it back within the budget.
    @Test func mirrorsSharingABudgetStayWithinIt() {
        let budgetKiB: UInt64 = 30_000
        let budget = CopyBudget(name: "plan", maximum: budgetKiB)
        let throttles = (0..<3).map { _ in CopyThrottle(limits: SpeedLimits(minimum: 1000, maximum: nil), budgets: [budget]) }
        func run(seconds: UInt64, from start: UInt64) -> [UInt64] {
            var admitted = [UInt64](repeating: 0, count: throttles.count)
            var next = [UInt64](repeating: start, count: throttles.count)
            while let index = next.indices.min(by: { next[$0] < next[$1] }), next[index] - start < seconds * Self.second {
                if let wait = throttles[index].admit(1 << 20, now: next[index]) {
                    next[index] += wait
                } else {
                    admitted[index] += 1 << 20
                    next[index] += 1_000_000  // a copy takes a millisecond: far faster than the budget
                }
            }
            return admitted
        }
        var admitted = run(seconds: 60, from: Self.second)
        let allowed = Double(budgetKiB * 1024) * 60
        let slack = Double(budgetKiB * 1024) * CopyBudget.burstSeconds + 3 * Double(1 << 20)
        #expect(Double(admitted.reduce(0, +)) <= allowed + slack)
        #expect(Double(admitted.reduce(0, +)) >= allowed * 0.9)
        #expect(admitted.allSatisfy { $0 > 0 }, "a mirror got nothing: \(admitted)")

        budget.maximum = 2 * budgetKiB
        throttles[0].limits = SpeedLimits(minimum: 1000, maximum: 5_000)
        admitted = run(seconds: 60, from: 100 * Self.second)
        let total = Double(admitted.reduce(0, +))
        #expect(total <= 2 * allowed + 2 * slack && total >= 2 * allowed * 0.9, "\(admitted)")
        #expect(Double(admitted[0]) <= Double(5_000 * 1024) * 60 + slack, "the mirror's own maximum no longer held: \(admitted)")
    }

    /// A limit below one region per second still admits a region at a time (the bucket goes into debt).
    @Test func tinyLimitStillProgresses() {
        let throttle = CopyThrottle(limits: SpeedLimits(minimum: 1, maximum: 1))
        var now = Self.second
        var admitted = 0
        for _ in 0..<10 {
            while let wait = throttle.admit(1 << 20, now: now) { now += wait }
            admitted += 1
        }
        #expect(admitted == 10)
        // 10 MiB at 1 KiB/s takes about 9 MiB worth of seconds of waiting.
        #expect(now > 9 * 1024 * Self.second)
    }

    /// Under foreground I/O the copier yields (fewer copies in flight) only while it is above its
    /// minimum speed; below it, it keeps its full depth.
    @Test func yieldsToForegroundOnlyAboveSpeedMin() {
        let throttle = CopyThrottle(limits: SpeedLimits(minimum: 50_000, maximum: nil))
        let now = 10 * Self.second
        #expect(throttle.depth(full: 8, foregroundBusy: false, now: now) == 8)
        #expect(throttle.depth(full: 8, foregroundBusy: true, now: now) == 8)  // nothing copied yet: below the minimum
        for step in 0..<20 { throttle.completed(20 << 20, now: now - 5 * Self.second + UInt64(step) * Self.second / 4) }
        // 400 MiB in 5 s: far above 50,000 KiB/s.
        #expect(throttle.depth(full: 8, foregroundBusy: true, now: now) == 2)
        #expect(throttle.depth(full: 8, foregroundBusy: false, now: now) == 8)
        throttle.limits = SpeedLimits(minimum: 500_000, maximum: nil)
        #expect(throttle.depth(full: 8, foregroundBusy: true, now: now) == 8)
    }

    /// Threads read the clock before taking the throttle's lock, so calls can arrive with times
    /// older than the last one: that must neither trap (unsigned underflow) nor add tokens.
    @Test func clockReadingsOutOfOrderAreHarmless() {
        let throttle = CopyThrottle(limits: SpeedLimits(minimum: 1000, maximum: 100_000))
        let late = 50 * Self.second
        #expect(throttle.admit(1 << 20, now: late) == nil)
        let wait = throttle.admit(1 << 20, now: late - Self.second)
        #expect(wait != nil, "an older clock reading refilled the bucket")
        throttle.completed(1 << 20, now: late)
        #expect(throttle.bytesPerSecond(now: late - Self.second) >= 0)
        _ = throttle.depth(full: 8, foregroundBusy: true, now: late - 2 * Self.second)
        var meter = RateMeter()
        meter.add(1 << 20, now: late)
        #expect(meter.bytesPerSecond(now: late - Self.second / 2) >= 0)
    }

    @Test func rateMeterAveragesOverItsWindow() {
        var meter = RateMeter(slotNanos: Self.second / 4, slotCount: 20)
        #expect(meter.bytesPerSecond(now: Self.second) == 0)
        let start = 100 * Self.second
        for step in 0..<40 { meter.add(1 << 20, now: start + UInt64(step) * Self.second / 4) }  // 4 MiB/s for 10 s
        let rate = meter.bytesPerSecond(now: start + 10 * Self.second - 1)
        #expect(abs(rate - Double(4 << 20)) < Double(1 << 20))
        // Long after the last sample the window is empty.
        #expect(meter.bytesPerSecond(now: start + 60 * Self.second) == 0)
    }
}

@Suite struct SectorComparisonTests {
    @Test func countsAndMergesMismatchingSectors() {
        var a = [UInt8](repeating: 7, count: 8192), b = a
        b[0] = 1; b[700] = 1; b[1023] = 1  // sectors 0 and 1
        b[4096] = 1                          // sector 8
        b[8191] = 1                          // sector 15 (the last)
        let ranges = a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in
            SectorComparison.mismatches(pa.baseAddress!, pb.baseAddress!, count: 8192, base: 1 << 20)
        } }
        #expect(ranges == [CheckReport.Mismatch(offset: (1 << 20), length: 1024),
                           CheckReport.Mismatch(offset: (1 << 20) + 4096, length: 512),
                           CheckReport.Mismatch(offset: (1 << 20) + 7680, length: 512)])
        var report = CheckReport(repair: false, regionsTotal: 1)
        report.record(ranges)
        #expect(report.mismatchedSectors == 4)
        a = b
        #expect(a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in
            SectorComparison.mismatches(pa.baseAddress!, pb.baseAddress!, count: 8192, base: 0) } }.isEmpty)
    }
}
