import Foundation
import Testing

/// QEMU's NBD client (qemu-io, qemu-img) against `blockmirror serve`.
@Suite struct QemuTests {
    static let mib = 1 << 20

    /// qemu-io writes (aligned 1 MiB, unaligned 512 B) read back over NBD and land in the file byte for byte.
    @Test func qemuIOWritesReachTheFile() throws {
        try Tools.require("qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: 16 * Self.mib)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }

        let io = try run("qemu-io", "-f", "raw",
                         "-c", "write -P 0xab 0 1M",
                         "-c", "write -P 0xcd 4096 512",
                         "-c", "read -P 0xab 0 4096",
                         "-c", "read -P 0xcd 4096 512",
                         "-c", "read -P 0xab 4608 1043968",
                         "-c", "read -P 0 1M 1M",
                         server.uri, in: dir)
        #expect(io.succeeded, "\(io)\n\(server.log)")
        #expect(!io.output.contains("failed"), "qemu-io reported a failure (e.g. Pattern verification failed)\n\(io)\n\(server.log)")

        var expected = Data(repeating: 0xab, count: Self.mib)
        expected.replaceSubrange(4096..<4608, with: Data(repeating: 0xcd, count: 512))
        expected.append(Data(repeating: 0, count: Self.mib))
        let actual = try readBytes(image, length: 2 * Self.mib)
        #expect(actual == expected, "file bytes after qemu-io differ from the pattern (first difference at \(firstMismatch(actual, expected)))\n\(io)\n\(server.log)")
        #expect(try fileSize(image) == 16 * Self.mib, "the file size changed")
    }

    /// qemu-img compare says file == export, and qemu-img convert from the export copies it byte for byte.
    @Test func qemuImgCompareAndConvert() throws {
        try Tools.require("qemu-img")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: 32 * Self.mib)
        try writeInPlace(image, offset: 0, try randomBytes(3 * Self.mib + 123))
        try writeInPlace(image, offset: UInt64(20 * Self.mib + 512), try randomBytes(777))
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }

        let compare = try run("qemu-img", "compare", "-f", "raw", "-F", "raw", image, server.uri, in: dir)
        #expect(compare.succeeded, "\(compare)\n\(server.log)")

        let copy = dir.file("copy.img")
        let convert = try run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, copy, in: dir)
        try #require(convert.succeeded, "\(convert)\n\(server.log)")
        let difference = try firstDifference(image, copy)
        #expect(difference == nil, "qemu-img convert: \(difference ?? "")\n\(convert)\n\(server.log)")
    }
}

