import ArgumentParser
import Control
import Foundation
import NBD

/// `--run-dir` and `--backend`: where mirror daemons keep their control sockets, and which kind of
/// mirror a name refers to.
struct RuntimeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Directory of the daemons' control sockets, logs and pid files: yours, not writable by group or others (default: $BLOCKMIRROR_RUN_DIR, /run/blockmirror as root, else $XDG_RUNTIME_DIR/blockmirror, else ${TMPDIR:-/tmp}/blockmirror-UID).",
        valueName: "DIR"))
    var runDir: String?

    @Option(name: .long, help: "Which kind of mirror NAME is: engine (a blockmirror daemon) or md (a kernel md array). Default: found by name.")
    var backend: Backend?

    var directory: RuntimeDirectory { RuntimeDirectory.resolve(runDir) }
}

extension Backend: ExpressibleByArgument {}

/// Runs a verb's work; any failure exits with status 1 and one line `blockmirror: error: …`.
func attempt<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let exit as ExitCode { throw exit } catch { throw exitWithError(error) }
}

/// `path` made absolute against the current directory (the daemon may run elsewhere, and bitmap
/// files record device paths).
func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

/// A leg as the user named it, for the daemon, the bitmap file and status: an NBD URI as given
/// (parsed here, so that a typo is one error line before anything starts), a path made absolute.
func legName(_ text: String) throws -> String {
    guard NBDURI.isURI(text) else { return absolutePath(text) }
    do { _ = try NBDURI.parse(text) } catch { throw exitWithError(error) }
    return text
}
