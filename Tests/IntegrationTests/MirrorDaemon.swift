import Foundation
import Mirror
import MirrorModel
import Testing

/// A mirror daemon started by a test (`blockmirror build NAME …` with its own runtime directory),
/// and the control verbs run against it through the real binary.
final class MirrorDaemon {
    let server: ServerProcess
    let name: String
    let runDir: String
    let dir: TempDir

    /// Starts `blockmirror build NAME --source SOURCE --target TARGET --run-dir DIR/run EXTRA…`.
    init(_ name: String = "m0", source: String, target: String, in dir: TempDir, _ extra: [String] = []) throws {
        self.name = name
        self.dir = dir
        runDir = dir.file("run")
        server = try ServerProcess(["build", name, "--source", source, "--target", target, "--run-dir", runDir] + extra, in: dir)
    }

    var uri: String { server.uri }
    var log: String { server.log }

    /// Runs `blockmirror VERB ARGS… --run-dir DIR/run`.
    @discardableResult
    func cli(_ arguments: String...) throws -> CommandResult {
        try Self.cli(arguments, runDir: runDir, in: dir)
    }

    static func cli(_ arguments: [String], runDir: String, in dir: TempDir) throws -> CommandResult {
        try run([try BlockMirrorBinary.path()] + arguments + ["--run-dir", runDir], in: dir)
    }

    /// `status NAME --json`, decoded as the engine's own type.
    func status() throws -> MirrorStatus {
        let result = try cli("status", name, "--json")
        guard result.succeeded else { throw IntegrationFailure("status failed\n\(result)\n\(log)") }
        return try JSONDecoder().decode(MirrorStatus.self, from: Data(result.stdout.utf8))
    }

    /// Waits (up to `timeout` s) until the status satisfies `condition`; records a failure if not.
    @discardableResult
    func waitForStatus(timeout: TimeInterval = 240, sourceLocation: SourceLocation = #_sourceLocation,
                       _ condition: (MirrorStatus) -> Bool) throws -> MirrorStatus? {
        var last: MirrorStatus?
        let met = try waitUntil(timeout: timeout) {
            guard server.isRunning else { return true }
            last = try status()
            return condition(last!)
        }
        let ok = met && server.isRunning && last.map(condition) == true
        #expect(ok, "status never reached the expected condition; last: \(String(describing: last))\n\(log)", sourceLocation: sourceLocation)
        return ok ? last : nil
    }

    /// `stop NAME`: returns its output once the daemon exited with status 0.
    func stop(sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        let result = try cli("stop", name)
        #expect(result.succeeded, "\(result)\n\(log)", sourceLocation: sourceLocation)
        server.waitForCleanExit(sourceLocation: sourceLocation)
        return result
    }
}
