import Testing
@testable import MigrationPlan

/// Plans as admins write them: the issue's example, every key, and the mistakes a plan must name
/// (the volume and the key) — refusing the whole plan only when the mistake is the plan's own.
@Suite struct MigrationPlanTests {
    static let example = """
        concurrency = 2                                # mirrors copying at once
        speed_max = 200000                             # KiB/s over all mirrors
        state_dir = "/var/lib/blockmirror"             # bitmaps, kept across reboots
        listen = "unix:/run/blockmirror/{name}.sock"   # each volume's export ({name} replaced)
        [[volume]]
        name = "vm1"
        source = "/dev/old/vm1"
        target = "/dev/new/vm1"                        # or an NBD URI
        """

    @Test func theIssuesExampleReads() throws {
        let plan = try MigrationPlan(toml: Self.example, file: "/etc/blockmirror/san-move.toml")
        #expect(plan.name == "san-move")
        #expect(plan.concurrency == 2)
        #expect(plan.speedMax == 200_000)
        #expect(plan.stateDirectory == "/var/lib/blockmirror")
        #expect(plan.rejected.isEmpty)
        #expect(plan.volumes == [MigrationPlan.Volume(
            name: "vm1", source: "/dev/old/vm1", target: "/dev/new/vm1", listen: ["unix:/run/blockmirror/vm1.sock"],
            bitmap: "/var/lib/blockmirror/vm1.bitmap", group: nil, priority: 0, speedMin: 1000, speedMax: nil)])
    }

    @Test func everyKeyReadsAndPrioritiesOrderTheCopies() throws {
        let plan = try MigrationPlan(toml: """
            name = "wave1"
            concurrency = 3
            speed_min = 2000
            listen = ["unix:/srv/{name}.sock", "tcp:127.0.0.1:0"]
            [[group]]
            name = "array1"
            speed_max = 50000
            [[volume]]
            name = "low"
            source = "/dev/a"
            target = "nbds://new.example/low?tls-psk-file=/etc/k.psk&tls-username=m"
            [[volume]]
            name = "high"
            source = "/dev/b"
            target = "/dev/c"
            group = "array1"
            priority = 10
            bitmap = "/srv/high.bm"
            speed_min = 3000
            speed_max = 9000
            listen = "tcp:[::1]:10809"
            [[volume]]
            name = "mid"
            source = "nbd://old.example/mid"
            target = "/dev/d"
            priority = 10
            """, file: "plan.toml")
        #expect(plan.name == "wave1")
        #expect(plan.groups == [MigrationPlan.Group(name: "array1", speedMax: 50_000)])
        #expect(plan.copyOrder.map(\.name) == ["high", "mid", "low"])
        let high = try #require(plan.volumes.first { $0.name == "high" })
        #expect(high.group == "array1" && high.bitmap == "/srv/high.bm" && high.speedMin == 3000 && high.speedMax == 9000)
        #expect(high.listen == ["tcp:[::1]:10809"])
        #expect(plan.volumes[0].listen == ["unix:/srv/low.sock", "tcp:127.0.0.1:0"])
        #expect(plan.volumes[0].speedMin == 2000)
    }

    /// A volume's mistakes refuse that volume, naming it and the key; the others are kept.
    @Test func aVolumesMistakeRefusesThatVolumeAlone() throws {
        let plan = try MigrationPlan(toml: """
            [[volume]]
            name = "good"
            source = "/dev/a"
            target = "/dev/b"
            [[volume]]
            name = "typo"
            source = "/dev/c"
            tagret = "/dev/d"
            [[volume]]
            name = "wrongtype"
            source = "/dev/e"
            target = "/dev/f"
            priority = "high"
            [[volume]]
            source = "/dev/g"
            target = "/dev/h"
            [[volume]]
            name = "good"
            source = "/dev/i"
            target = "/dev/j"
            [[volume]]
            name = "nogroup"
            source = "/dev/k"
            target = "/dev/l"
            group = "array9"
            [[volume]]
            name = "relative"
            source = "old.img"
            target = "/dev/m"
            [[volume]]
            name = "bad/name"
            source = "/dev/n"
            target = "/dev/o"
            [[volume]]
            name = "badlisten"
            source = "/dev/p"
            target = "/dev/q"
            listen = "udp:1.2.3.4:5"
            """, file: "plan.toml")
        #expect(plan.volumes.map(\.name) == ["good"])
        let reasons = plan.rejected.map(\.description)
        #expect(reasons.count == 8, "\(reasons)")
        #expect(reasons[0].hasPrefix("volume \"typo\": unknown key \"tagret\" (did you mean \"target\"?)"), "\(reasons[0])")
        #expect(reasons[1] == "volume \"wrongtype\": \"priority\" must be an integer, not a string", "\(reasons[1])")
        #expect(reasons[2] == "volume #4: \"name\" is missing", "\(reasons[2])")
        #expect(reasons[3].hasPrefix("volume \"good\": \"name\": \"good\" is the name of an earlier volume"), "\(reasons[3])")
        #expect(reasons[4] == "volume \"nogroup\": \"group\": no [[group]] is named \"array9\"", "\(reasons[4])")
        #expect(reasons[5].contains("\"source\": old.img is neither an absolute path nor an NBD URI"), "\(reasons[5])")
        #expect(reasons[6].hasPrefix("volume \"bad/name\": \"name\":"), "\(reasons[6])")
        #expect(reasons[7].hasPrefix("volume \"badlisten\": \"listen\":"), "\(reasons[7])")
    }

    /// What is the plan's own refuses it whole, with the file, the key and (for TOML) the line.
    @Test func thePlansOwnMistakesRefuseIt() {
        func refusal(_ text: String) -> String {
            do {
                _ = try MigrationPlan(toml: text, file: "p.toml")
                return "accepted"
            } catch {
                return error.description
            }
        }
        #expect(refusal("concurrency = \n").hasPrefix("plan p.toml: not valid TOML at line 1, column"))
        #expect(refusal("concurency = 2\n[[volume]]\nname=\"a\"\nsource=\"/a\"\ntarget=\"/b\"")
                .hasPrefix("plan p.toml: unknown key \"concurency\" (did you mean \"concurrency\"?)"))
        #expect(refusal("concurrency = \"two\"\n") == "plan p.toml: \"concurrency\" must be an integer, not a string")
        #expect(refusal("concurrency = 0\n") == "plan p.toml: \"concurrency\" must be from 1 to 1024 (got 0)")
        #expect(refusal("speed_max = -5\n") == "plan p.toml: \"speed_max\" must be at least 1 (got -5)")
        #expect(refusal("name = \"\"\n") == "plan p.toml: \"name\" is empty")
        #expect(refusal("concurrency = 2\n") == "plan p.toml: no [[volume]] to migrate")
        #expect(refusal("[[group]]\nspeed_max = 5\n[[volume]]\nname=\"a\"\nsource=\"/a\"\ntarget=\"/b\"") == "plan p.toml: group #1: \"name\" is missing")
        #expect(refusal("volume = 3\n") == "plan p.toml: \"volume\" must be an array of tables ([[volume]]), not an integer")
    }

    /// What two volumes must not share, and names the plan may not take.
    @Test func volumesMayNotShareStorageAndThePlanNotAVolumesName() throws {
        let plan = try MigrationPlan(toml: """
            [[volume]]
            name = "a"
            source = "/dev/a"
            target = "nbd://new/x"
            [[volume]]
            name = "sametarget"
            source = "/dev/b"
            target = "nbd://new/x"
            [[volume]]
            name = "chain"
            source = "nbd://new/x"
            target = "/dev/c"
            [[volume]]
            name = "relative"
            source = "/dev/d"
            target = "/dev/e"
            listen = "unix:relative.sock"
            [[volume]]
            name = "port"
            source = "/dev/f"
            target = "/dev/g"
            listen = "tcp:127.0.0.1:10809"
            [[volume]]
            name = "sameport"
            source = "/dev/h"
            target = "/dev/i"
            listen = "tcp:127.0.0.1:10809"
            """, file: "p.toml")
        #expect(plan.volumes.map(\.name) == ["a", "port"])
        let reasons = plan.rejected.map(\.description)
        #expect(reasons == ["volume \"sametarget\": \"target\": nbd://new/x is volume \"a\"'s target too",
                            "volume \"chain\": \"source\": nbd://new/x is volume \"a\"'s target too",
                            "volume \"relative\": \"listen\": unix:relative.sock is not an absolute path",
                            "volume \"sameport\": \"listen\": tcp:127.0.0.1:10809 is volume \"port\"'s too"], "\(reasons)")
        #expect(throws: PlanError.self) { try MigrationPlan(toml: "name = \"a\"\n[[volume]]\nname = \"a\"\nsource = \"/a\"\ntarget = \"/b\"", file: "p") }
        #expect(throws: PlanError.self) { try MigrationPlan(toml: "state_dir = \"state\"\n[[volume]]\nname = \"a\"\nsource = \"/a\"\ntarget = \"/b\"", file: "p") }
        let hostile = try MigrationPlan(toml: "[[volume]]\nname = \"x\\u001b[2J\"\nsource = \"/a\"\ntarget = \"/b\"", file: "p")
        #expect(!hostile.rejected[0].description.contains("\u{1B}"), "\(hostile.rejected[0])")
    }
}
