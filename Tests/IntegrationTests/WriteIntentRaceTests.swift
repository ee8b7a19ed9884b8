import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Invariant 4 for the second write into a region whose write intent is still queued: found by
/// tools/crash-torture.sh (a write-zeroes landed on OLD only at a kill; the resume did not copy its
/// region again and `stop` said "in sync" with NEW != OLD).
///
/// The bitmap file is on a slow filesystem (ext4 on a loop device on nbdfuse on nbdkit with every
/// write delayed 1 s), so each `fdatasync` of it takes seconds and the write-intent queue is busy.
/// An in-sync mirror with a clean bitmap gets W0 in region Q; once the daemon wrote the bitmap file
/// for it (seen with inotify on its directory, the file itself is not read), W1 then W2 go to region
/// R, clean until now. W1 needs R's bit written and waits behind W0's sync; W2 must wait too: its
/// data may move only once R's bit is durable. When W2 is acknowledged the daemon is killed, NEW is
/// changed where W2 wrote (a kill between W2's two legs leaves exactly that), and the restart with
/// the same bitmap must copy R again: then NEW == OLD.
@Suite(.serialized) struct WriteIntentRaceTests {
    static let size = 16 << 20, region = 1 << 20
    static let q = 3 * region, r = 9 * region

    /// W0 into Q; after the daemon's first bitmap write, W1 and W2 into R; prints once W2 is
    /// acknowledged (and whether W1 still waits), then stays connected.
    static let client = """
        import ctypes, select, sys, time, nbd
        uri, directory, q, r = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(0o4000)
        if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), 0x2 | 0x80 | 0x100) < 0:
            sys.exit("inotify on %s failed" % directory)
        h = nbd.NBD()
        h.connect_uri(uri)
        buffers = [bytearray([0xa0]) * 4096, bytearray([0xa1]) * 4096, bytearray([0xa2]) * 4096]
        w0 = h.aio_pwrite(buffers[0], q)
        while not select.select([fd], [], [], 0.05)[0]:
            h.poll(0)
        w1 = h.aio_pwrite(buffers[1], r)
        w2 = h.aio_pwrite(buffers[2], r + 65536)
        while not h.aio_command_completed(w2):
            h.poll(-1)
        print("W2 acknowledged; W1 still in flight: %s" % (not h.aio_command_completed(w1)), flush=True)
        time.sleep(3600)
        """

    @Test
    func secondWriteIntoARegionWaitsForItsQueuedWriteIntent() throws {
        try Tools.require("nbdkit", "mkfs.ext4", "cmp")
        let dir = try TempDir()
        defer { dir.remove() }
        try PythonNBD.require(in: dir)
        let socket = dir.file("slow.sock")
        let nbdkit = try ChildProcess(["nbdkit", "-f", "-U", socket, "--filter=delay", "memory", "64M", "delay-write=1"], in: dir)
        defer { nbdkit.killAndWait() }
        try #require(waitUntil(timeout: 60) { FileManager.default.fileExists(atPath: socket) || !nbdkit.isRunning } && nbdkit.isRunning,
                     "nbdkit did not start\n\(nbdkit.stderr)")
        let slow = try NBDFilesystem(uri: "nbd+unix:///?socket=\(socket)", in: dir)
        defer { slow.tearDown() }
        let mkfs = try run("mkfs.ext4", "-q", slow.loop!, in: dir)
        try #require(mkfs.succeeded, "\(mkfs)")
        try slow.mount()

        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: Self.size)
        try makeSparseFile(new, size: Self.size)
        let bitmapDir = slow.mountDir + "/bitmap"
        try FileManager.default.createDirectory(atPath: bitmapDir, withIntermediateDirectories: true)
        let arguments = ["--bitmap", bitmapDir + "/m0.bitmap", "--region-size", "1M"]

        // An in-sync mirror whose bitmap file is all clean (stop saves it so).
        let first = try MirrorDaemon(source: old, target: new, in: dir, arguments)
        try #require(try first.waitForStatus { $0.state == .inSync } != nil)
        try #require(try first.stop().stdout.contains("in sync"))

        let mirror = try MirrorDaemon(source: old, target: new, in: dir, arguments)
        let client = try ChildProcess([PythonNBD.interpreter, "-c", Self.client, mirror.uri, bitmapDir, "\(Self.q)", "\(Self.r)"], in: dir)
        defer { client.killAndWait() }
        waitUntil(timeout: 240) { client.stdout.contains("W2 acknowledged") || !client.isRunning }
        try #require(client.stdout.contains("W2 acknowledged"), "W2 was never acknowledged\n\(client.stderr)\n\(mirror.log)")
        mirror.server.child.send(SIGKILL)
        #expect(mirror.server.child.waitForExit(timeout: 60), "the daemon did not die of SIGKILL")
        client.killAndWait()
        // What a kill between W2's two legs leaves: the source has W2, the target not.
        try writeInPlace(new, offset: UInt64(Self.r + 65536), try randomBytes(4096))

        let restarted = try MirrorDaemon(source: old, target: new, in: dir, arguments)
        try #require(try restarted.waitForStatus { $0.state == .inSync } != nil)
        #expect(try restarted.stop().stdout.contains("in sync"))
        let legs = try readBytes(old, offset: UInt64(Self.r), length: Self.region) == readBytes(new, offset: UInt64(Self.r), length: Self.region)
        #expect(legs, """
            region \(Self.r / Self.region) was not copied again after kill -9: the bitmap file did not mark it, yet W2's \
            data had moved (\(client.stdout.trimmingCharacters(in: .whitespacesAndNewlines))); "in sync" with NEW != OLD
            \(restarted.log)
            """)
    }
}
