import ArgumentParser
import Control

/// `blockmirror fail NAME`: marks the target faulty, like `mdadm --fail`.
struct FailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "Mark a mirror's target faulty (like mdadm --fail): writes go to the source alone.")

    @Argument(help: "The mirror's name.") var name: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        print("\(name): " + (try attempt { try runtime.handle(for: name).fail() }))
    }
}
