import ArgumentParser
import Control

/// `blockmirror add NAME NEW`: attaches a target to a running mirror; the recovery starts.
struct AddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Add a target to a running mirror and start the recovery (like mdadm --add).")

    @Argument(help: "The mirror's name.") var name: String
    @Argument(help: "The target (NEW): a device, an image or an NBD URI, at least as large as the source.") var target: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let path = try legName(target)
        print("\(name): " + (try attempt { try runtime.handle(for: name).add(path) }))
    }
}
