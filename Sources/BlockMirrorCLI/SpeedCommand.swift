import ArgumentParser
import Control

/// `blockmirror speed NAME [--min K] [--max K|unlimited]`: changes the copy's limits live.
struct SpeedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "speed", abstract: "Change a mirror's copy speed limits while it runs (KiB/s, like md's sync_speed_min/max).")

    @Argument(help: "The mirror's name, or a plan's: then --max is the rate all its copies share, --min every volume's minimum.") var name: String
    @Option(name: .long, help: "KiB/s the copy keeps under client load.") var min: UInt64?
    @Option(name: .long, help: "KiB/s the copy never exceeds, or \"unlimited\".") var max: String?
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        guard min != nil || max != nil else { throw ValidationError("give --min, --max or both") }
        if let max, max != "unlimited", UInt64(max) == nil || UInt64(max) == 0 {
            throw ValidationError("--max must be a positive number of KiB/s or \"unlimited\" (got \(max))")
        }
    }

    func run() throws {
        let maximum = max.map { $0 == "unlimited" ? 0 : UInt64($0)! }
        if let plan = runtime.plan(named: name) {
            print(try attempt { try plan.speed(minimum: min, maximum: maximum) })
            return
        }
        print("\(name): " + (try attempt { try runtime.handle(for: name).speed(minimum: min, maximum: maximum) }))
    }
}
