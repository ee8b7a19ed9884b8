import Foundation
import Testing

/// libnbd's `nbdcopy` (parallel, multi-connection reads and writes) against `blockmirror serve`.
@Suite struct NBDCopyTests {
    static let size = 64 << 20

    /// A random 64 MiB image copied out of one server and into a second, empty one arrives intact.
    @Test func roundTripThroughTwoServers() throws {
        try Tools.require("nbdcopy")
        let dir = try TempDir()
        defer { dir.remove() }
        let source = dir.file("a.img"), copy = dir.file("b.img"), target = dir.file("c.img")
        try makeRandomFile(source, size: Self.size)
        try makeSparseFile(target, size: Self.size)
        let serverA = try ServerProcess(image: source, in: dir, socketName: "a.sock")
        defer { serverA.stop() }
        let serverC = try ServerProcess(image: target, in: dir, socketName: "c.sock")
        defer { serverC.stop() }

        let export = try run("nbdcopy", serverA.uri, copy, in: dir)
        try #require(export.succeeded, "\(export)\n\(serverA.log)")
        let copied = try firstDifference(source, copy)
        #expect(copied == nil, "nbdcopy from the export: \(copied ?? "")\n\(serverA.log)")

        let importing = try run("nbdcopy", copy, serverC.uri, in: dir)
        try #require(importing.succeeded, "\(importing)\n\(serverC.log)")
        serverA.stop()
        serverC.stop()
        let written = try firstDifference(source, target)
        #expect(written == nil, "nbdcopy into the second export: \(written ?? "")\n\(serverC.log)")
    }
}
