import Foundation
import Mirror
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Durability as the NBD spec promises it, through a real client (libnbd): a write acknowledged
/// with FUA, and every write acknowledged before an acknowledged FLUSH, is on both legs when the
/// daemon is killed with SIGKILL right after the acknowledgement — on an in-sync mirror, and on a
/// mirror whose copy has not reached the written regions yet (the target leg is then the only way
/// the bytes reach NEW). Both image files are read directly after the kill.
///
/// What this shows and what it does not: kill -9 leaves the kernel's page cache alone, so these
/// tests prove that an acknowledged write has left the daemon and reached both files (no write
/// held back in memory, no leg skipped) — not that it reached stable storage. That part is the
/// `RWF_DSYNC` / `fdatasync` the engine issues (invariant 2), which only a power cut would test.
@Suite(.serialized) struct DurabilityTests {
    enum Condition: String, CaseIterable, CustomTestStringConvertible {
        case inSync, recovering
        var testDescription: String { rawValue }
    }

    /// (offset, length, byte): 4 KiB, 64 KiB and 1 MiB writes, one across a region boundary and
    /// one unaligned (the buffered path), all past the first 4 MiB (where a held copy never gets).
    static let writes: [(offset: Int, length: Int, byte: UInt8)] = [
        (4 << 20, 4096, 0xa1), (5 << 20, 65536, 0xb2), ((6 << 20) - 32768, 65536, 0xc3),
        ((7 << 20) + 1000, 3000, 0xd4), (9 << 20, 1 << 20, 0xe5), ((15 << 20) + 4096, 8192, 0xf6),
    ]
    static let size = 16 << 20

    @Test(arguments: Condition.allCases)
    func fuaWritesSurviveKillDashNineOnBothLegs(_ condition: Condition) throws {
        try killAfterAcknowledgement(condition, mode: "fua")
    }

    @Test(arguments: Condition.allCases)
    func writesBeforeAnAcknowledgedFlushSurviveKillDashNineOnBothLegs(_ condition: Condition) throws {
        try killAfterAcknowledgement(condition, mode: "flush")
    }

    /// A client that writes `writes` (mode fua: one FUA write at a time; mode flush: all in flight
    /// at once without FUA, then, once all are acknowledged, a FLUSH), prints "acknowledged" and
    /// stays connected, so the daemon is killed with the client still there (no disconnect path).
    static let client = """
        import json, sys, time, nbd
        uri, writes, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
        h = nbd.NBD()
        h.connect_uri(uri)
        if mode == "fua":
            for offset, length, byte in writes:
                h.pwrite(bytes([byte]) * length, offset, nbd.CMD_FLAG_FUA)
        else:
            buffers = [bytearray([byte]) * length for offset, length, byte in writes]
            cookies = [h.aio_pwrite(b, w[0]) for b, w in zip(buffers, writes)]
            while h.aio_in_flight() > 0:
                h.poll(-1)
            for cookie in cookies:
                h.aio_command_completed(cookie)   # raises if the write failed
            h.flush()
        print("acknowledged", flush=True)
        time.sleep(3600)
        """

    func killAfterAcknowledgement(_ state: Condition, mode: String) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try PythonNBD.require(in: dir)
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        // Recovering: the copy is held to 1 KiB/s, so it never gets past its first region here.
        let limits = state == .recovering ? ["--speed-min", "1", "--speed-max", "1"] : []
        let mirror = try MirrorDaemon(source: old, target: new, in: dir, limits)
        if state == .inSync {
            try #require(try mirror.waitForStatus { $0.state == .inSync } != nil)
        }

        let writes = Self.writes.map { [$0.offset, $0.length, Int($0.byte)] }
        let json = String(decoding: try JSONSerialization.data(withJSONObject: writes), as: UTF8.self)
        let client = try ChildProcess([PythonNBD.interpreter, "-c", Self.client, mirror.uri, json, mode], in: dir)
        defer { client.killAndWait() }
        waitUntil(timeout: 120) { client.stdout.contains("acknowledged") || !client.isRunning }
        try #require(client.stdout.contains("acknowledged"), "the client got no acknowledgement\n\(client.stderr)\n\(mirror.log)")
        if state == .recovering {
            let status = try mirror.status()
            #expect(status.state == .recovering && status.regionsDirty > status.regionsTotal / 2,
                    "the copy was not held: \(status)")
        }
        mirror.server.child.send(SIGKILL)
        #expect(mirror.server.child.waitForExit(timeout: 60), "the daemon did not die of SIGKILL")

        for write in Self.writes {
            for (leg, path) in [("OLD", old), ("NEW", new)] {
                let bytes = try readBytes(path, offset: UInt64(write.offset), length: write.length)
                let bad = bytes.firstIndex { $0 != write.byte }.map { $0 - bytes.startIndex } ?? bytes.count
                #expect(bad == write.length, """
                    \(mode) write of \(write.length) bytes at \(write.offset) is missing on \(leg) (\(path)) after kill -9 \
                    of a mirror \(state.rawValue): first bad byte at +\(bad)
                    """)
            }
        }
    }
}
