import ArgumentParser
import NBD
import NIOCore

/// How legs that are NBD URIs connect (`build`, and the targets `add` gives it later; `verify`
/// uses the defaults).
struct RemoteLegOptions: ParsableArguments {
    private static let defaults = NBDLeg.Options()

    @Option(name: .long, help: ArgumentHelp(
        "Connections to an NBD leg's server when it offers multi-conn (NBD_FLAG_CAN_MULTI_CONN; one otherwise).",
        valueName: "N"))
    var nbdConnections: Int = defaults.connections

    @Option(name: .long, help: ArgumentHelp(
        "An NBD leg's server must connect within this time, and answer something within it while requests wait (any one request within 10 times it); else the leg fails (a target: the mirror degrades and keeps serving from the source).",
        valueName: "SECONDS"))
    var nbdTimeout: Int = Int(defaults.requestTimeout.nanoseconds / 1_000_000_000)

    func validate() throws {
        guard (1...64).contains(nbdConnections) else { throw ValidationError("--nbd-connections must be 1 to 64 (got \(nbdConnections))") }
        guard (1...3600).contains(nbdTimeout) else { throw ValidationError("--nbd-timeout must be 1 to 3600 seconds (got \(nbdTimeout))") }
    }

    var options: NBDLeg.Options {
        NBDLeg.Options(connections: nbdConnections, connectTimeout: .seconds(Int64(nbdTimeout)), requestTimeout: .seconds(Int64(nbdTimeout)))
    }
}
