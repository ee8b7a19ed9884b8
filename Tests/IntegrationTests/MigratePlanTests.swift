import Control
import Foundation
import MirrorModel
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `blockmirror migrate PLAN` through the binary: many volumes in one daemon, copies a few at a
/// time within a shared rate, a kill -9 resumed from the bitmaps, and plans with mistakes whose
/// good volumes go on.
@Suite(.serialized) struct MigratePlanTests {
    /// A plan file of volumes `old-N.img` -> `new-N.img` (random data, sparse targets) in a test
    /// directory, its runtime directory, and the verbs run against it.
    struct Fleet {
        let dir: TempDir
        let runDir: String
        let planPath: String
        let name = "fleet"

        /// Writes `count` volumes of `size` bytes and the plan (`header` first, then every volume,
        /// then `extra` TOML).
        init(_ label: String, count: Int, size: Int, header: String, extra: (TempDir) throws -> String = { _ in "" }) throws {
            dir = try TempDir(label)
            runDir = dir.file("run")
            planPath = dir.file("fleet.toml")
            var text = header + "\nstate_dir = \"\(dir.file("state"))\"\nlisten = \"unix:\(dir.path)/{name}.sock\"\n"
            for index in 1...count {
                try makeRandomFile(dir.file("old-\(index).img"), size: size)
                try makeSparseFile(dir.file("new-\(index).img"), size: size)
                text += "[[volume]]\nname = \"vm\(index)\"\nsource = \"\(dir.file("old-\(index).img"))\"\ntarget = \"\(dir.file("new-\(index).img"))\"\n"
            }
            try (text + extra(dir)).write(toFile: planPath, atomically: true, encoding: .utf8)
        }

        @discardableResult
        func cli(_ arguments: String...) throws -> CommandResult { try MirrorDaemon.cli(arguments, runDir: runDir, in: dir) }

        /// `status PLAN --json`'s plan.
        func status() throws -> PlanStatus {
            let result = try cli("status", name, "--json")
            guard result.succeeded else { throw IntegrationFailure("status \(name) failed\n\(result)\n\(log)") }
            struct Snapshot: Decodable { let plan: PlanStatus }
            return try JSONDecoder().decode(Snapshot.self, from: Data(result.stdout.utf8)).plan
        }

        var log: String { "--- plan log ---\n" + readText(runDir + "/\(name).log").suffix(6000) }

        /// The plan's daemon process (every volume's daemon is it).
        func pid() throws -> pid_t {
            struct Entry: Decodable { let name: String; let pid: Int32? }
            let list = try cli("list", "--json")
            let entries = try JSONDecoder().decode([Entry].self, from: Data(list.stdout.utf8))
            guard let pid = entries.first?.pid else { throw IntegrationFailure("no daemon listed\n\(list)") }
            return pid
        }

        /// Stops the plan if it still runs, then removes the directory.
        func tearDown() {
            _ = try? cli("stop", name)
            dir.remove()
        }

        func differences(of volumes: ClosedRange<Int>) throws -> [String] {
            try volumes.compactMap { index in
                try firstDifference(dir.file("old-\(index).img"), dir.file("new-\(index).img")).map { "vm\(index): \($0)" }
            }
        }
    }

    /// Six volumes, two copying at a time, within 12,000 KiB/s together: every volume ends in sync
    /// and equal to its source; never more than two copied at once (the daemon's own count, and
    /// every poll); and over every window of 5 s or more the volumes together copied no faster
    /// than the budget (+10%, plus the one region per copier and the 0.2 s burst a token bucket
    /// lets through).
    @Test func sixVolumesCopyTwoAtATimeWithinTheSharedRate() throws {
        let budget: Double = 12_000 * 1024
        let fleet = try Fleet("plan-six", count: 6, size: 16 << 20, header: "concurrency = 2\nspeed_max = 12000")
        defer { fleet.tearDown() }
        let started = try fleet.cli("migrate", fleet.planPath)
        #expect(started.succeeded, "\(started)\n\(fleet.log)")
        #expect((1...6).allSatisfy { started.stdout.contains("vm\($0) nbd+unix:///vm\($0)?socket=") }, "\(started)")

        var samples: [(before: Date, after: Date, bytes: UInt64)] = []
        var mostCopying = 0
        var last: PlanStatus?
        let done = try waitUntil(timeout: 300) {
            let before = Date()
            let status = try fleet.status()
            samples.append((before, Date(), status.volumes.reduce(0) { $0 + ($1.status?.bytesCopied ?? 0) }))
            mostCopying = max(mostCopying, status.volumes.filter { $0.phase == .copying }.count)
            last = status
            return status.volumes.allSatisfy { $0.phase == .inSync }
        }
        #expect(done, "the plan never ended in sync: \(String(describing: last))\n\(fleet.log)")
        #expect(mostCopying <= 2 && (last?.peakCopying ?? 99) <= 2, "copying at once: polled \(mostCopying), daemon \(last?.peakCopying ?? -1)")
        #expect(mostCopying >= 1)
        for (index, first) in samples.enumerated() {
            for second in samples[index...] where second.before.timeIntervalSince(first.after) >= 5 {
                // The widest the window can have been: from just before the first poll to just after the second.
                let seconds = second.after.timeIntervalSince(first.before)
                let allowed = budget * 1.1 * seconds + 2 * Double(1 << 20) + budget * 0.2
                #expect(Double(second.bytes - first.bytes) <= allowed,
                        "\(second.bytes - first.bytes) bytes in \(seconds) s: above \(budget) B/s + 10%")
            }
        }
        let differences = try fleet.differences(of: 1...6)
        #expect(differences.isEmpty, "\(differences)")
        let stopped = try fleet.cli("stop", fleet.name)
        #expect(stopped.succeeded && stopped.stdout.components(separatedBy: "is a complete copy").count == 7, "\(stopped)\n\(fleet.log)")
    }

    /// A volume waiting for a copy slot: its own `status` says so, `wait VOLUME` waits for its copy
    /// (it does not give up because no target is attached yet), and a `stop` of it says its copy
    /// never started and how to go on, rather than calling it merely degraded.
    @Test func aVolumeWaitingForASlotIsWaitedForAndItsStopSaysSo() throws {
        // 100 KiB/s for all copies: vm1's takes 40 s, so vm2 and vm3 wait until the test lifts it.
        let fleet = try Fleet("plan-waiting", count: 3, size: 4 << 20, header: "concurrency = 1\nspeed_max = 100")
        defer { fleet.tearDown() }
        let started = try fleet.cli("migrate", fleet.planPath)
        #expect(started.succeeded, "\(started)\n\(fleet.log)")
        let phases = try fleet.status().volumes.map(\.phase)
        #expect(phases.dropFirst().allSatisfy { $0 == .waiting }, "\(phases)")

        let status = try fleet.cli("status", "vm3")
        #expect(status.succeeded && status.stdout.contains("waiting for a copy slot of plan fleet (then onto \(fleet.dir.file("new-3.img")))"),
                "\(status)")
        let json = try fleet.cli("status", "vm3", "--json")
        #expect(json.stdout.contains("\"pendingCopy\""), "\(json)")

        let stopped = try fleet.cli("stop", "vm2")
        #expect(stopped.succeeded && stopped.stdout.contains("vm2: waiting: plan fleet had not started its copy onto \(fleet.dir.file("new-2.img"))")
                && stopped.stdout.contains("blockmirror migrate \(fleet.planPath)` again"), "\(stopped)\n\(fleet.log)")

        #expect(try fleet.cli("speed", fleet.name, "--max", "unlimited").succeeded)
        let waited = try fleet.cli("wait", "vm3", "--interval", "0.1")
        #expect(waited.succeeded && waited.stdout.contains("vm3: in sync"), "\(waited)\n\(fleet.log)")
        let differences = try fleet.differences(of: 3...3)
        #expect(differences.isEmpty, "\(differences)")
    }

    /// kill -9 of the plan's daemon mid-plan, then the same `migrate PLAN --wait`: it resumes every
    /// volume from its bitmap file — no volume copies more than the regions its file called dirty
    /// when the daemon died, the plan copies less than everything again — and ends in sync with
    /// every target equal to its source.
    @Test func aKilledPlanResumesFromItsBitmapsWithoutRecopyingCleanRegions() throws {
        let size = 24 << 20
        let fleet = try Fleet("plan-kill", count: 4, size: size, header: "concurrency = 2\nspeed_max = 10000")
        defer { fleet.tearDown() }
        let started = try fleet.cli("migrate", fleet.planPath)
        #expect(started.succeeded, "\(started)\n\(fleet.log)")
        // Past halfway: some volumes in sync, some part-copied, some waiting.
        let halfway = try waitUntil(timeout: 300) {
            try fleet.status().volumes.reduce(0) { $0 + ($1.status?.bytesCopied ?? 0) } >= UInt64(2 * size)
        }
        #expect(halfway, "\(fleet.log)")
        let pid = try fleet.pid()
        kill(pid, SIGKILL)
        #expect(waitUntil(timeout: 60) { kill(pid, 0) != 0 }, "the daemon survived SIGKILL")

        var dirtyAtKill: [Int] = []
        for index in 1...4 {
            let examined = try run([try BlockMirrorBinary.path(), "examine", fleet.dir.file("state/vm\(index).bitmap"), "--json"], in: fleet.dir)
            struct Examined: Decodable { let regionsDirty: Int }
            dirtyAtKill.append(try JSONDecoder().decode(Examined.self, from: Data(examined.stdout.utf8)).regionsDirty)
        }
        #expect(dirtyAtKill.reduce(0, +) < 4 * (size >> 20), "every region of every volume dirty at the kill: \(dirtyAtKill)")

        let resumed = try fleet.cli("migrate", fleet.planPath, "--wait")
        #expect(resumed.succeeded && resumed.stdout.contains("4 of 4 volumes in sync"), "\(resumed)\n\(fleet.log)")
        let status = try fleet.status()
        for (index, volume) in status.volumes.enumerated() {
            let copied = volume.status?.bytesCopied ?? UInt64.max
            #expect(copied <= UInt64(dirtyAtKill[index]) << 20,
                    "\(volume.name) copied \(copied) bytes after the restart, its bitmap had \(dirtyAtKill[index]) dirty regions")
        }
        let differences = try fleet.differences(of: 1...4)
        #expect(differences.isEmpty, "\(differences)")
    }

    /// A volume with a typo, one whose source is missing and one whose target's server refuses:
    /// each is one error naming the volume and what is wrong, and the good volume still ends in
    /// sync; `wait` says which failed. A typo in the plan's own keys refuses the plan: nothing runs.
    @Test func aPlansBadVolumesAreNamedAndTheOthersGoOn() throws {
        let fleet = try Fleet("plan-bad", count: 1, size: 8 << 20, header: "concurrency = 2") { dir in
            try makeRandomFile(dir.file("lonely.img"), size: 8 << 20)
            return """
            [[volume]]
            name = "typo"
            source = "/dev/null"
            tagret = "/var/tmp/x.img"
            [[volume]]
            name = "nosource"
            source = "/var/tmp/blockmirror-no-such-file.img"
            target = "/var/tmp/blockmirror-no-such-target.img"
            [[volume]]
            name = "refused"
            source = "\(dir.file("lonely.img"))"
            target = "nbd://127.0.0.1:9/x"
            """
        }
        defer { fleet.tearDown() }
        let started = try fleet.cli("migrate", fleet.planPath)
        #expect(started.status == 1, "\(started)")
        #expect(started.stderr.contains("volume \"typo\": unknown key \"tagret\" (did you mean \"target\"?)"), "\(started)")
        #expect(started.stderr.contains("volume \"nosource\": cannot start:") && started.stderr.contains("/var/tmp/blockmirror-no-such-file.img"),
                "\(started)")
        #expect(started.stdout.contains("vm1 nbd+unix://") && started.stdout.contains("refused nbd+unix://"), "\(started)")
        let waited = try fleet.cli("wait", fleet.name)
        #expect(waited.status == 1 && waited.stdout.contains("vm1: in sync"), "\(waited)\n\(fleet.log)")
        #expect(waited.stderr.contains("refused: failed: cannot attach its target nbd://127.0.0.1:9/x"), "\(waited)")
        #expect(try fleet.differences(of: 1...1).isEmpty)

        let typo = fleet.dir.file("typo.toml")
        try "concurency = 2\n[[volume]]\nname = \"a\"\nsource = \"/dev/null\"\ntarget = \"/dev/zero\"\n".write(toFile: typo, atomically: true, encoding: .utf8)
        let refused = try fleet.cli("migrate", typo)
        #expect(refused.status == 1 && refused.stderr.contains("plan \(typo): unknown key \"concurency\" (did you mean \"concurrency\"?)"), "\(refused)")
        #expect(!FileManager.default.fileExists(atPath: fleet.runDir + "/typo.plan"))
    }

    /// A volume's phase is its mirror's live state: a target failed after the plan ended in sync
    /// makes `wait PLAN` fail naming it, and the same target added back by hand ends in sync again.
    /// A volume `complete` switched onto its new storage serves that storage when the plan runs
    /// again, and counts as done.
    @Test func phasesFollowTheMirrorsAndACompletedVolumeSurvivesARestart() throws {
        let fleet = try Fleet("plan-phases", count: 2, size: 8 << 20, header: "concurrency = 2")
        defer { fleet.tearDown() }
        let first = try fleet.cli("migrate", fleet.planPath, "--wait")
        #expect(first.succeeded && first.stdout.contains("2 of 2 volumes in sync"), "\(first)\n\(fleet.log)")

        #expect(try fleet.cli("fail", "vm1").succeeded)
        let failed = try fleet.cli("wait", fleet.name)
        #expect(failed.status == 1 && failed.stderr.contains("vm1: failed: its target failed"), "\(failed)")
        #expect(try fleet.cli("remove", "vm1").succeeded)
        let added = try fleet.cli("add", "vm1", fleet.dir.file("new-1.img"))
        #expect(added.succeeded, "\(added)")
        let again = try fleet.cli("wait", fleet.name)
        #expect(again.succeeded && again.stdout.contains("2 of 2 volumes in sync"), "\(again)\n\(fleet.log)")

        let completed = try fleet.cli("complete", "vm2")
        #expect(completed.succeeded, "\(completed)\n\(fleet.log)")
        #expect(try fleet.status().volumes.first { $0.name == "vm2" }?.phase == .completed)
        #expect(try fleet.cli("stop", fleet.name).succeeded)
        let restarted = try fleet.cli("migrate", fleet.planPath, "--wait")
        #expect(restarted.succeeded && restarted.stdout.contains("vm2: completed") && restarted.stdout.contains("2 of 2 volumes in sync"),
                "\(restarted)\n\(fleet.log)")
        let vm2 = try #require(try fleet.status().volumes.first { $0.name == "vm2" })
        #expect(vm2.phase == .completed && vm2.status?.source == fleet.dir.file("new-2.img"), "\(vm2)")
        let differences = try fleet.differences(of: 1...2)
        #expect(differences.isEmpty, "\(differences)")
    }
}
