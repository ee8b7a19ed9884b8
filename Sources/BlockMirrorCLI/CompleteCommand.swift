import ArgumentParser
import Control

/// `blockmirror complete NAME`: the export switches onto the in-sync target, like qemu's
/// `block-job-complete`, so the migration ends without pointing clients anywhere else.
struct CompleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "complete",
        abstract: "Switch an in-sync mirror's export onto its target: the same URIs serve NEW alone from now on.",
        discussion: """
            Requests that arrive during the switch wait and are served after it; connections stay open. \
            The switch is recorded in the bitmap file before it takes effect (a bitmap file is required), \
            so a restart with the same command line serves NEW. OLD gets no more writes and keeps what it \
            held at the switch; the bitmap marks what it misses from then on, so adding it back copies only that.
            """)

    @Argument(help: "The mirror's name.") var name: String
    @Flag(help: "Keep the old source as the target, written on every write: the way back costs no copy until remove.")
    var keepOld = false
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        print("\(name): " + (try attempt { try runtime.handle(for: name).complete(keepOld: keepOld) }))
    }
}

/// `blockmirror reverse NAME`: swaps the roles of an in-sync mirror.
struct ReverseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reverse",
        abstract: "Swap the roles of an in-sync mirror: the target serves, the source becomes its target.",
        discussion: """
            Like complete --keep-old on a mirror either way round: the way back after a complete (once OLD \
            was added back and is in sync) or forward again. The bitmap then tracks what the new target \
            misses, so a later copy moves only what changed.
            """)

    @Argument(help: "The mirror's name.") var name: String
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        print("\(name): " + (try attempt { try runtime.handle(for: name).reverse() }))
    }
}
