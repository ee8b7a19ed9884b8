import ArgumentParser
import Control
import MirrorModel

/// `blockmirror detail NAME [--json]`: everything about one mirror, like `mdadm --detail`.
struct DetailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detail", abstract: "Show a mirror in detail: sizes, state, devices and their roles (like mdadm --detail).")

    @Argument(help: "The mirror's name.") var name: String
    @Flag(name: .long, help: "Print JSON: {\"name\", \"status\", \"daemon\"}.") var json = false
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        let (handle, status, daemon) = try attempt {
            let handle = try runtime.handle(for: name)
            let (status, daemon) = try handle.status()
            return (handle, status, daemon)
        }
        if json {
            print(String(decoding: ControlCodec.encode(Detail(name: name, backend: handle.backend, status: status, daemon: daemon)).dropLast(),
                         as: UTF8.self))
        } else {
            print(DetailText.render(name: name, status, daemon: daemon, backend: handle.backend))
        }
    }

    struct Detail: Encodable {
        let name: String
        let backend: Backend
        let status: MirrorStatus
        let daemon: DaemonInfo?
    }
}
