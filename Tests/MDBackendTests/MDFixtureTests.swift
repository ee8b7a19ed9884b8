import MDBackend
import MirrorModel
import Testing

/// Every state captured from a real kernel md (Fixtures/README.md): mdstat, sysfs and
/// `mdadm --detail` read together give the mirror status the engine would report.
@Suite struct MDFixtureTests {
    struct Case: Sendable, CustomStringConvertible {
        let state: String
        var array = "md0"
        var sysfsFile: String? = nil
        let expected: MirrorState
        var target: String? = "/dev/vdb"
        var checking = false
        var mismatches: UInt64? = nil
        var description: String { state }
    }

    static let cases: [Case] = [
        Case(state: "degraded", expected: .degraded, target: nil),
        Case(state: "recovering", expected: .recovering),
        Case(state: "in-sync", expected: .inSync, mismatches: 0),
        Case(state: "check", expected: .inSync, checking: true),
        Case(state: "checked", expected: .inSync, mismatches: 0),
        Case(state: "faulty", expected: .targetFailed),
        Case(state: "removed", expected: .degraded, target: nil),
        Case(state: "assume-clean", expected: .inSync),
        Case(state: "mismatch", expected: .inSync, mismatches: 256),
        Case(state: "repaired", expected: .inSync, mismatches: 256),
        Case(state: "resync", expected: .recovering),
        Case(state: "resync-pending", expected: .recovering),
        Case(state: "resync-resumed", expected: .recovering),
        Case(state: "resync-delayed", array: "md2", expected: .recovering, target: "/dev/vdd2"),
        Case(state: "resync-delayed-md1", array: "md1", sysfsFile: "resync-delayed-md1", expected: .recovering, target: "/dev/vdd1"),
    ]

    @Test(arguments: cases)
    func realStatesMapToTheMirrorStatus(_ c: Case) throws {
        let mdstatName = c.state == "resync-delayed-md1" ? "resync-delayed" : c.state
        let stat = try MDStat(parsing: try MDParserTests.fixture("mdstat-\(mdstatName).txt"))
        let array = try #require(stat.array(c.array), "\(c.array) in mdstat-\(mdstatName).txt")
        let sysfs = try MDSysfs.parse(keyValueLines: try MDParserTests.fixture("sysfs-\(c.sysfsFile ?? c.state).txt"))
        let detail = try MDDetail(parsing: try MDParserTests.fixture("detail-\(c.state).txt"))
        let status = MDMirrorStatus.make(stat: array, sysfs: sysfs, detail: detail)
        #expect(status.state == c.expected)
        #expect(status.target == c.target)
        #expect(status.source.hasPrefix("/dev/vd") && status.source != status.target)
        #expect((status.check != nil) == c.checking)
        if let mismatches = c.mismatches { #expect(status.lastCheck?.mismatchedSectors == mismatches) }
        if c.state == "repaired" { #expect(status.lastCheck?.repair == true) }
        let syncActions = ["resync": "resync", "resync-resumed": "resync", "resync-pending": "resync=PENDING",
                           "resync-delayed": "resync=DELAYED", "resync-delayed-md1": "resync", "recovering": nil]
        if let expected = syncActions[c.state] { #expect(status.syncAction == expected) }
        if c.state == "checked" { #expect(status.lastCheck?.repair == false) }
        if c.expected == .recovering { #expect(status.regionsDirty > 0 && status.regionsDirty <= status.regionsTotal) }
        if c.expected == .inSync { #expect(status.regionsDirty == 0) }
        if c.expected == .targetFailed { #expect(status.failure?.contains("/dev/vdb") == true) }
    }

    @Test func recoveringProgressComesFromMdstat() throws {
        let array = try #require(try MDStat(parsing: try MDParserTests.fixture("mdstat-recovering.txt")).array("md0"))
        #expect(array.members.map(\.device) == ["vdb", "vda"] && array.members.map(\.number) == [2, 0])
        let sysfs = try MDSysfs.parse(keyValueLines: try MDParserTests.fixture("sysfs-recovering.txt"))
        #expect(sysfs.speedMax == 5000 && sysfs.syncCompleted?.done == 0 && sysfs.syncCompleted?.total == 1_048_576)
        let status = MDMirrorStatus.make(stat: array, sysfs: sysfs, detail: nil)
        #expect(status.bytesCopied == 16640 * 1024 && status.size == 512 << 20 && status.regionsTotal == 512)
        #expect(status.source == "/dev/vda" && status.target == "/dev/vdb" && status.speedBytesPerSecond == 5546 * 1024)
        #expect(status.etaSeconds == 90 && status.speedLimits == SpeedLimits(minimum: 1000, maximum: 5000))
    }

    @Test func pendingDelayedAndFaultyLines() throws {
        let delayed = try MDStat(parsing: try MDParserTests.fixture("mdstat-resync-delayed.txt"))
        #expect(delayed.arrays.map(\.name) == ["md2", "md1"])
        #expect(delayed.array("md2")?.pending == "resync=DELAYED" && delayed.array("md1")?.progress?.action == "resync")
        #expect(try MDStat(parsing: try MDParserTests.fixture("mdstat-resync-pending.txt")).array("md0")?.pending == "resync=PENDING")
        let faulty = try #require(try MDStat(parsing: try MDParserTests.fixture("mdstat-faulty.txt")).array("md0"))
        #expect(faulty.members.first { $0.device == "vdb" }?.faulty == true)
        let detail = try MDDetail(parsing: try MDParserTests.fixture("detail-faulty.txt"))
        #expect(detail.devices.contains(MDDetail.Device(number: 2, raidDevice: nil, state: "faulty", path: "/dev/vdb")))
        #expect(detail.devices.contains(MDDetail.Device(number: nil, raidDevice: 1, state: "removed", path: nil)))
        #expect(try MDDetail(parsing: try MDParserTests.fixture("detail-resync-pending.txt")).stateWords == ["clean", "resyncing (PENDING)"])
    }

    @Test func stoppedArrayIsGone() throws {
        #expect(try MDStat(parsing: try MDParserTests.fixture("mdstat-stopped.txt")).arrays.isEmpty)
        #expect(throws: MDParseError.self) { try MDDetail(parsing: try MDParserTests.fixture("detail-stopped.txt")) }
    }
}
