import Foundation
import Testing

/// A second host: a network namespace joined to this one by a veth pair, with addresses made for
/// the test and torn down after it.
final class SecondHost {
    let namespace: String
    let localLink: String
    let localAddress: String
    let remoteAddress: String

    init() throws {
        let id = Int(getpid()) % 200 + 20
        namespace = "bm-host-\(getpid())"
        localLink = "bmv\(getpid() % 100_000)a"
        let remoteLink = "bmv\(getpid() % 100_000)b"
        localAddress = "10.213.\(id).1"
        remoteAddress = "10.213.\(id).2"
        let steps: [[String]] = [
            ["ip", "netns", "add", namespace],
            ["ip", "link", "add", localLink, "type", "veth", "peer", "name", remoteLink],
            ["ip", "link", "set", remoteLink, "netns", namespace],
            ["ip", "addr", "add", "\(localAddress)/30", "dev", localLink],
            ["ip", "link", "set", localLink, "up"],
            ["ip", "netns", "exec", namespace, "ip", "addr", "add", "\(remoteAddress)/30", "dev", remoteLink],
            ["ip", "netns", "exec", namespace, "ip", "link", "set", remoteLink, "up"],
            ["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"],
        ]
        for step in steps {
            let result = try runQuietly(step)
            guard result.succeeded else {
                tearDown()
                throw IntegrationFailure("cannot set up the second host: \(result)")
            }
        }
    }

    /// Brings the link between the hosts down or up (a cut cable: no reset, no reply).
    func link(up: Bool) throws {
        let result = try runQuietly(["ip", "link", "set", localLink, up ? "up" : "down"])
        guard result.succeeded else { throw IntegrationFailure("\(result)") }
    }

    func tearDown() {
        _ = try? runQuietly(["ip", "link", "del", localLink])
        _ = try? runQuietly(["ip", "netns", "del", namespace])
    }

    private func runQuietly(_ arguments: [String]) throws -> CommandResult {
        let dir = try TempDir("netns")
        defer { dir.remove() }
        return try run(arguments, in: dir, timeout: 60)
    }
}

/// The migration across hosts the issue asks for: OLD here, NEW on another host behind nbdkit
/// over TCP (`nbd://HOST:PORT/`), a cable cut mid-recovery (the link down: no reset, only
/// silence), then the link back and `add` of the same URI — which copies only what the bitmap
/// names — and NEW ends a byte-for-byte copy of OLD with every acknowledged write.
@Suite(.serialized) struct CrossHostTests {
    @Test func aMigrationAcrossHostsSurvivesACutLink() throws {
        try Tools.require("ip", "nbdkit", "nbdinfo", "qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let host = try SecondHost()
        defer { host.tearDown() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: 32 << 20)
        try makeSparseFile(new, size: 32 << 20)
        let nbdkit = try ChildProcess(["ip", "netns", "exec", host.namespace, "nbdkit", "-f", "-i", host.remoteAddress, "-p", "10809",
                                       "file", new], in: dir)
        defer { nbdkit.killAndWait() }
        let uri = "nbd://\(host.remoteAddress):10809/"
        #expect(waitUntil(timeout: 60) { !nbdkit.isRunning || ((try? run(["nbdinfo", "--size", uri], in: dir, timeout: 30))?.succeeded ?? false) }
                && nbdkit.isRunning, "nbdkit on the second host did not come up\n\(nbdkit.stderr)")

        let mirror = try MirrorDaemon(source: old, target: uri, in: dir,
                                      ["--bitmap", dir.file("m0.bitmap"), "--region-size", "256K", "--speed-max", "4096", "--nbd-timeout", "3"])
        try #require(try mirror.waitForStatus { $0.bytesCopied >= 4 << 20 } != nil)
        try host.link(up: false)
        let failed = try #require(try mirror.waitForStatus { $0.state == .targetFailed })
        #expect(failed.failure?.contains(uri) == true && failed.failure?.contains("no reply") == true, "\(String(describing: failed.failure))")
        let write = try run(["qemu-io", "-f", "raw", "-c", "write -P 0x6d 12M 2M", mirror.uri], in: dir)
        #expect(write.succeeded, "the mirror stopped serving when the link was cut\n\(write)\n\(mirror.log)")

        try host.link(up: true)
        try mirror.cli("speed", "m0", "--max", "unlimited")
        let add = try mirror.cli("add", "m0", uri)
        #expect(add.succeeded, "\(add)\n\(mirror.log)")
        let regions = add.stdout.firstMatch(of: /recovery started \((\d+) of (\d+) regions/).map { (Int($0.1)!, Int($0.2)!) }
        #expect(regions.map { $0.0 > 0 && $0.0 < $0.1 } == true, "add copies only what the bitmap names: \(add)")
        try #require(try mirror.waitForStatus { $0.state == .inSync } != nil)
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync: \(uri) is a complete copy"), "\(stop)")
        #expect(try firstDifference(old, new) == nil, "NEW on the second host differs from OLD\n\(mirror.log)")
        let written = try readBytes(new, offset: 12 << 20, length: 2 << 20)
        #expect(written == Data(repeating: 0x6d, count: 2 << 20), "the write made while the link was cut is on NEW")
    }
}
