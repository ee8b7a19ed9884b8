import Foundation
import Testing

/// The `blockmirror serve` command line itself: the printed URI, tcp listening, errors.
@Suite struct ServeCommandTests {
    /// A missing image: non-zero exit and one `blockmirror: error:` line on stderr naming the path.
    @Test func missingFileIsAnError() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let missing = dir.file("no-such.img")
        let result = try run([try BlockMirrorBinary.path(), "serve", missing, "--listen", "unix:\(dir.file("s.sock"))"],
                             in: dir, timeout: 60)
        #expect(result.exited && result.status != 0, "\(result)")
        #expect(result.stdout.isEmpty, "printed a URI for a missing file\n\(result)")
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines.first?.hasPrefix("blockmirror: error:") == true && result.stderr.contains(missing),
                "expected one 'blockmirror: error:' line naming \(missing)\n\(result)")
    }

    /// `--listen tcp:127.0.0.1:0` picks a free port, prints `nbd://127.0.0.1:PORT/NAME`, and serves there.
    @Test func tcpListenPrintsURIAndServes() throws {
        try Tools.require("nbdinfo")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: 4 << 20)
        let server = try ServerProcess(image: image, in: dir, name: "t0", extraArguments: ["--listen", "tcp:127.0.0.1:0"])
        defer { server.stop() }
        // Two --listen options: the unix URI line first, then the tcp one.
        var lines: [String] = []
        waitUntil(timeout: 60) {
            lines = readText(server.stdoutPath).split(separator: "\n").map(String.init)
            return lines.count >= 2 || !server.isRunning
        }
        #expect(lines.count == 2, "stdout: \(lines)\n\(server.log)")
        let tcp = try #require(lines.last { $0.hasPrefix("nbd://") }, "no nbd:// URI in \(lines)\n\(server.log)")
        let port = tcp.dropFirst("nbd://127.0.0.1:".count).prefix { $0.isNumber }
        #expect(tcp.hasPrefix("nbd://127.0.0.1:") && Int(port).map { $0 > 0 } == true && tcp.hasSuffix("/t0"), "\(tcp)")
        let size = try run("nbdinfo", "--size", tcp, in: dir)
        #expect(size.succeeded && size.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(4 << 20)",
                "\(size)\n\(server.log)")
    }
}
