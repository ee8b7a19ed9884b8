import Daemon
import MirrorModel
import Testing

/// What a stopped mirror reports: "a complete copy" only when it is one, and otherwise why not and
/// how to resume.
@Suite struct MirrorDaemonTests {
    private let settings = MirrorDaemon(name: "m0", source: "/dev/old", target: "/dev/new", bitmap: "/var/lib/m0.bitmap",
                                        regionSize: nil, verifyClean: false, limits: SpeedLimits())

    private func status(target: String? = "/dev/new", dirty: Int = 0, failure: String? = nil, lastCheck: CheckReport? = nil,
                        sourceProblem: String? = nil) -> MirrorStatus {
        MirrorStatus(state: .inSync, source: "/dev/old", target: target, size: 64 << 20, regionSize: 1 << 20, regionsTotal: 64,
                     regionsDirty: dirty, bytesCopied: 0, speedBytesPerSecond: 0, speedLimits: SpeedLimits(), foregroundInFlight: 0,
                     lastCheck: lastCheck, failure: failure, sourceProblem: sourceProblem)
    }

    @Test func onlyAnInSyncHealthyTargetIsACompleteCopy() {
        #expect(settings.report(status()) == "m0: in sync: /dev/new is a complete copy of /dev/old")
        #expect(settings.report(status(sourceProblem: "/dev/old was replaced"))
                    == "m0: in sync: /dev/new is a complete copy of /dev/old; warning: /dev/old was replaced")
        #expect(settings.report(status(dirty: 3))
                    == "m0: not in sync: /dev/new is incomplete (3 of 64 regions to copy); restart with --source /dev/old --target /dev/new --bitmap /var/lib/m0.bitmap to resume")
        #expect(settings.report(status(failure: "EIO at offset 4096")).hasPrefix("m0: not in sync (target failed: EIO at offset 4096): /dev/new is incomplete"),
                "a failed target is never complete, even with no region dirty")
        var check = CheckReport(repair: false, regionsTotal: 64)
        check.mismatchedSectors = 16
        check.regionsMarkedDirty = 2
        #expect(settings.report(status(dirty: 2, lastCheck: check)).contains("(2 of 64 regions to copy; the last check found 16 mismatched sectors)"))
        #expect(settings.report(status(target: nil))
                    == "m0: degraded: no target attached; /dev/old holds every write (add one with --target NEW --bitmap /var/lib/m0.bitmap)")
    }
}
