import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What systemd needs of BlockMirror: unit files it accepts, and `READY=1` on `$NOTIFY_SOCKET`
/// (Type=notify) once `build` and `migrate --foreground` serve.
@Suite struct SystemdTests {
    /// dist/systemd's units, with ExecStart on the binary under test, pass `systemd-analyze verify`.
    @Test func theUnitsPassSystemdAnalyzeVerify() throws {
        try Tools.require("systemd-analyze")
        let dir = try TempDir("units")
        defer { dir.remove() }
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../dist/systemd").standardized
        var units: [String] = []
        for name in ["blockmirror@.service", "blockmirror-plan@.service"] {
            let text = try String(contentsOf: sources.appendingPathComponent(name), encoding: .utf8)
            #expect(text.contains("Type=notify") && text.contains("Restart=on-failure") && text.contains("RuntimeDirectory=blockmirror"))
            let unit = dir.file(name)
            try text.replacingOccurrences(of: "/usr/local/bin/blockmirror", with: try BlockMirrorBinary.path())
                .write(toFile: unit, atomically: true, encoding: .utf8)
            units.append(unit)
        }
        let verified = try run(["systemd-analyze", "verify", "--man=no"] + units, in: dir)
        #expect(verified.succeeded && verified.output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(verified)")
    }

    /// `build` sends READY=1 (with a STATUS) to `$NOTIFY_SOCKET` once its export listens.
    @Test func buildTellsSystemdItIsReady() throws {
        let dir = try TempDir("notify-build")
        defer { dir.remove() }
        try makeRandomFile(dir.file("old.img"), size: 4 << 20)
        let notify = try NotifySocket(dir.file("notify.sock"))
        let server = try ServerProcess(["build", "m0", "--source", dir.file("old.img"), "--target", "missing", "--run-dir", dir.file("run")],
                                       in: dir, environment: ["NOTIFY_SOCKET": notify.path])
        defer { server.stop() }
        let message = notify.receive(timeout: 60)
        #expect(message?.hasPrefix("READY=1\nSTATUS=serving m0") == true, "got \(message ?? "nothing")\n\(server.log)")
    }

    /// `migrate --foreground` sends READY=1 once every volume serves.
    @Test func migrateInTheForegroundTellsSystemdItIsReady() throws {
        let dir = try TempDir("notify-plan")
        defer { dir.remove() }
        try makeRandomFile(dir.file("old.img"), size: 4 << 20)
        try makeSparseFile(dir.file("new.img"), size: 4 << 20)
        let plan = dir.file("p.toml")
        try """
            state_dir = "\(dir.file("state"))"
            listen = "unix:\(dir.path)/{name}.sock"
            [[volume]]
            name = "vm1"
            source = "\(dir.file("old.img"))"
            target = "\(dir.file("new.img"))"
            """.write(toFile: plan, atomically: true, encoding: .utf8)
        let notify = try NotifySocket(dir.file("notify.sock"))
        let daemon = try ChildProcess(["env", "NOTIFY_SOCKET=\(notify.path)", try BlockMirrorBinary.path(), "migrate", plan, "--foreground",
                                       "--run-dir", dir.file("run")], in: dir)
        defer { daemon.killAndWait() }
        let message = notify.receive(timeout: 60)
        #expect(message?.hasPrefix("READY=1\nSTATUS=plan p: serving") == true, "got \(message ?? "nothing")\n\(daemon.stderr)")
        #expect(daemon.stdout.contains("vm1 nbd+unix:///vm1?socket="), "\(daemon.stdout)")
        let stopped = try MirrorDaemon.cli(["stop", "p"], runDir: dir.file("run"), in: dir)
        #expect(stopped.succeeded, "\(stopped)\n\(daemon.stderr)")
        #expect(daemon.waitForExit(timeout: 60) && daemon.exitCode == 0, "\(daemon.stderr)")
    }
}

/// A unix datagram socket standing in for systemd's notification socket.
private final class NotifySocket {
    let path: String
    private let fd: Int32

    init(_ path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard fd >= 0, bound == 0 else { throw IntegrationFailure("cannot bind \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    /// The first message, or nil after `timeout` seconds.
    func receive(timeout: Int) -> String? {
        var limit = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }
}
