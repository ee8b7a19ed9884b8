import Foundation
import Testing

/// `blockmirror serve --tls require` with real TLS clients: nbdinfo, nbdcopy (libnbd, GnuTLS),
/// qemu-io and qemu-img with a pre-shared key, nbdinfo with X.509 certificates made here by openssl; a plaintext client is
/// refused; and blockmirror's own client (a mirror whose target is such an export) copies onto it.
@Suite(.serialized) struct ServerTLSTests {
    @Test func preSharedKeysWithLibnbdQemuAndBlockmirror() throws {
        try Tools.require("nbdinfo", "qemu-io", "qemu-img", "nbdcopy")
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("disk.img"), keys = try preSharedKeyFile(in: dir, user: "alice")
        try makeRandomFile(image, size: 8 << 20)
        let server = try ServerProcess(["serve", image, "--tls", "require", "--tls-psk", keys], in: dir)
        defer { server.stop() }
        #expect(server.uri.hasPrefix("nbds+unix:///?socket="), "\(server.uri)")
        // libnbd 1.14 takes the PSK user from the URI's user info only.
        let secure = server.uri.replacingOccurrences(of: "nbds+unix://", with: "nbds+unix://alice@") + "&tls-psk-file=\(keys)"
        let info = try run(["nbdinfo", "--size", secure], in: dir)
        #expect(info.succeeded && info.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(8 << 20)", "\(info)\n\(server.log)")
        let plain = try run(["nbdinfo", "--size", server.uri.replacingOccurrences(of: "nbds+unix", with: "nbd+unix")], in: dir)
        #expect(!plain.succeeded, "a plaintext client was served by --tls require\n\(plain)")

        // qemu's PSK credentials: a directory holding keys.psk.
        let qemu = try run(["qemu-io", "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(dir.path),username=alice",
                            "--image-opts", "driver=nbd,path=\(server.socketPath),tls-creds=tls0",
                            "-c", "write -P 0x77 1M 64k", "-c", "read -P 0x77 1M 64k"], in: dir)
        #expect(qemu.succeeded && qemu.stdout.contains("read 65536/65536"), "\(qemu)\n\(server.log)")
        let converted = dir.file("copy.img")
        let imgConvert = try run(["qemu-img", "convert", "--object", "tls-creds-psk,id=tls0,endpoint=client,dir=\(dir.path),username=alice",
                                  "--image-opts", "driver=nbd,path=\(server.socketPath),tls-creds=tls0", "-O", "raw", converted], in: dir)
        #expect(imgConvert.succeeded, "\(imgConvert)\n\(server.log)")
        let nbdcopy = try run(["nbdcopy", secure, dir.file("nbdcopy.img")], in: dir)
        #expect(nbdcopy.succeeded, "\(nbdcopy)\n\(server.log)")
        #expect(try firstDifference(converted, image) == nil && (try firstDifference(dir.file("nbdcopy.img"), image)) == nil,
                "a TLS client read other bytes than the image holds")
    }

    @Test func x509WithLibnbd() throws {
        try Tools.require("nbdinfo", "openssl")
        let dir = try TempDir()
        defer { dir.remove() }
        let certificates = dir.file("server"), client = dir.file("client")
        for path in [certificates, client] { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        let steps: [[String]] = [
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(certificates)/ca-key.pem",
             "-out", "\(certificates)/ca-cert.pem", "-subj", "/CN=blockmirror test CA", "-days", "2",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(certificates)/server-key.pem",
             "-out", "\(certificates)/server.csr", "-subj", "/CN=localhost"],
        ]
        for step in steps { #expect(try run(step, in: dir).succeeded) }
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".write(toFile: dir.file("ext.cnf"), atomically: true,
                                                                                               encoding: .utf8)
        #expect(try run(["openssl", "x509", "-req", "-in", "\(certificates)/server.csr", "-CA", "\(certificates)/ca-cert.pem",
                         "-CAkey", "\(certificates)/ca-key.pem", "-CAcreateserial", "-out", "\(certificates)/server-cert.pem",
                         "-days", "2", "-extfile", dir.file("ext.cnf")], in: dir).succeeded)
        try FileManager.default.copyItem(atPath: "\(certificates)/ca-cert.pem", toPath: "\(client)/ca-cert.pem")
        let image = dir.file("disk.img")
        try makeRandomFile(image, size: 4 << 20)
        let server = try ServerProcess(["serve", image, "--tls", "require", "--tls-certificates", certificates], in: dir)
        defer { server.stop() }
        let info = try run(["nbdinfo", "--size", server.uri + "&tls-certificates=\(client)"], in: dir)
        #expect(info.succeeded && info.stdout.contains("\(4 << 20)"), "\(info)\n\(server.log)")
    }

    /// A mirror whose target is a `blockmirror serve --tls require` export (blockmirror's client
    /// and server, both TLS): in sync, NEW a copy of OLD.
    @Test func aMirrorOntoATLSExport() throws {
        try Tools.require("qemu-io")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img"), keys = try preSharedKeyFile(in: dir, user: "mirror")
        try makeRandomFile(old, size: 8 << 20)
        try makeSparseFile(new, size: 8 << 20)
        let remote = try ServerProcess(["serve", new, "--tls", "require", "--tls-psk", keys], in: dir, socketName: "remote.sock")
        defer { remote.stop() }
        let mirror = try MirrorDaemon(source: old, target: remote.uri + "&tls-psk-file=\(keys)&tls-username=mirror", in: dir)
        #expect(try run(["qemu-io", "-f", "raw", "-c", "write -P 0x31 2M 1M", mirror.uri], in: dir).succeeded)
        try #require(try mirror.waitForStatus { $0.state == .inSync } != nil)
        let stop = try mirror.stop()
        #expect(stop.stdout.contains("in sync"), "\(stop)")
        remote.stop()
        #expect(try firstDifference(old, new) == nil, "NEW differs from OLD\n\(mirror.log)")
    }

    /// Settings that cannot work are one error line before anything is served.
    @Test func badTLSSettingsAreOneError() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: 1 << 20)
        let binary = try BlockMirrorBinary.path()
        let cases: [([String], String)] = [
            (["--tls", "require"], "needs one of --tls-certificates DIR and --tls-psk FILE"),
            (["--tls-psk", dir.file("keys.psk")], "--tls-psk needs --tls on or --tls require"),
            (["--tls", "on", "--tls-psk", dir.file("none.psk")], "cannot read the PSK file \(dir.file("none.psk"))"),
            (["--tls", "on", "--tls-certificates", dir.path], "cannot read the server certificate \(dir.path)/server-cert.pem"),
        ]
        for (arguments, says) in cases {
            let result = try run([binary, "serve", image, "--listen", "unix:\(dir.file("s.sock"))"] + arguments, in: dir)
            #expect(!result.succeeded && result.stderr.contains(says), "\(arguments): \(result)")
        }
    }
}

/// A psktool-style key file DIR/keys.psk holding a random 256-bit key for `user`; its path.
func preSharedKeyFile(in dir: TempDir, user: String) throws -> String {
    let path = dir.file("keys.psk")
    let key = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    try "\(user):\(key)\n".write(toFile: path, atomically: true, encoding: .utf8)
    return path
}
