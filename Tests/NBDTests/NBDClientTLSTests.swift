import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import NBD
import NBDTLS

/// `nbds://` against nbdkit with `--tls=require`: X.509 (certificates made here with openssl: a CA,
/// a server certificate for localhost and 127.0.0.1) over a Unix socket and over TCP by name and by
/// address, and a pre-shared key; a wrong CA, a plaintext URI, a server without TLS and a missing
/// PSK user are each one error naming the URI.
@Suite(.serialized, .timeLimit(.minutes(3))) struct NBDClientTLSTests {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    /// Runs a command to its end (polled: Foundation's Process does not always see a child's exit
    /// from a task), failing on a non-zero status.
    func run(_ arguments: [String], in directory: String) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = ContinuousClock.now + .seconds(60)
        while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        guard !process.isRunning, process.terminationStatus == 0 else {
            throw Nbdkit.NbdkitError(description: "\(arguments.joined(separator: " ")) failed")
        }
    }

    /// A CA in `directory/NAME-ca`, a server certificate signed by it in `directory/NAME-server`
    /// (nbdkit's layout: ca-cert.pem, server-cert.pem, server-key.pem) and the client's directory
    /// `directory/NAME-client` (ca-cert.pem). Returns the server's and the client's directories.
    func certificates(in directory: String, name: String) async throws -> (server: String, client: String) {
        let server = "\(directory)/\(name)-server", client = "\(directory)/\(name)-client"
        for path in [server, client] { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        try await run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
                       "-subj", "/CN=\(name) test CA", "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
                       "-addext", "keyUsage=critical,keyCertSign,cRLSign"], in: server)
        try await run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server-key.pem", "-out", "server.csr",
                       "-subj", "/CN=localhost"], in: server)
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n".write(toFile: server + "/ext.cnf", atomically: true, encoding: .utf8)
        try await run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                       "-out", "server-cert.pem", "-days", "2", "-extfile", "ext.cnf"], in: server)
        try FileManager.default.copyItem(atPath: server + "/ca-cert.pem", toPath: client + "/ca-cert.pem")
        return (server, client)
    }

    /// A write and its read back.
    func exercise(_ client: NBDClient) async throws {
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 11) }
        #expect(try await client.request(.write, offset: 8192, length: 4096, payload: ByteBuffer(bytes: data)).get() == .done)
        guard case .read(let pieces) = try await client.request(.read, offset: 8192, length: 4096).get(),
              case .data(0, let bytes)? = pieces.first, pieces.count == 1 else {
            Issue.record("not one piece of data")
            return
        }
        #expect(Array(bytes.readableBytesView) == data)
    }

    func connect(_ uri: String) async throws -> NBDClient {
        let parsed = try NBDURI.parse(uri)
        return try await NBDClient.connect(to: parsed, tls: parsed.tls == nil ? nil : try NBDClientTLS(parsed), group: group,
                                           connectTimeout: .seconds(20))
    }

    func refusal(_ uri: String) async -> String? {
        do {
            let client = try await connect(uri)
            await client.close()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func x509OverAUnixSocketAndOverTCP() async throws {
        let dir = try scratchDirectory("nbd-tls-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (server, client) = try await certificates(in: dir, name: "good")
        let (_, stranger) = try await certificates(in: dir, name: "other")
        let nbdkit = try await Nbdkit(directory: dir, ["--tls=require", "--tls-certificates=\(server)", "memory", "1M"])
        defer { nbdkit.stop() }

        let secure = try await connect("nbds+unix:///?socket=\(nbdkit.socket)&tls-certificates=\(client)")
        try await exercise(secure)
        await secure.close()

        let plain = "nbd+unix:///?socket=\(nbdkit.socket)"
        #expect(await refusal(plain)?.hasPrefix("\(plain): the server requires TLS (use an nbds:// or nbds+unix:// URI)") == true)
        let wrongCA = "nbds+unix:///?socket=\(nbdkit.socket)&tls-certificates=\(stranger)"
        let untrusted = await refusal(wrongCA)
        #expect(untrusted?.hasPrefix(wrongCA) == true && untrusted?.contains("certificate") == true, "\(String(describing: untrusted))")
        let missing = "nbds+unix:///?socket=\(nbdkit.socket)&tls-certificates=\(dir)/nowhere"
        #expect(await refusal(missing) == "\(missing): no readable CA certificate \(dir)/nowhere/ca-cert.pem")

        // Over TCP the certificate must name the host: localhost and 127.0.0.1 are in it.
        let port = 20_000 + Int(getpid()) % 20_000
        let tcp = try await Nbdkit(directory: dir, ["-i", "127.0.0.1", "-p", "\(port)", "--tls=require", "--tls-certificates=\(server)",
                                                    "memory", "1M"], name: "tcp", waitForSocket: false)
        defer { tcp.stop() }
        var byAddress: NBDClient?
        let deadline = ContinuousClock.now + .seconds(60)
        while byAddress == nil, ContinuousClock.now < deadline {
            byAddress = try? await connect("nbds://127.0.0.1:\(port)/?tls-certificates=\(client)")
            if byAddress == nil { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        let connected = try #require(byAddress)
        try await exercise(connected)
        await connected.close()
        let byName = try await connect("nbds://localhost:\(port)/?tls-certificates=\(client)")
        try await exercise(byName)
        await byName.close()
    }

    @Test func aPreSharedKey() async throws {
        let dir = try scratchDirectory("nbd-tls-test")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keys = dir + "/keys.psk"
        try writePreSharedKeyFile(keys, user: "alice")
        let nbdkit = try await Nbdkit(directory: dir, ["--tls=require", "--tls-psk=\(keys)", "memory", "1M"])
        defer { nbdkit.stop() }
        let client = try await connect("nbds+unix:///?socket=\(nbdkit.socket)&tls-psk-file=\(keys)&tls-username=alice")
        try await exercise(client)
        await client.close()
        let bob = "nbds+unix:///?socket=\(nbdkit.socket)&tls-psk-file=\(keys)&tls-username=bob"
        #expect(await refusal(bob)?.hasPrefix("\(bob): no key for user bob in the PSK file \(keys)") == true)

        let plain = try await Nbdkit(directory: dir, ["memory", "1M"], name: "plain")
        defer { plain.stop() }
        let noTLS = "nbds+unix:///?socket=\(plain.socket)&tls-psk-file=\(keys)&tls-username=alice"
        let withoutTLS = await refusal(noTLS)
        #expect(withoutTLS?.hasPrefix("\(noTLS): the server does not offer TLS") == true, "\(String(describing: withoutTLS))")
    }
}
