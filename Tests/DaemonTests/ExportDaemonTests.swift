import BlockExport
import BlockIO
import Control
import Daemon
import Dispatch
import Foundation
import Logging
import NBD
import Synchronization
import Testing

/// The daemon run in the test's own process: it announces its URI, serves a real client
/// (nbdinfo), answers its control socket, and on a `stop` request closes the export and hands the
/// final report both to the requester and to its caller.
@Suite struct ExportDaemonTests {
    @Test func servesAnnouncesAndStopsOnRequest() async throws {
        let dir = "/var/tmp/daemon-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let image = dir + "/disk.img"
        _ = FileManager.default.createFile(atPath: image, contents: nil)
        truncate(image, 3 << 20)
        let runtime = RuntimeDirectory(path: dir + "/run")
        let logger = Logger(label: "daemon-test") { _ in SwiftLogNoOpLogHandler() }
        let announced = OneShot<String>()
        let control = ExportDaemon.Control<FileExport>(directory: runtime) { _, _, request in
            ControlResponse(ok: true, name: "d0", message: "asked \(request.verb.rawValue)")
        }

        let daemon = Task {
            try await ExportDaemon.run(name: "d0", listen: [.unix(path: dir + "/d0.sock")], limits: NBDServerLimits(), logger: logger,
                                       control: control, takeSignals: false, announce: { announced.fulfil($0) },
                                       open: { aio in FileExport(device: try BlockDevice.open(path: image, readOnly: false, aio: aio, logger: logger),
                                                                 pool: BufferPool()) },
                                       report: { export in "d0: \(export.size) bytes served" })
        }
        let uri = await announced.wait()
        #expect(uri == "nbd+unix:///d0?socket=\(dir)/d0.sock")

        let size = try run("/usr/bin/nbdinfo", ["--size", uri])
        #expect(size.trimmingCharacters(in: .whitespacesAndNewlines) == "\(3 << 20)")
        let status = try await blocking { try ControlClient.send(ControlRequest(verb: .status), to: "d0", in: runtime, timeout: 30) }
        #expect(status.message == "asked status" && status.daemon?.exports == [uri], "the daemon adds what it is to status")

        // `ControlClient.stop` also waits for the daemon's process to exit: this one is the test's.
        let stopped = try await blocking { try ControlClient.send(ControlRequest(verb: .stop), to: "d0", in: runtime, timeout: 60) }
        #expect(stopped.ok && stopped.message == "d0: 3145728 bytes served")
        let report = try await daemon.value
        #expect(report == "d0: 3145728 bytes served")
        #expect(!FileManager.default.fileExists(atPath: dir + "/d0.sock"), "the NBD socket is removed")
        #expect(!FileManager.default.fileExists(atPath: runtime.controlSocket(for: "d0")), "the control socket is removed")
    }

    /// A failure to start is thrown, naming what failed, after everything was torn down.
    @Test func aMissingDeviceIsThrown() async throws {
        let logger = Logger(label: "daemon-test") { _ in SwiftLogNoOpLogHandler() }
        let missing = "/var/tmp/daemon-test-\(UUID().uuidString)/none.img"
        await #expect {
            _ = try await ExportDaemon.run(name: "d1", listen: [.unix(path: "/var/tmp/d1-\(UUID().uuidString).sock")],
                                           limits: NBDServerLimits(), logger: logger, takeSignals: false, announce: { _ in },
                                           open: { aio in FileExport(device: try BlockDevice.open(path: missing, readOnly: true, aio: aio, logger: logger),
                                                                     pool: BufferPool()) })
        } throws: { error in "\(error)".contains(missing) }
    }

    /// Runs a blocking call off the cooperative pool.
    private func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Runs `tool` and returns its standard output; fails unless it exits 0.
    private func run(_ tool: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "\(tool) \(arguments) exited \(process.terminationStatus)")
        return String(decoding: data, as: UTF8.self)
    }
}
