import ArgumentParser
import Control
import Foundation
import MirrorModel

/// `blockmirror list [--json]`: the mirrors running, one line each.
struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the running mirrors, one line each.")

    @Flag(name: .long, help: "Print a JSON array of {\"name\", \"backend\", \"state\", \"source\", \"target\", \"exports\", \"pid\"}.") var json = false
    @OptionGroup var runtime: RuntimeOptions

    struct Entry: Encodable {
        let name: String, backend: String, state: MirrorState, source: String, target: String?, exports: [String], pid: Int32?
    }

    func run() throws {
        var entries: [Entry] = []
        for mirror in try attempt({ try runtime.allMirrors() }) {
            do {
                let (status, daemon) = try mirror.status()
                entries.append(Entry(name: mirror.name, backend: mirror.backend.rawValue, state: status.state, source: status.source,
                                     target: status.target, exports: daemon?.exports ?? [], pid: daemon?.pid))
            } catch {
                // A dead daemon's socket was just removed; say so and go on with the others.
                FileHandle.standardError.write(Data("blockmirror: error: \(error)\n".utf8))
            }
        }
        if json {
            print(String(decoding: ControlCodec.encode(entries).dropLast(), as: UTF8.self))
            return
        }
        for entry in entries {
            print("\(entry.name)\t\(entry.state.rawValue)\t\(entry.source) -> \(entry.target ?? "missing")\t\(entry.exports.first ?? entry.backend)")
        }
    }
}
