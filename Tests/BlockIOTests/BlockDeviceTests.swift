import Foundation
#if canImport(Glibc)
import Glibc
#endif
import CLibAIO
import Logging
import Testing
@testable import BlockIO

/// BlockIO against real files: O_DIRECT and its tmpfs fallback, libaio with more requests than the
/// queue depth, exclusivity, holes, and errors that name the path.
@Suite struct BlockDeviceTests {
    let logger = Logger(label: "test")

    /// A scratch file of `size` bytes in `directory` (which must exist).
    func scratchFile(size: Int, in directory: String = "/var/tmp") throws -> String {
        let path = "\(directory)/blockio-test-\(UUID().uuidString).img"
        #expect(FileManager.default.createFile(atPath: path, contents: nil))
        try FileHandle(forWritingTo: URL(fileURLWithPath: path)).truncate(atOffset: UInt64(size))
        return path
    }

    /// Runs an asynchronous BlockIO call to completion.
    func await<T: Sendable>(_ body: (@escaping @Sendable (Result<T, BlockIOError>) -> Void) -> Void) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            body { continuation.resume(with: $0.mapError { $0 as any Error }) }
        }
    }

    /// Writes 2000 scattered 4 KiB blocks at once (more than the depth of 64, so the wait queue is
    /// used), reads them back through libaio, and checks the file's bytes directly.
    @Test func manyRequestsInFlightRoundTrip() async throws {
        let path = try scratchFile(size: 16 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine(depth: 64)
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        #expect(device.isDirect)
        #expect(device.size == 16 << 20)
        let blocks = (0..<2000).map { ($0 * 7919) % 4096 }
        let buffers = blocks.map { block -> AlignedBuffer in
            let buffer = AlignedBuffer(capacity: 4096)
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: block))
            return buffer
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (block, buffer) in zip(blocks, buffers) {
                group.addTask {
                    try await self.await { done in
                        device.write(from: buffer.baseAddress, count: 4096, offset: UInt64(block) * 4096, durable: false, completion: done)
                    }
                }
            }
            try await group.waitForAll()
        }
        try await self.await { device.flush(completion: $0) }
        let contents = try Data(contentsOf: URL(fileURLWithPath: path))
        for block in Set(blocks) {
            #expect(contents[block * 4096] == UInt8(truncatingIfNeeded: block))
            #expect(contents[block * 4096 + 4095] == UInt8(truncatingIfNeeded: block))
        }
        let readBack = AlignedBuffer(capacity: 4096)
        try await self.await { device.read(into: readBack.baseAddress, count: 4096, offset: UInt64(blocks[5]) * 4096, completion: $0) }
        #expect(readBack.bytes.allSatisfy { $0 == UInt8(truncatingIfNeeded: blocks[5]) })
    }

    /// Unaligned requests go through the buffered descriptor and stay coherent with direct I/O.
    @Test func unalignedWriteThenDirectRead() async throws {
        let path = try scratchFile(size: 1 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        let odd = AlignedBuffer(capacity: 4096)
        odd.bytes.initializeMemory(as: UInt8.self, repeating: 0x5a)
        // Offset 4097, length 100, from a misaligned address: every alignment rule is broken.
        try await self.await { device.write(from: odd.baseAddress + 1, count: 100, offset: 4097, durable: true, completion: $0) }
        let block = AlignedBuffer(capacity: 8192)
        try await self.await { device.read(into: block.baseAddress, count: 8192, offset: 0, completion: $0) }
        #expect(block.bytes[4096] == 0 && block.bytes[4097] == 0x5a && block.bytes[4196] == 0x5a && block.bytes[4197] == 0)
    }

    /// tmpfs refused O_DIRECT before Linux 6.6: there the device opens buffered (with a warning);
    /// on newer kernels it opens direct. Either way it works.
    @Test func tmpfsWorksWithOrWithoutDirectIO() async throws {
        let path = try scratchFile(size: 1 << 20, in: "/dev/shm")
        defer { unlink(path) }
        let kernelAllowsDirect: Bool = {
            let fd = open(path, O_RDONLY | bm_o_direct())
            defer { if fd >= 0 { close(fd) } }
            return fd >= 0
        }()
        try await roundTrip(path: path, expectDirect: kernelAllowsDirect)
    }

    /// A size that is not a multiple of the block size cannot use O_DIRECT for its tail: the device
    /// falls back to buffered I/O and still reads and writes every byte.
    @Test func unalignedSizeFallsBackToBufferedIO() async throws {
        let path = try scratchFile(size: (1 << 20) + 100)
        defer { unlink(path) }
        try await roundTrip(path: path, expectDirect: false)
    }

    private func roundTrip(path: String, expectDirect: Bool) async throws {
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        #expect(device.isDirect == expectDirect)
        let buffer = AlignedBuffer(capacity: 4096)
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0x11)
        try await self.await { device.write(from: buffer.baseAddress, count: 4096, offset: 8192, durable: true, completion: $0) }
        try await self.await { device.flush(completion: $0) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path))[8192] == 0x11)
    }

    /// A second writable open of the same file is refused, naming the file.
    @Test func secondWriterIsRefused() throws {
        let path = try scratchFile(size: 1 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let first = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        let error = #expect(throws: BlockIOError.self) { try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger) }
        #expect(error?.description.contains(path) == true)
        #expect(error?.description.contains("in use") == true)
        withExtendedLifetime(first) {}
    }

    /// `close()` lets go of the file and its lock while the object is still held (by a straggling
    /// completion, say): the path opens again for writing at once; I/O asked of the closed device
    /// fails, naming the path and saying it was closed.
    @Test func aClosedDeviceLetsGoOfItsLockAndRefusesIO() async throws {
        let path = try scratchFile(size: 1 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let first = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        first.close()
        let second = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        let buffer = AlignedBuffer(capacity: 4096)
        let error = await #expect(throws: BlockIOError.self) {
            try await self.await { first.read(into: buffer.baseAddress, count: 4096, offset: 0, completion: $0) }
        }
        #expect(error?.description.contains(path) == true)
        #expect(error?.description.contains("closed") == true)
        #expect(throws: BlockIOError.self) { try first.flushNow() }
        #expect(first.replacement()?.contains("closed") == true)
        first.close()  // again: nothing happens
        try await self.await { second.read(into: buffer.baseAddress, count: 4096, offset: 0, completion: $0) }
    }

    /// A device closed with I/O in flight (libaio reads and writes, zeroing and punching on the
    /// blocking queue, a flush) closes when the last completes: every one of them succeeds, none
    /// meets a closed descriptor; then the path opens again.
    @Test func closeWaitsForTheIOInFlight() async throws {
        let path = try scratchFile(size: 8 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        let buffers = (0..<64).map { _ in AlignedBuffer(capacity: 64 << 10) }
        let results = Mutex<[Result<Void, BlockIOError>]>([])
        let all = OneShot<Void>()
        let expected = buffers.count + 9
        let record: @Sendable (Result<Void, BlockIOError>) -> Void = { result in
            if results.withLock({ $0.append(result); return $0.count == expected }) { all.fulfil() }
        }
        for (index, buffer) in buffers.enumerated() {
            let offset = UInt64(index) * (64 << 10)
            if index % 2 == 0 {
                device.read(into: buffer.baseAddress, count: 64 << 10, offset: offset, completion: record)
            } else {
                device.write(from: buffer.baseAddress, count: 64 << 10, offset: offset, durable: false, completion: record)
            }
        }
        for index in 0..<4 {
            device.writeZeroes(offset: UInt64(4 + index) << 20, length: 1 << 20, mayDeallocate: index % 2 == 0, fastOnly: false,
                               completion: record)
            device.discard(offset: UInt64(4 + index) << 20, length: 4096, completion: record)
        }
        device.flush(completion: record)
        device.close()
        await all.wait()
        let failures = results.withLock { $0.compactMap { result -> String? in
            if case .failure(let error) = result { return error.description }
            return nil
        } }
        #expect(failures.isEmpty, "\(failures)")
        _ = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        withExtendedLifetime(device) {}
    }

    /// A missing path fails with ENOENT and names the path.
    @Test func missingPathNamesThePath() throws {
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let error = #expect(throws: BlockIOError.self) {
            try BlockDevice.open(path: "/var/tmp/does-not-exist-\(UUID().uuidString)", readOnly: true, aio: aio, logger: logger)
        }
        #expect(error?.errno == .noEntry)
        #expect(error?.description.hasPrefix("open /var/tmp/does-not-exist-") == true)
    }

    /// Holes are found with SEEK_DATA/SEEK_HOLE; punching and zeroing make holes and zeroes.
    @Test func allocationMapDiscardAndZero() async throws {
        let path = try scratchFile(size: 8 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: logger)
        let data = AlignedBuffer(capacity: 1 << 20)
        data.bytes.initializeMemory(as: UInt8.self, repeating: 0xee)
        try await self.await { device.write(from: data.baseAddress, count: 1 << 20, offset: 2 << 20, durable: false, completion: $0) }
        try await self.await { device.flush(completion: $0) }
        let map = try device.allocationMap(offset: 0, length: 8 << 20, maxExtents: 16)
        #expect(map == [.init(length: 2 << 20, isHole: true), .init(length: 1 << 20, isHole: false), .init(length: 5 << 20, isHole: true)])
        #expect(try device.allocationMap(offset: 0, length: 8 << 20, maxExtents: 1).count == 1)

        try await self.await { device.discard(offset: 2 << 20, length: 512 << 10, completion: $0) }
        try await self.await { device.writeZeroes(offset: (2 << 20) + (512 << 10), length: 4096, mayDeallocate: false, fastOnly: false, completion: $0) }
        let contents = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(contents[(2 << 20) + 100] == 0)
        #expect(contents[(2 << 20) + (512 << 10) + 10] == 0)
        #expect(contents[(2 << 20) + (512 << 10) + 4096] == 0xee)
    }

    /// A read past the end of the device is an error naming offset and device, not a hang or garbage.
    @Test func readPastEndIsAnError() async throws {
        let path = try scratchFile(size: 1 << 20)
        defer { unlink(path) }
        let aio = try AIOEngine()
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: true, aio: aio, logger: logger)
        let buffer = AlignedBuffer(capacity: 8192)
        let result = await withCheckedContinuation { continuation in
            device.read(into: buffer.baseAddress, count: 8192, offset: (1 << 20) - 4096) { continuation.resume(returning: $0) }
        }
        guard case .failure(let error) = result else { Issue.record("read past the end succeeded"); return }
        #expect(error.description.contains(path))
        #expect(error.offset == 1 << 20)
    }
}
