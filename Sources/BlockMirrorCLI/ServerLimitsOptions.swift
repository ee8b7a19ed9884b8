import ArgumentParser
import NBD
import NIOCore

/// The NBD server's limits on what clients may hold (`serve` and `build`): time, connections,
/// memory. The defaults are `NBDServerLimits`'s; docs/ARCHITECTURE.md explains each.
struct ServerLimitsOptions: ParsableArguments {
    private static let defaults = NBDServerLimits()

    @Option(name: .long, help: ArgumentHelp(
        "A client must finish the NBD handshake within this time or is disconnected (0: no limit). Real clients take milliseconds; qemu uses 10 s too.",
        valueName: "SECONDS"))
    var handshakeTimeout: Int = seconds(defaults.handshakeTimeout)

    @Option(name: .long, help: ArgumentHelp(
        "Close a connection that has nothing in flight and sends nothing for this time (0, the default: never). Off because a VM's disk may sit idle for hours and dropping its connection fails the guest's next I/O; silent clients are already bounded by --max-connections.",
        valueName: "SECONDS"))
    var idleTimeout: Int = seconds(defaults.idleTimeout)

    @Option(name: .long, help: ArgumentHelp(
        "Disconnect a client that holds server memory (a request it stopped sending, replies it does not read) and makes no progress for this time, detected within twice it (0: never). 30 s is the Linux NBD client's own request timeout.",
        valueName: "SECONDS"))
    var stallTimeout: Int = seconds(defaults.stallTimeout)

    @Option(name: .long, help: ArgumentHelp(
        "Connections served at once; beyond it a client is told the limit (NBD_REP_ERR_POLICY) and disconnected. Multi-connection clients use 4 to 16.",
        valueName: "N"))
    var maxConnections: Int = defaults.maximumConnections

    @Option(name: .long, help: ArgumentHelp(
        "Payload bytes all clients together may hold (requests in flight, replies not yet sent); a client over it waits. At least 32M (one maximal request).",
        valueName: "SIZE"))
    var maxPayloadMemory = ByteSize(bytes: UInt64(defaults.maximumPayloadBytes))

    func validate() throws {
        for (option, value) in [("--handshake-timeout", handshakeTimeout), ("--idle-timeout", idleTimeout), ("--stall-timeout", stallTimeout)]
        where value < 0 {
            throw ValidationError("\(option) must be 0 (off) or a number of seconds (got \(value))")
        }
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1 (got \(maxConnections))") }
        guard maxPayloadMemory.bytes >= 32 << 20, maxPayloadMemory.bytes <= UInt64(Int.max) else {
            throw ValidationError("--max-payload-memory must be at least 32M, the largest request (got \(maxPayloadMemory.bytes) bytes)")
        }
    }

    /// The limits for `NBDServer`.
    var limits: NBDServerLimits {
        var limits = Self.defaults
        limits.handshakeTimeout = Self.amount(handshakeTimeout)
        limits.idleTimeout = Self.amount(idleTimeout)
        limits.stallTimeout = Self.amount(stallTimeout)
        limits.maximumConnections = maxConnections
        limits.maximumPayloadBytes = Int(maxPayloadMemory.bytes)
        return limits
    }

    private static func seconds(_ amount: TimeAmount?) -> Int { Int((amount?.nanoseconds ?? 0) / 1_000_000_000) }
    private static func amount(_ seconds: Int) -> TimeAmount? { seconds > 0 ? .seconds(Int64(seconds)) : nil }
}
