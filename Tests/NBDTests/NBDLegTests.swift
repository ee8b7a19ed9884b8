import BlockIO
import Foundation
import Logging
import NIOCore
import Testing
@testable import NBD

/// The remote leg against nbdkit (file plugin over a real file, with its filters taking features
/// away or adding block-size rules and delays), its request log read back to see what was sent.
@Suite(.serialized, .timeLimit(.minutes(3))) struct NBDLegTests {
    let logger = Logger(label: "nbd-leg-test")

    /// A file of `size` bytes of a pattern, and its path.
    func image(in directory: String, size: Int = 4 << 20) throws -> String {
        let path = directory + "/disk.img"
        try Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 12) }).write(to: URL(fileURLWithPath: path))
        return path
    }

    func bytes(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) ^ seed } }

    func write(_ leg: NBDLeg, _ data: [UInt8], at offset: UInt64, durable: Bool = false) async throws(BlockIOError) {
        let result: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            data.withUnsafeBytes { buffer in
                leg.write(from: buffer.baseAddress!, count: data.count, offset: offset, durable: durable) { continuation.resume(returning: $0) }
            }
        }
        try result.get()
    }

    func read(_ leg: NBDLeg, count: Int, at offset: UInt64) async throws(BlockIOError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let address = UInt(bitPattern: buffer.baseAddress!)
        let result: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            leg.read(into: UnsafeMutableRawPointer(bitPattern: address)!, count: count, offset: offset) { continuation.resume(returning: $0) }
        }
        try result.get()
        return Array(buffer)
    }

    func zero(_ leg: NBDLeg, at offset: UInt64, length: UInt64, mayDeallocate: Bool = true) async throws(BlockIOError) {
        let result: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            leg.writeZeroes(offset: offset, length: length, mayDeallocate: mayDeallocate, fastOnly: false) { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    func flush(_ leg: NBDLeg) async throws(BlockIOError) {
        let result: Result<Void, BlockIOError> = await withCheckedContinuation { continuation in
            leg.flush { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    /// What the file behind nbdkit holds.
    func contents(_ path: String, at offset: Int, count: Int) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path))[offset..<(offset + count)])
    }

    /// With every feature: data goes through both ways and lands in the file; zeroes are
    /// WRITE_ZEROES, FUA is the flag, BLOCK_STATUS tells the zeroed range from data; several
    /// connections (the file plugin offers multi-conn) all carry requests.
    @Test func servesEveryCommandNatively() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let nbdkit = try await Nbdkit(directory: dir, ["file", path], logRequests: true)
        defer { nbdkit.stop() }
        let leg = try await NBDLeg.open(nbdkit.uri, readOnly: false, options: NBDLeg.Options(connections: 3), logger: logger)
        defer { leg.close() }
        #expect(leg.size == 4 << 20 && leg.identity.kind == .nbd && leg.path == nbdkit.uri.description)

        let data = bytes(1 << 20, seed: 0x5A)
        try await write(leg, data, at: 1 << 20)
        #expect(try await read(leg, count: 1 << 20, at: 1 << 20) == data)
        try await write(leg, bytes(4096, seed: 1), at: 0, durable: true)
        try await zero(leg, at: 2 << 20, length: 1 << 20)
        try await flush(leg)
        #expect(try contents(path, at: 1 << 20, count: 1 << 20) == data, "the write reached the file")
        #expect(try contents(path, at: 2 << 20, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20))

        #expect(nbdkit.requests("Write").contains { $0.contains("fua=1") }, "a durable write carries FUA")
        #expect(nbdkit.requests("Zero").count == 1 && nbdkit.requests("Flush").count >= 1)
        let map = try leg.allocationMap(offset: 1 << 20, length: 2 << 20, maxExtents: 16)
        #expect(map.first == BlockDevice.Extent(length: 1 << 20, isHole: false) && map.dropFirst().allSatisfy(\.isHole)
                && map.reduce(0) { $0 + $1.length } == 2 << 20, "\(map)")
        // Many reads at once go over every connection.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<32 { group.addTask { _ = try await self.read(leg, count: 65536, at: UInt64(index) * 65536) } }
            try await group.waitForAll()
        }
        let connections = Set(nbdkit.requests("Read").compactMap { Nbdkit.field("connection", in: $0) })
        #expect(connections.count == 3, "reads went over \(connections.sorted()) of 3 connections")
    }

    /// A server that takes requests of 4 KiB blocks and at most 64 KiB: a 1 MiB write goes as
    /// sixteen 64 KiB ones, a read likewise; a range off the 4 KiB block is refused with EINVAL
    /// naming the offset, and never sent (nbdkit would fail it).
    @Test func cutsRequestsToTheServersBlockSizes() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let nbdkit = try await Nbdkit(directory: dir, ["--filter=blocksize-policy", "file", path, "blocksize-minimum=4096",
                                                       "blocksize-preferred=4096", "blocksize-maximum=65536",
                                                       "blocksize-error-policy=error"], logRequests: true)
        defer { nbdkit.stop() }
        let leg = try await NBDLeg.open(nbdkit.uri, readOnly: false, logger: logger)
        defer { leg.close() }
        #expect(leg.requiredAlignment == 4096 && leg.split.maximumPayload == 65536)
        let data = bytes(1 << 20, seed: 0x33)
        try await write(leg, data, at: 0)
        #expect(try await read(leg, count: 1 << 20, at: 0) == data)
        let writes = nbdkit.requests("Write")
        #expect(writes.count == 16 && writes.allSatisfy { Nbdkit.field("count", in: $0) == 65536 }, "\(writes)")
        let refused = await #expect(throws: BlockIOError.self) { try await self.write(leg, [1, 2, 3], at: 100) }
        #expect(refused?.errno == .invalidArgument && refused?.offset == 100 && refused?.path == nbdkit.uri.description
                && refused?.detail?.contains("4096-byte minimum block size") == true, "\(String(describing: refused))")
        #expect(nbdkit.requests("Write").count == 16, "the unaligned write was not sent")
        let beyond = await #expect(throws: BlockIOError.self) { try await self.write(leg, self.bytes(4096, seed: 0), at: 4 << 20) }
        #expect(beyond?.detail?.contains("beyond the end") == true)
    }

    /// A server without WRITE_ZEROES, FUA or base:allocation (nbdkit's eval plugin over the file,
    /// with dd, saying it has no FUA; its nozero and noextents filters): zeroes are written as
    /// data, a durable write is a write and a FLUSH, and the allocation map says data throughout.
    @Test func fallsBackWhereTheServerLacksACommand() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let nbdkit = try await Nbdkit(directory: dir, [
            "--filter=nozero", "--filter=noextents", "eval", "get_size=echo \(4 << 20)",
            "pread=dd if=\(path) skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none",
            "pwrite=dd of=\(path) seek=$4 conv=notrunc oflag=seek_bytes status=none",
            "can_write=exit 0", "can_flush=exit 0", "flush=exit 0", "can_fua=echo none"], logRequests: true)
        defer { nbdkit.stop() }
        let leg = try await NBDLeg.open(nbdkit.uri, readOnly: false, logger: logger)
        defer { leg.close() }
        #expect(!leg.offers.contains(.sendWriteZeroes) && !leg.offers.contains(.sendFUA) && leg.offers.contains(.sendFlush))
        try await zero(leg, at: 1 << 20, length: 3 << 20)
        #expect(nbdkit.requests("Zero").isEmpty && nbdkit.requests("Write").count == 3, "\(nbdkit.requests("Write"))")
        #expect(try contents(path, at: 1 << 20, count: 3 << 20) == [UInt8](repeating: 0, count: 3 << 20))
        let flushes = nbdkit.requests("Flush").count
        try await write(leg, bytes(8192, seed: 9), at: 0, durable: true)
        #expect(nbdkit.requests("Flush").count == flushes + 1, "FUA became a FLUSH after the write")
        #expect(try leg.allocationMap(offset: 0, length: 4 << 20, maxExtents: 8) == [BlockDevice.Extent(length: 4 << 20, isHole: false)])
    }

    /// A read-only export is refused as a leg that is written; opened read-only it serves.
    @Test func aReadOnlyExportIsRefusedForWriting() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let nbdkit = try await Nbdkit(directory: dir, ["-r", "file", path])
        defer { nbdkit.stop() }
        let refused = await #expect(throws: NBDClientError.self) { try await NBDLeg.open(nbdkit.uri, readOnly: false, logger: self.logger) }
        #expect(refused?.description == "\(nbdkit.uri): the export is read-only: a mirror writes both legs")
        let leg = try await NBDLeg.open(nbdkit.uri, readOnly: true, logger: logger)
        #expect(try await read(leg, count: 4096, at: 0) == (try contents(path, at: 0, count: 4096)))
        leg.close()
        let closed = await #expect(throws: BlockIOError.self) { _ = try await self.read(leg, count: 4096, at: 0) }
        #expect(closed?.errno == .badDescriptor)
    }

    /// A server that stops answering fails the request after the timeout, and one that dies fails
    /// what comes next, each naming the URI: never a hang.
    @Test func aRemoteThatStopsAnsweringFailsTheIO() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let slow = try await Nbdkit(directory: dir, ["--filter=delay", "file", path, "delay-write=30"], name: "slow")
        defer { slow.stop() }
        let leg = try await NBDLeg.open(slow.uri, readOnly: false, options: NBDLeg.Options(connections: 1, requestTimeout: .seconds(1)),
                                        logger: logger)
        defer { leg.close() }
        let late = await #expect(throws: BlockIOError.self) { try await self.write(leg, self.bytes(4096, seed: 2), at: 0) }
        #expect(late?.path == slow.uri.description && late?.detail?.contains("no reply to") == true, "\(String(describing: late))")

        let dying = try await Nbdkit(directory: dir, ["file", path], name: "dying")
        let other = try await NBDLeg.open(dying.uri, readOnly: false, logger: logger)
        defer { other.close() }
        #expect(try await read(other, count: 4096, at: 0).count == 4096)
        dying.stop()
        // The kill takes effect at once or a moment later: the next requests fail, whichever.
        var failure: BlockIOError?
        let deadline = ContinuousClock.now + .seconds(60)
        while failure == nil, ContinuousClock.now < deadline {
            do { _ = try await read(other, count: 4096, at: 0) } catch { failure = error }
        }
        #expect(failure?.path == dying.uri.description && failure?.errno == .ioError, "\(String(describing: failure))")
    }

    /// A server that answers slowly but steadily (one request a second, one at a time) is not
    /// given up on, though the requests queued behind each other wait longer than the timeout: the
    /// watchdog counts silence, not queueing.
    @Test func aSlowButLiveServerIsNotGivenUp() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let nbdkit = try await Nbdkit(directory: dir, ["--filter=blocksize-policy", "--filter=noparallel", "--filter=delay", "file", path,
                                                       "blocksize-maximum=1048576", "serialize=all-requests", "delay-write=1"])
        defer { nbdkit.stop() }
        let leg = try await NBDLeg.open(nbdkit.uri, readOnly: false, options: NBDLeg.Options(connections: 1, requestTimeout: .seconds(2)),
                                        logger: logger)
        defer { leg.close() }
        // Four 1 MiB writes sent at once, answered a second apart: the last waits 4 s.
        let data = bytes(4 << 20, seed: 0x44)
        try await write(leg, data, at: 0)
        #expect(try contents(path, at: 0, count: 4 << 20) == data)
    }

    /// A server that takes fewer connections than it offers multi-conn for (nbdkit's limit filter)
    /// is used with those it took.
    @Test func fewerConnectionsThanAskedAreEnough() async throws {
        let dir = try scratchDirectory("nbd-leg-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try image(in: dir)
        let nbdkit = try await Nbdkit(directory: dir, ["--filter=limit", "file", path, "limit=1"])
        defer { nbdkit.stop() }
        let leg = try await NBDLeg.open(nbdkit.uri, readOnly: false, options: NBDLeg.Options(connections: 4), logger: logger)
        defer { leg.close() }
        #expect(try await read(leg, count: 4096, at: 0) == (try contents(path, at: 0, count: 4096)))
    }
}
