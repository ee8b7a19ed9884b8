import ArgumentParser
import Control
import Foundation
import Mirror

/// `blockmirror examine BITMAP [--json]`: what a write-intent bitmap file holds, read without
/// using it (like `mdadm --examine-bitmap`): its state, geometry, the legs it records and how many
/// regions it marks.
struct ExamineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "examine",
        abstract: "Show what a bitmap file holds: state, generation, geometry, the legs it records, dirty regions (like mdadm -X).",
        discussion: "Read-only, and safe while a mirror uses the file (what it shows may be a save behind).")

    @Argument(help: "The bitmap file.") var bitmap: String
    @Flag(name: .long, help: "Print JSON: {path, generation, state, deviceSize, regionSize, legs, regionsTotal, regionsDirty, notes}.")
    var json = false

    struct Report: Encodable {
        let path: String
        let generation: UInt64
        let state: String
        let stopped: String?
        let deviceSize: UInt64
        let regionSize: UInt64
        let legs: BitmapFileFormat.Record
        let regionsTotal: Int
        let regionsDirty: Int
        let notes: [String]
    }

    func run() throws {
        let examined = try attempt { try WriteIntentLog.examine(path: bitmap) }
        let header = examined.header
        let report = Report(path: bitmap, generation: header.generation, state: header.state == .stopped ? "stopped" : "in-use",
                            stopped: header.record.stopped, deviceSize: header.deviceSize, regionSize: header.regionSize,
                            legs: header.record, regionsTotal: examined.bitmap.regionCount, regionsDirty: examined.bitmap.dirtyCount,
                            notes: examined.notes)
        if json {
            print(String(decoding: ControlCodec.encode(report).dropLast(), as: UTF8.self))
            return
        }
        func leg(_ record: BitmapFileFormat.LegRecord?) -> String {
            guard let record else { return "none recorded" }
            let how = record.detached == true ? "removed from the mirror"
                : record.trace != nil ? "write trace recorded at the stop" : "in use when last saved"
            return "\(record.identity.summary), \(how)"
        }
        let percent = report.regionsTotal > 0 ? Double(report.regionsDirty) * 100 / Double(report.regionsTotal) : 0
        print("""
                Filename : \(bitmap)
              Generation : \(header.generation)
                   State : \(header.state == .stopped ? "stopped cleanly at \(header.record.stopped ?? "?")" : "in use, or ended without a clean stop")
             Device size : \(header.deviceSize) bytes
             Region size : \(header.regionSize) bytes
                  Source : \(leg(header.record.source))
                  Target : \(leg(header.record.target))
            """)
        if let switched = header.record.switched {
            print("          Roles switched : \(switched) (complete or reverse): the source above serves")
        }
        if let retired = header.record.retired {
            print("                 Retired : \(retired.identity.summary), written no more since (the bits mark what it lacks)")
        }
        print("                  Bitmap : \(report.regionsDirty) of \(report.regionsTotal) regions dirty (\(String(format: "%.1f", percent))%)")
        for note in examined.notes { print("                 warning: \(note)") }
    }
}
