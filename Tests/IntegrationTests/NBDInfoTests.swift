import Foundation
import Testing

/// libnbd's `nbdinfo` against `blockmirror serve`: size, flags, block sizes, block status, names.
@Suite struct NBDInfoTests {
    static let mib = 1 << 20

    /// The one export `nbdinfo --json` lists for the URI, with the whole JSON for messages.
    static func export(_ uri: String, in dir: TempDir, server: ServerProcess) throws -> (info: [String: Any], json: String) {
        let result = try run("nbdinfo", "--json", uri, in: dir)
        try #require(result.succeeded, "\(result)\n\(server.log)")
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        let exports = try #require(object?["exports"] as? [[String: Any]], "no exports in \(result.stdout)")
        try #require(exports.count == 1, "expected one export: \(result.stdout)")
        return (exports[0], result.stdout)
    }

    /// Size, every transmission flag, and the block sizes (1 / 4096 / 32 MiB) are what the contract says.
    @Test func reportsSizeFlagsAndBlockSizes() throws {
        try Tools.require("nbdinfo")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: 64 * Self.mib + 4096)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }

        let (info, json) = try Self.export(server.uri, in: dir, server: server)
        #expect((info["export-size"] as? NSNumber)?.intValue == 64 * Self.mib + 4096, "\(json)")
        #expect(info["is_read_only"] as? Bool == false, "\(json)")
        for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_cache", "can_multi_conn"] {
            #expect(info[flag] as? Bool == true, "\(flag) in \(json)")
        }
        #expect((info["block_size_minimum"] as? NSNumber)?.intValue == 1, "\(json)")
        #expect((info["block_size_preferred"] as? NSNumber)?.intValue == 4096, "\(json)")
        #expect((info["block_size_maximum"] as? NSNumber)?.intValue == 33_554_432, "\(json)")
        #expect((info["contexts"] as? [String])?.contains("base:allocation") == true, "\(json)")
    }

    /// `nbdinfo --map` on a sparse file shows data exactly at the 1 MiB written at 8 MiB, hole+zero elsewhere.
    @Test func mapShowsDataAndHoles() throws {
        try Tools.require("nbdinfo")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("sparse.img")
        try makeSparseFile(image, size: 64 * Self.mib)
        try writeInPlace(image, offset: UInt64(8 * Self.mib), try randomBytes(Self.mib))
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }

        let result = try run("nbdinfo", "--map", server.uri, in: dir)
        try #require(result.succeeded, "\(result)\n\(server.log)")
        // Lines: "OFFSET LENGTH TYPE DESCRIPTION"; the server may split extents, so check coverage.
        var next = 0
        for line in result.stdout.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            try #require(fields.count >= 3, "unparsable map line '\(line)'\n\(result)")
            let offset = Int(fields[0]) ?? -1, length = Int(fields[1]) ?? -1, type = Int(fields[2]) ?? -1
            #expect(offset == next, "extents not contiguous at '\(line)'\n\(result.stdout)")
            let isData = offset < 9 * Self.mib && offset + length > 8 * Self.mib
            if isData {
                #expect(offset >= 8 * Self.mib && offset + length <= 9 * Self.mib && type == 0,
                        "data region 8M..9M should be type 0 (data) alone: '\(line)'\n\(result.stdout)")
            } else {
                #expect(type == 3, "outside 8M..9M should be type 3 (hole,zero): '\(line)'\n\(result.stdout)")
            }
            next = offset + length
        }
        #expect(next == 64 * Self.mib, "map covers \(next) bytes of \(64 * Self.mib)\n\(result.stdout)")
    }

    /// With --readonly the export says read-only and a qemu-io write fails, leaving the file unchanged.
    @Test func readonlyRefusesWrites() throws {
        try Tools.require("nbdinfo", "qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("ro.img")
        try makeSparseFile(image, size: 16 * Self.mib)
        let original = try randomBytes(4096)
        try writeInPlace(image, offset: 0, original)
        let server = try ServerProcess(image: image, in: dir, readonly: true)
        defer { server.stop() }

        let (info, json) = try Self.export(server.uri, in: dir, server: server)
        #expect(info["is_read_only"] as? Bool == true, "\(json)")

        let write = try run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 4096", server.uri, in: dir)
        #expect(!write.succeeded, "a write to a --readonly export should fail\n\(write)\n\(server.log)")
        #expect(try readBytes(image, length: 4096) == original, "the file changed under --readonly\n\(write)\n\(server.log)")
    }

    /// The default name "" and the --name both reach the export; an unknown name is refused.
    @Test func exportNames() throws {
        try Tools.require("nbdinfo")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("named.img")
        try makeSparseFile(image, size: 8 * Self.mib)
        let server = try ServerProcess(image: image, in: dir, name: "disk0")
        defer { server.stop() }

        #expect(server.uri == "nbd+unix:///disk0?socket=\(server.socketPath)", "printed URI")
        let named = try run("nbdinfo", "--size", server.uri, in: dir)
        #expect(named.succeeded && named.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(8 * Self.mib)",
                "\(named)\n\(server.log)")
        let defaultName = try run("nbdinfo", "--size", "nbd+unix:///?socket=\(server.socketPath)", in: dir)
        #expect(defaultName.succeeded && defaultName.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(8 * Self.mib)",
                "\(defaultName)\n\(server.log)")
        let unknown = try run("nbdinfo", "--size", "nbd+unix:///nosuch?socket=\(server.socketPath)", in: dir)
        #expect(!unknown.succeeded, "an unknown export name should be refused\n\(unknown)\n\(server.log)")
        #expect(server.isRunning, "server died\n\(server.log)")
    }
}
