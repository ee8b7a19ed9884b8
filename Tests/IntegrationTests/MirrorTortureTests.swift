import Foundation
import Mirror
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Writes racing the recovery through real clients, with crashes: fio with verification during a
/// throttled recovery, and kill -9 of the daemon at several points of a recovery while writes are
/// in flight, each restart resuming from the bitmap (invariants 2, 3, 4 and 6).
@Suite(.serialized) struct MirrorTortureTests {
    static let size = 64 << 20

    /// fio (two jobs, mixed block sizes, crc32c verify) writes through the export while the copy
    /// runs at 1 MB/s; then the copy is let loose, and OLD == NEW byte for byte.
    @Test func fioVerifiedWritesDuringTheRecoveryEndIdentical() throws {
        try Tools.require("fio", "cmp")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        let mirror = try MirrorDaemon(source: old, target: new, in: dir, ["--speed-max", "1000", "--region-size", "256K"])

        let fio = try run(["fio", "--name=torture", "--ioengine=nbd", "--uri=\(mirror.uri)", "--rw=randwrite", "--bsrange=4k-128k",
                           "--iodepth=16", "--numjobs=2", "--size=32M", "--offset_increment=32M", "--verify=crc32c",
                           "--verify_state_save=0", "--group_reporting"], in: dir)
        #expect(fio.succeeded, "\(fio)\n\(mirror.log)")
        let during = try mirror.status()
        #expect(during.state == .recovering, "the writes did not overlap the recovery: \(during)")

        try #require(try mirror.cli("speed", "m0", "--max", "unlimited").succeeded)
        try mirror.waitForStatus { $0.state == .inSync }
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync"), "\(stop)")
        let compare = try run("cmp", old, new, in: dir)
        #expect(compare.succeeded, "OLD and NEW differ after a recovery under fio writes\n\(compare)")
    }

    /// Three times: a recovery (resumed from the bitmap after the first) under fio load and a
    /// qemu-io writer that records every acknowledged write, killed with SIGKILL once it made some
    /// progress. A last run finishes the copy. Then OLD == NEW, and every write qemu-io saw
    /// acknowledged is there with its pattern.
    @Test func killDashNineAtSeveralPointsOfTheRecoveryLosesNothing() throws {
        try Tools.require("fio", "qemu-io", "cmp")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), bitmap = dir.file("bitmap")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        let arguments = ["--bitmap", bitmap, "--region-size", "256K", "--speed-max", "6000"]
        var acknowledged: [(offset: UInt64, pattern: UInt8)] = []

        for round in 0..<3 {
            let mirror = try MirrorDaemon(source: old, target: new, in: dir, arguments)
            let start = try mirror.status()
            if round > 0 { #expect(mirror.log.contains("resuming from the bitmap"), "\(mirror.log)") }
            // Load on the first half; distinct 4 KiB writes with known patterns on the second.
            let load = try ChildProcess(["fio", "--name=load", "--ioengine=nbd", "--uri=\(mirror.uri)", "--rw=randwrite", "--bs=4k",
                                         "--iodepth=16", "--size=32M", "--time_based", "--runtime=120"], in: dir)
            var commands: [String] = []
            for k in 0..<300 {
                let offset = UInt64(32 << 20) + UInt64(round * 300 + k) * 8192
                commands += ["-c", "write -P \(Self.pattern(round: round, k: k)) \(offset) 4k", "-c", "sleep 10"]
            }
            // Line-buffered, so "wrote" lines reach the file as the writes are acknowledged.
            let writer = try ChildProcess(["stdbuf", "-oL", "qemu-io", "-f", "raw"] + commands + [mirror.uri], in: dir)
            // Kill once the copy moved on since this start and the writer has had writes acknowledged.
            let progressed = waitUntil(timeout: 240) {
                let status = try? mirror.status()
                return (status.map { $0.regionsDirty + 8 <= start.regionsDirty || $0.state == .inSync } ?? false)
                    && writer.stdout.isEmpty == false || !writer.isRunning
            }
            #expect(progressed, "no progress in round \(round)\n\(mirror.log)")
            mirror.server.child.send(SIGKILL)
            #expect(mirror.server.child.waitForExit(timeout: 60))
            // The writer's remaining writes fail fast; it exits and flushes what it printed.
            #expect(writer.waitForExit(timeout: 120), "qemu-io did not exit after the server died")
            load.killAndWait()
            acknowledged += Self.acknowledgedWrites(writer.stdout, round: round)
        }
        #expect(!acknowledged.isEmpty)

        let last = try MirrorDaemon(source: old, target: new, in: dir, ["--bitmap", bitmap, "--region-size", "256K"])
        try last.waitForStatus { $0.state == .inSync }
        let stop = try last.stop()
        #expect(stop.stdout.contains("in sync"), "\(stop)")
        let compare = try run("cmp", old, new, in: dir)
        #expect(compare.succeeded, "OLD and NEW differ after kill -9 and resumes\n\(compare)")
        for write in acknowledged {
            let bytes = try readBytes(old, offset: write.offset, length: 4096)
            #expect(bytes.allSatisfy { $0 == write.pattern }, "acknowledged write at \(write.offset) lost")
        }
    }

    static func pattern(round: Int, k: Int) -> UInt8 { UInt8((round * 300 + k) % 250 + 1) }

    /// The writes qemu-io reported done ("wrote 4096/4096 bytes at offset N").
    static func acknowledgedWrites(_ output: String, round: Int) -> [(offset: UInt64, pattern: UInt8)] {
        output.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("wrote 4096/4096 bytes at offset "), let offset = UInt64(line.split(separator: " ").last!) else { return nil }
            let k = Int((offset - UInt64(32 << 20)) / 8192) - round * 300
            return (offset, pattern(round: round, k: k))
        }
    }
}
