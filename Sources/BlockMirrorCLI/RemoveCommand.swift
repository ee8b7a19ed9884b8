import ArgumentParser
import Control

/// `blockmirror remove NAME`: detaches a failed target, like `mdadm --remove`.
struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Remove a failed target from a mirror (like mdadm --remove); add a new one with add.")

    @Argument(help: "The mirror's name.") var name: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        print("\(name): " + (try attempt { try runtime.handle(for: name).remove() }))
    }
}
