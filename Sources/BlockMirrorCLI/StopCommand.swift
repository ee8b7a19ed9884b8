import ArgumentParser
import Control

/// `blockmirror stop NAME`: drains and stops the daemon; says whether the target is a complete copy.
struct StopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop", abstract: "Stop a mirror: drain, flush both devices, save the bitmap (like mdadm --stop).")

    @Argument(help: "The mirror's name, or a plan's (every volume stops).") var name: String
    @Option(name: .long, help: "Seconds to wait for the daemon to finish stopping.") var timeout: Int = 300
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be at least 1 second") }
    }

    func run() throws {
        if let plan = runtime.plan(named: name) {
            print(try attempt { try plan.stop(timeout: timeout) })
            return
        }
        print(try attempt { try runtime.handle(for: name).stop(timeout: timeout) })
    }
}
