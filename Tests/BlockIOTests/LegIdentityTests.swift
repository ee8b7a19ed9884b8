import Foundation
import Logging
import Testing
@testable import BlockIO

#if canImport(Glibc)
import Glibc
#endif

/// What the kernel tells of a leg: identity (the same file or device, or a replacement), write
/// traces (whether anything wrote it), and the watch of a leg in use — on real files and loop
/// devices.
@Suite(.serialized) struct LegIdentityTests {
    final class Scratch {
        let dir = "/var/tmp/leg-identity-\(UUID().uuidString)"
        init() throws { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        deinit { try? FileManager.default.removeItem(atPath: dir) }

        func file(_ name: String, size: Int = 4 << 20) -> String {
            let path = "\(dir)/\(name)"
            _ = FileManager.default.createFile(atPath: path, contents: nil)
            truncate(path, off_t(size))
            return path
        }
    }

    func identity(_ path: String) throws -> LegIdentity {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY).get()
        defer { fd.close() }
        return try LegIdentity.of(fd, path: path).get()
    }

    func trace(_ path: String) throws -> LegWriteTrace {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY).get()
        defer { fd.close() }
        return LegWriteTrace.of(fd, size: UInt64(try FileManager.default.attributesOfItem(atPath: path)[.size] as! UInt64))
    }

    /// Runs a command; returns its trimmed output.
    func shell(_ command: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw Errno(rawValue: EIO) }
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func aFileKeepsItsIdentityUnderAnotherPathAndLosesItWhenRecreated() throws {
        let scratch = try Scratch()
        let path = scratch.file("a.img")
        let first = try identity(path)
        #expect(first.birth != nil, "this filesystem keeps birth times")
        let link = scratch.dir + "/link.img"
        #expect(symlink(path, link) == 0)
        #expect(try identity(link).differences(from: first).isEmpty)
        #expect(try identity(link).sharesStorage(with: first))
        unlink(path)
        _ = scratch.file("a.img")
        let recreated = try identity(path)
        // The inode number may well be reused; the birth time tells the new file apart.
        #expect(!recreated.differences(from: first).isEmpty)
    }

    @Test func writesMoveAFilesTraceAndReadsDoNot() throws {
        let scratch = try Scratch()
        let path = scratch.file("a.img")
        let before = try trace(path)
        _ = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(try trace(path).compared(with: before) == .unchanged)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.write(contentsOf: Data([1]))
        try handle.close()
        guard case .written = try trace(path).compared(with: before) else {
            Issue.record("a write left no trace")
            return
        }
    }

    /// A change time is told in UTC with its nanoseconds, across the whole range of the count.
    @Test func changeTimesAreToldInUTC() {
        #expect(LegWriteTrace.format(0) == "1970-01-01T00:00:00.000000000Z")
        #expect(LegWriteTrace.format(-1) == "1969-12-31T23:59:59.999999999Z")
        #expect(LegWriteTrace.format(1_796_141_746_448_123_456) == "2026-12-01T16:15:46.448123456Z")
        #expect(LegWriteTrace.format(.max) == "2262-04-11T23:47:16.854775807Z")
        #expect(LegWriteTrace.format(.min) == "1677-09-21T00:12:43.145224192Z")
        var now = LegWriteTrace(size: 4096)
        now.changed = 1_000_000_001
        var recorded = now
        recorded.changed = 0
        #expect(now.compared(with: recorded)
                    == .written("its change time moved from 1970-01-01T00:00:00.000000000Z to 1970-01-01T00:00:01.000000001Z"))
    }

    /// A block device's counters compare within one boot and one attachment only.
    @Test func blockDeviceCountersCompareWithinABootOnly() {
        let recorded = LegWriteTrace(size: 1 << 30, bootID: "boot-a", diskSequence: 7, writeRequests: 100, sectorsWritten: 800)
        #expect(recorded.compared(with: recorded) == .unchanged)
        var now = recorded
        now.writeRequests = 101
        now.sectorsWritten = 808
        #expect(now.compared(with: recorded) == .written("1 write or discard requests (8 sectors) reached it"))
        now = recorded
        now.diskSequence = 8
        guard case .written = now.compared(with: recorded) else { Issue.record("a re-attached device was not noticed"); return }
        now = recorded
        now.bootID = "boot-b"
        guard case .unknown = now.compared(with: recorded) else { Issue.record("counters of another boot were compared"); return }
        now = recorded
        now.size = 2 << 30
        guard case .written = now.compared(with: recorded) else { Issue.record("a resized device was not noticed"); return }
    }

    /// A loop device over a file is that file's storage; set up again over the same file it keeps
    /// its identity, over another file it does not; writes through it move the file's trace.
    @Test func aLoopDeviceIsItsBackingFile() throws {
        let scratch = try Scratch()
        let path = scratch.file("backing.img"), other = scratch.file("other.img")
        let device = try shell("losetup --find --show \(path)")
        defer { _ = try? shell("losetup -d \(device) 2>/dev/null") }
        let loop = try identity(device)
        #expect(loop.kind == .blockDevice && loop.stableID?.hasPrefix("loop:") == true, "\(loop)")
        let (backing, unrelated) = (try identity(path), try identity(other))
        #expect(loop.sharesStorage(with: backing) && !loop.sharesStorage(with: unrelated))
        let before = try trace(device)
        _ = try shell("dd if=/dev/urandom of=\(device) bs=4096 count=1 oflag=direct status=none")
        guard case .written = try trace(device).compared(with: before) else {
            Issue.record("a write through the loop device left no trace")
            return
        }

        _ = try shell("losetup -d \(device)")
        let again = try shell("losetup --find --show \(path)")
        defer { _ = try? shell("losetup -d \(again) 2>/dev/null") }
        #expect(try identity(again).differences(from: loop).isEmpty)
        let elsewhere = try shell("losetup --find --show \(other)")
        defer { _ = try? shell("losetup -d \(elsewhere) 2>/dev/null") }
        #expect(!(try identity(elsewhere).differences(from: loop).isEmpty))
    }

    /// The watch of a leg in use: deleted, shrunk, or its path naming another file.
    @Test func replacementOfAnOpenFileIsNoticed() throws {
        let scratch = try Scratch()
        let aio = try AIOEngine(depth: 8)
        defer { aio.shutdown() }
        func open(_ path: String) throws -> BlockDevice {
            try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: Logger(label: "test"))
        }
        let kept = try open(scratch.file("kept.img"))
        #expect(kept.replacement() == nil)

        let deleted = try open(scratch.file("deleted.img"))
        unlink(deleted.path)
        #expect(deleted.replacement()?.contains("was deleted") == true)

        let shrunk = try open(scratch.file("shrunk.img"))
        truncate(shrunk.path, 1 << 20)
        #expect(shrunk.replacement()?.contains("shrank from 4194304 to 1048576 bytes") == true)

        let renamed = try open(scratch.file("renamed.img"))
        rename(renamed.path, scratch.dir + "/moved.img")
        #expect(renamed.replacement()?.contains("renamed or deleted") == true)
        _ = scratch.file("renamed.img")
        #expect(renamed.replacement()?.contains("now names another file") == true)
    }

    @Test func crc32cMatchesTheStandardCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        // Continuing over two halves gives the checksum of the whole.
        #expect(CRC32C.checksum(Array(bytes[500...]), continuing: CRC32C.checksum(Array(bytes[..<500]))) == CRC32C.checksum(bytes))
        // Slicing-by-8 agrees with the bit-at-a-time definition at every length and alignment.
        func bitwise(_ input: ArraySlice<UInt8>) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in input {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            }
            return ~crc
        }
        for start in 0..<8 {
            for length in 0..<40 {
                let slice = bytes[start..<start + length]
                #expect(CRC32C.checksum(Array(slice)) == bitwise(slice), "offset \(start), length \(length)")
            }
        }
    }
}
