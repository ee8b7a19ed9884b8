import Foundation
import MDBackend
import MirrorModel
import Testing

/// The md parsers on real outputs (the seed article's run, and captures from the kernel-md VM:
/// Fixtures/README.md says how they were made).
@Suite struct MDParserTests {
    static func fixture(_ name: String) throws -> String {
        let url = try #require(Bundle.module.url(forResource: "Fixtures/\(name)", withExtension: nil), "fixture \(name)")
        return try String(contentsOf: url, encoding: .utf8)
    }

    @Test func seedMdstatDuringTheRecovery() throws {
        let stat = try MDStat(parsing: try Self.fixture("seed-mdstat-recovering.txt"))
        #expect(stat.personalities == ["raid1"])
        let array = try #require(stat.array("md126"))
        #expect(array.active && array.level == "raid1" && array.blocks == 104_857_600)
        #expect(array.members.map(\.device) == ["dm-17", "dm-16"] && array.members.map(\.number) == [2, 0])
        #expect(array.superblock == "super non-persistent" && array.raidDisks == 2 && array.workingDisks == 1 && array.health == "U_")
        let progress = try #require(array.progress)
        #expect(progress.action == "recovery" && progress.percent == 0.3 && progress.done == 355_264 && progress.total == 104_857_600)
        #expect(progress.finishMinutes == 39.2 && progress.speedKiBPerSecond == 44408)
    }

    @Test func seedMdstatInSync() throws {
        let array = try #require(try MDStat(parsing: try Self.fixture("seed-mdstat-clean.txt")).array("md126"))
        #expect(array.health == "UU" && array.workingDisks == 2 && array.progress == nil)
    }

    @Test func seedDetailDuringTheRecovery() throws {
        let detail = try MDDetail(parsing: try Self.fixture("seed-detail-recovering.txt"))
        #expect(detail.fields["Raid Level"] == "raid1" && detail.arraySizeKiB == 104_857_600)
        #expect(detail.stateWords == ["clean", "degraded", "recovering"] && detail.rebuildPercent == 1)
        #expect(detail.devices == [
            MDDetail.Device(number: 0, raidDevice: 0, state: "active sync", path: "/dev/dm-16"),
            MDDetail.Device(number: 2, raidDevice: 1, state: "spare rebuilding", path: "/dev/dm-17"),
        ])
    }

    @Test func seedAsAMirrorStatus() throws {
        let stat = try #require(try MDStat(parsing: try Self.fixture("seed-mdstat-recovering.txt")).array("md126"))
        let detail = try MDDetail(parsing: try Self.fixture("seed-detail-recovering.txt"))
        let sysfs = try MDSysfs.parse(keyValueLines: """
            sync_action=recover
            sync_completed=710528 / 209715200
            sync_speed=44408
            sync_speed_min=1000 (system)
            sync_speed_max=200000 (system)
            mismatch_cnt=0
            degraded=1
            array_state=clean
            """)
        let status = MDMirrorStatus.make(stat: stat, sysfs: sysfs, detail: detail)
        #expect(status.state == .recovering && status.source == "/dev/dm-16" && status.target == "/dev/dm-17")
        #expect(status.size == 104_857_600 * 1024 && status.regionsTotal == 102_400)
        #expect(status.bytesCopied == 710_528 * 512 && status.regionsDirty == 102_400 - 346)
        #expect(status.speedBytesPerSecond == 44408 * 1024 && status.etaSeconds == 39.2 * 60)
        #expect(status.speedLimits == SpeedLimits(minimum: 1000, maximum: 200_000))
    }

    @Test func garbageIsAnErrorNamingTheLine() {
        #expect(throws: MDParseError.self) { try MDStat(parsing: "md0 : exploded raid1 vda[0]\n") }
        #expect(throws: MDParseError.self) { try MDStat(parsing: "md0 : active raid1 vda[x]\n") }
        #expect(throws: MDParseError.self) { try MDDetail(parsing: "nothing here\n") }
        #expect(throws: MDParseError.self) { try MDSysfs.parse(keyValueLines: "sync_action=idle\n") }
    }
}
