import Foundation
import Testing

/// A target that is an NBD server: nbdkit's file plugin over NEW, reached by an `nbd+unix://` URI
/// (the two-host version is `CrossHostTests`). The mirror copies onto it while fio writes and
/// verifies, and stops "in sync" with NEW a byte-for-byte copy; a server that dies fails the
/// target (the mirror keeps serving from the source), and `add` of the same URI copies only the
/// regions the bitmap names. Bad URIs, missing servers and small remotes are one error line.
@Suite(.serialized) struct RemoteLegTests {
    /// nbdkit serving `image` on `dir/NAME.sock` (file plugin; `arguments` are filters and their
    /// parameters), and its URI.
    final class Nbdkit {
        let child: ChildProcess
        let uri: String
        /// `plugin`: another plugin and its parameters instead of `file IMAGE`.
        init(_ image: String, in dir: TempDir, name: String = "nbdkit", _ arguments: [String] = [], plugin: [String]? = nil) throws {
            let socket = dir.file("\(name).sock")
            try? FileManager.default.removeItem(atPath: socket)
            child = try ChildProcess(["nbdkit", "-f", "-U", socket] + arguments.filter { $0.hasPrefix("--") } + (plugin ?? ["file", image])
                                     + arguments.filter { !$0.hasPrefix("--") }, in: dir)
            uri = "nbd+unix:///?socket=\(socket)"
            guard waitUntil(timeout: 60, { FileManager.default.fileExists(atPath: socket) || !child.isRunning }), child.isRunning else {
                throw IntegrationFailure("nbdkit did not come up\n\(child.stderr)")
            }
        }
        func kill() { child.killAndWait() }
    }

    /// build → recovery onto the remote under fio's verified random writes → in sync → stop: NEW
    /// (the file behind nbdkit) equals OLD. nbdkit asks for 4 KiB blocks here, so the export asks
    /// its clients for them too.
    @Test func aMirrorOntoAnNbdServerEndsWithNewACopyOfOld() throws {
        try Tools.require("nbdkit", "fio")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: 32 << 20)
        try makeSparseFile(new, size: 32 << 20)
        let remote = try Nbdkit(new, in: dir, ["--filter=blocksize-policy", "blocksize-minimum=4096", "blocksize-error-policy=error"])
        defer { remote.kill() }
        let mirror = try MirrorDaemon(source: old, target: remote.uri, in: dir,
                                      ["--bitmap", dir.file("m0.bitmap"), "--region-size", "256K", "--speed-max", "16384"])
        let fio = try run(["fio", "--name=remote", "--ioengine=nbd", "--uri=\(mirror.uri)", "--rw=randwrite", "--bsrange=4k-64k",
                           "--iodepth=8", "--size=32M", "--io_size=8M", "--verify=crc32c", "--verify_state_save=0"], in: dir)
        #expect(fio.succeeded, "\(fio)\n\(mirror.log)")
        let synced = try mirror.waitForStatus { $0.state == .inSync }
        #expect(synced?.target == remote.uri, "\(String(describing: synced))")
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync: \(remote.uri) is a complete copy of \(old)"), "\(stop)")
        #expect(try firstDifference(old, new) == nil, "NEW differs from OLD\n\(mirror.log)")
    }

    /// The server dies mid-recovery: the target fails naming the URI, the mirror keeps serving
    /// from the source; the server back, `add` of the same URI resumes from the bitmap (fewer
    /// regions than all) and the mirror ends in sync with NEW equal to OLD.
    @Test func aServerThatDiesFailsTheTargetAndAddResumes() throws {
        try Tools.require("nbdkit", "qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: 32 << 20)
        try makeSparseFile(new, size: 32 << 20)
        var remote = try Nbdkit(new, in: dir)
        defer { remote.kill() }
        let mirror = try MirrorDaemon(source: old, target: remote.uri, in: dir,
                                      ["--bitmap", dir.file("m0.bitmap"), "--region-size", "256K", "--speed-max", "4096", "--nbd-timeout", "5"])
        try #require(try mirror.waitForStatus { $0.bytesCopied >= 4 << 20 } != nil)
        remote.kill()
        let failed = try #require(try mirror.waitForStatus { $0.state == .targetFailed })
        #expect(failed.failure?.contains(remote.uri) == true, "\(String(describing: failed.failure))")
        let write = try run(["qemu-io", "-f", "raw", "-c", "write -P 0x5c 20M 1M", mirror.uri], in: dir)
        #expect(write.succeeded, "the mirror stopped serving when its target failed\n\(write)\n\(mirror.log)")

        remote = try Nbdkit(new, in: dir)
        try mirror.cli("speed", "m0", "--max", "unlimited")
        let add = try mirror.cli("add", "m0", remote.uri)
        #expect(add.succeeded, "\(add)\n\(mirror.log)")
        let regions = add.stdout.firstMatch(of: /recovery started \((\d+) of (\d+) regions/).map { (Int($0.1)!, Int($0.2)!) }
        #expect(regions.map { $0.0 > 0 && $0.0 < $0.1 } == true, "add copies only what the bitmap names: \(add)")
        try #require(try mirror.waitForStatus { $0.state == .inSync } != nil)
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync"), "\(stop)")
        #expect(try firstDifference(old, new) == nil, "NEW differs from OLD\n\(mirror.log)")
    }

    /// A remote that starts failing writes with EIO (nbdkit's error filter, switched on by a file):
    /// the target fails naming the URI and the error, the client's writes still succeed (from the
    /// source), and `stop` says NEW is incomplete and why.
    @Test func aRemoteThatFailsWritesFailsTheTargetNotTheClient() throws {
        try Tools.require("nbdkit", "qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), trigger = dir.file("fail-now")
        try makeRandomFile(old, size: 16 << 20)
        try makeSparseFile(new, size: 16 << 20)
        let remote = try Nbdkit(new, in: dir, ["--filter=error", "error=EIO", "error-pwrite-rate=100%", "error-file=\(trigger)"])
        defer { remote.kill() }
        let mirror = try MirrorDaemon(source: old, target: remote.uri, in: dir)
        try #require(try mirror.waitForStatus { $0.state == .inSync } != nil)
        _ = FileManager.default.createFile(atPath: trigger, contents: nil)
        let write = try run(["qemu-io", "-f", "raw", "-c", "write -P 0x4e 3M 128k", "-c", "read -P 0x4e 3M 128k", mirror.uri], in: dir)
        #expect(write.succeeded, "a target's EIO reached the client\n\(write)\n\(mirror.log)")
        let failed = try #require(try mirror.waitForStatus { $0.state == .targetFailed })
        #expect(failed.failure?.contains(remote.uri) == true && failed.failure?.contains("Input/output error") == true,
                "\(String(describing: failed.failure))")
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("not in sync (target failed:"), "\(stop)")
        #expect(try readBytes(old, offset: 3 << 20, length: 128 << 10) == Data(repeating: 0x4e, count: 128 << 10))
    }

    /// A target that requires TLS (nbdkit --tls=require with a pre-shared key), reached by an
    /// nbds+unix:// URI: the mirror ends in sync with NEW a copy of OLD.
    @Test func aTargetOverTLS() throws {
        try Tools.require("nbdkit", "qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: 8 << 20)
        try makeSparseFile(new, size: 8 << 20)
        let keys = try preSharedKeyFile(in: dir, user: "mirror")
        let remote = try Nbdkit(new, in: dir, ["--tls=require", "--tls-psk=\(keys)"])
        defer { remote.kill() }
        let uri = remote.uri.replacingOccurrences(of: "nbd+unix:", with: "nbds+unix:") + "&tls-psk-file=\(keys)&tls-username=mirror"
        let mirror = try MirrorDaemon(source: old, target: uri, in: dir)
        let write = try run(["qemu-io", "-f", "raw", "-c", "write -P 0x2a 1M 64k", mirror.uri], in: dir)
        #expect(write.succeeded, "\(write)\n\(mirror.log)")
        try #require(try mirror.waitForStatus { $0.state == .inSync } != nil)
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync"), "\(stop)")
        #expect(try firstDifference(old, new) == nil, "NEW differs from OLD\n\(mirror.log)")
    }

    /// A remote SOURCE whose reads start failing (nbdkit's error filter): the client's read gets
    /// an error, never silence or zeroes; the mirror stays up and serves what still reads.
    @Test func aRemoteSourceThatFailsIsAnErrorToTheClient() throws {
        try Tools.require("nbdkit", "qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), trigger = dir.file("fail-now")
        try makeRandomFile(old, size: 8 << 20)
        let remote = try Nbdkit(old, in: dir, ["--filter=error", "error=EIO", "error-pread-rate=100%", "error-file=\(trigger)"])
        defer { remote.kill() }
        let mirror = try MirrorDaemon(source: remote.uri, target: "missing", in: dir)
        let expected = try readBytes(old, offset: 1 << 20, length: 4096)
        let before = try run(["qemu-io", "-f", "raw", "-c", "read -v 1M 4k", mirror.uri], in: dir)
        #expect(before.succeeded && before.stdout.contains("read 4096/4096"), "\(before)\n\(mirror.log)")
        _ = FileManager.default.createFile(atPath: trigger, contents: nil)
        let failing = try run(["qemu-io", "-f", "raw", "-c", "read 1M 4k", mirror.uri], in: dir)
        #expect(failing.stdout.contains("Input/output error") || failing.stderr.contains("Input/output error"),
                "a failing remote source was not an error to the client\n\(failing)\n\(mirror.log)")
        try FileManager.default.removeItem(atPath: trigger)
        let after = try run(["qemu-io", "-f", "raw", "-c", "read -P \(expected[0]) 1M 1", mirror.uri], in: dir)
        #expect(after.succeeded, "the mirror did not serve again once its source did\n\(after)\n\(mirror.log)")
        _ = try mirror.stop()
    }

    /// `verify` with a leg that is a URI: equal, then one sector changed behind the server
    /// (exit 3, the offset named).
    @Test func verifyComparesALocalAndARemoteLeg() throws {
        try Tools.require("nbdkit")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), copy = dir.file("copy.img")
        try makeRandomFile(old, size: 8 << 20)
        try FileManager.default.copyItem(atPath: old, toPath: copy)
        let remote = try Nbdkit(copy, in: dir, ["-r"])
        defer { remote.kill() }
        let binary = try BlockMirrorBinary.path()
        let same = try run([binary, "verify", old, remote.uri], in: dir)
        #expect(same.succeeded && same.stdout.contains("mismatch_cnt=0"), "\(same)")
        try writeInPlace(copy, offset: 5 << 20, Data(repeating: 0xA5, count: 512))
        let differs = try run([binary, "verify", remote.uri, old], in: dir)
        #expect(differs.exited && differs.status == 3 && differs.stdout.contains("mismatch_cnt=1") && differs.stdout.contains("offset \(5 << 20)"),
                "\(differs)")
    }

    /// Geometries the mirror cannot run are one error line before anything is served: a source of
    /// 2^62 bytes (more regions than a bitmap holds), regions smaller than the remote's minimum
    /// block size (as source and as target).
    @Test func geometriesARemoteCannotTakeAreOneError() throws {
        try Tools.require("nbdkit")
        let dir = try TempDir()
        defer { dir.remove() }
        let local = dir.file("local.img"), blocky = dir.file("blocky.img")
        try makeSparseFile(local, size: 8 << 20)
        try makeSparseFile(blocky, size: 8 << 20)
        let huge = try Nbdkit("", in: dir, name: "huge", ["--filter=nozero"], plugin: ["null", "size=\(UInt64(1) << 62)"])
        defer { huge.kill() }
        let large = try Nbdkit(blocky, in: dir, name: "blocky", ["--filter=blocksize-policy", "blocksize-minimum=65536", "blocksize-preferred=65536",
                                                                 "blocksize-error-policy=error"])
        defer { large.kill() }
        let cases: [(source: String, target: String, extra: [String], says: String)] = [
            (huge.uri, "missing", [], "more than the 1073741824 a bitmap holds (use --region-size 4294967296 or more)"),
            (large.uri, "missing", ["--region-size", "4K"], "takes only requests in multiples of 65536 bytes: use --region-size 65536 or more"),
            (local, large.uri, ["--region-size", "4K"], "more than the mirror's 4096-byte regions: build it with --region-size 65536 or more"),
        ]
        for (source, target, extra, says) in cases {
            let build = try run([try BlockMirrorBinary.path(), "build", "m0", "--source", source, "--target", target,
                                 "--listen", "unix:\(dir.file("m0.sock"))", "--run-dir", dir.file("run")] + extra, in: dir)
            #expect(!build.succeeded && build.stderr.contains(says) && build.stdout.isEmpty, "\(source) → \(target): \(build)")
        }
    }

    /// Each wrong remote is one error line naming the URI, and nothing is served.
    @Test func wrongRemotesAreOneClearError() throws {
        try Tools.require("nbdkit")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), small = dir.file("small.img")
        try makeSparseFile(old, size: 8 << 20)
        try makeSparseFile(small, size: 4 << 20)
        let remote = try Nbdkit(small, in: dir)
        defer { remote.kill() }
        // blockmirror's own server knows its export names (nbdkit serves any).
        let other = dir.file("other.img")
        try makeSparseFile(other, size: 8 << 20)
        let named = try ServerProcess(image: other, in: dir, socketName: "named.sock", name: "disk")
        defer { named.stop() }
        let missing = "nbd+unix:///?socket=\(dir.file("nobody.sock"))"
        let noExport = "nbd+unix:///nope?socket=\(named.socketPath)"
        let cases: [(target: String, says: String)] = [
            (missing, "\(missing): cannot connect"),
            ("nbd://exa mple/x", "bad NBD URI nbd://exa mple/x"),
            ("nbd://127.0.0.1:1/x", "nbd://127.0.0.1:1/x: cannot connect"),
            (remote.uri, "target \(remote.uri) has 4194304 bytes, smaller than source \(old) (8388608 bytes)"),
            (noExport, "\(noExport): the server has no export 'nope'"),
        ]
        for (target, says) in cases {
            let build = try run([try BlockMirrorBinary.path(), "build", "m0", "--source", old, "--target", target,
                                 "--listen", "unix:\(dir.file("m0.sock"))", "--run-dir", dir.file("run")], in: dir)
            #expect(!build.succeeded && build.stderr.contains(says) && build.stdout.isEmpty, "\(target): \(build)")
        }
    }
}
