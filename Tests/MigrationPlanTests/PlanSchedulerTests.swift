import Control
import MirrorModel
import Testing
@testable import MigrationPlan

/// The scheduler on made-up volume states: the order, the slots (copies started by hand count
/// too), phases that follow the mirrors' live states, and a stop.
@Suite struct PlanSchedulerTests {
    typealias Live = PlanScheduler.Live

    static func serving(_ state: MirrorState, switched: Bool = false, failure: String? = nil) -> Live {
        .serving(state, switched: switched, failure: failure)
    }

    @Test func copiesStartInOrderUpToTheSlots() {
        var scheduler = PlanScheduler(order: ["a", "b", "c", "d"], concurrency: 2)
        var live: [String: Live] = ["a": Self.serving(.degraded), "b": .starting, "c": Self.serving(.degraded), "d": Self.serving(.degraded)]
        #expect(scheduler.next(live) == ["a", "c"])
        #expect(scheduler.phase("a", live["a"]!) == .copying && scheduler.phase("b", .starting) == .starting)
        #expect(scheduler.next(live).isEmpty, "both slots are taken while a and c attach")
        scheduler.attached("a")
        scheduler.attached("c")
        live["a"] = Self.serving(.recovering)
        live["c"] = Self.serving(.inSync)
        live["b"] = Self.serving(.degraded)
        #expect(scheduler.next(live) == ["b"])
        #expect(scheduler.peakCopying == 2)
    }

    /// A copy started by hand (`add`) takes a slot: the plan starts fewer beside it.
    @Test func aCopyStartedByHandTakesASlot() {
        var scheduler = PlanScheduler(order: ["a", "b", "c"], concurrency: 1)
        let live: [String: Live] = ["a": Self.serving(.degraded), "b": Self.serving(.recovering), "c": Self.serving(.degraded)]
        #expect(scheduler.phase("b", live["b"]!) == .copying)
        #expect(scheduler.next(live).isEmpty)
        scheduler.observe(live)
        #expect(scheduler.peakCopying == 1)
    }

    /// Phases follow the live state: a target failed after in sync is failed; a check that sends a
    /// volume back to copying is copying; a failed attach fixed by hand copies and ends in sync.
    @Test func phasesFollowTheMirrorsLiveState() {
        var scheduler = PlanScheduler(order: ["a"], concurrency: 1)
        #expect(scheduler.next(["a": Self.serving(.degraded)]) == ["a"])
        scheduler.attachFailed("a", "cannot attach its target nbd://x: refused")
        #expect(scheduler.phase("a", Self.serving(.degraded)) == .failed)
        #expect(scheduler.error("a", Self.serving(.degraded)) == "cannot attach its target nbd://x: refused")
        #expect(scheduler.next(["a": Self.serving(.degraded)]).isEmpty, "a failed volume is not started again")
        #expect(scheduler.phase("a", Self.serving(.recovering)) == .copying, "added by hand")
        #expect(scheduler.phase("a", Self.serving(.inSync)) == .inSync)
        #expect(scheduler.phase("a", Self.serving(.targetFailed, failure: "EIO at 4096")) == .failed)
        #expect(scheduler.error("a", Self.serving(.targetFailed, failure: "EIO at 4096")) == "its target failed: EIO at 4096")
        #expect(scheduler.phase("a", Self.serving(.degraded, switched: true)) == .completed)
        #expect(scheduler.phase("a", .failedToStart("cannot start: no such file")) == .failed)
        #expect(scheduler.phase("a", .stopped) == .stopped)
    }

    /// A volume checked after a restart is not started meanwhile; a stopping plan starts nothing.
    @Test func resumingVolumesWaitAndAStoppingPlanStartsNothing() {
        var scheduler = PlanScheduler(order: ["a", "b"], concurrency: 2)
        let live: [String: Live] = ["a": Self.serving(.degraded), "b": Self.serving(.degraded)]
        scheduler.resume("a")
        #expect(scheduler.next(live) == ["b"])
        scheduler.resumed("a")
        scheduler.stop()
        #expect(scheduler.next(live).isEmpty)
    }
}
