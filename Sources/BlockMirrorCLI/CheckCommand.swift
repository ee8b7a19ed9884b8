import ArgumentParser
import Control

/// `blockmirror check NAME [--repair]`: compares source and target; exit status 3 on mismatches.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Compare source and target of an in-sync mirror, like md's check (mismatch_cnt in 512-byte sectors).",
        discussion: "Exit status: 0 no mismatch (or all repaired with --repair), 3 mismatches found, 1 the check could not run.")

    @Argument(help: "The mirror's name.") var name: String
    @Flag(name: .long, help: "Rewrite mismatching sectors on the target from the source (md's repair).") var repair = false
    @Flag(name: .long, help: "Print the report as JSON.") var json = false
    @Option(name: .long, help: "Seconds to wait for the check to end (default: as long as it takes).") var timeout: Int?
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let report = try attempt { try runtime.handle(for: name).check(repair: repair, timeout: timeout) }
        if json {
            print(String(decoding: ControlCodec.encode(report).dropLast(), as: UTF8.self))
        } else {
            var line = "\(name): \(repair ? "repair" : "check") \(report.interrupted == nil ? "complete" : "interrupted: \(report.interrupted!)"): "
                + "mismatch_cnt=\(report.mismatchedSectors) (\(report.regionsChecked) of \(report.regionsTotal) regions compared"
                + (report.regionsSkipped > 0 ? ", \(report.regionsSkipped) still to copy" : "") + ")"
            if repair { line += ", \(report.repairedSectors) sectors repaired" }
            print(line)
            for mismatch in report.mismatches {
                print("  mismatch at offset \(mismatch.offset), \(mismatch.length) bytes")
            }
        }
        if let why = report.interrupted { throw exitWithError(CLIError("\(name): \(repair ? "repair" : "check") interrupted: \(why)")) }
        if report.mismatchedSectors > 0 && !repair { throw ExitCode(3) }
    }
}
