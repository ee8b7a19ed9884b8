import ArgumentParser
import Control
import Foundation

/// `--run-dir`: where mirror daemons keep their control sockets.
struct RuntimeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Directory of the daemons' control sockets (default: $BLOCKMIRROR_RUN_DIR, /run/blockmirror as root, else $XDG_RUNTIME_DIR/blockmirror).",
        valueName: "DIR"))
    var runDir: String?

    var directory: RuntimeDirectory { RuntimeDirectory.resolve(runDir) }

    /// Sends a request to mirror `name` and returns its answer; a failure (no such mirror, the
    /// daemon refused) exits with status 1 and one line naming the mirror.
    func send(_ request: ControlRequest, to name: String, timeout: Int? = 30) throws -> ControlResponse {
        let response: ControlResponse
        do {
            try RuntimeDirectory.validate(name: name)
            response = try ControlClient.send(request, to: name, in: directory, timeout: timeout)
        } catch {
            throw exitWithError(error)
        }
        guard response.ok else { throw exitWithError(CLIError("\(name): \(response.error ?? "request refused")")) }
        return response
    }
}

/// `path` made absolute against the current directory (the daemon may run elsewhere, and bitmap
/// files record device paths).
func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
