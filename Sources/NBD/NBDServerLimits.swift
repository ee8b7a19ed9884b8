import NIOCore

/// What one NBD server lets its clients hold: connections, time and memory. Every limit is there
/// so that no client, however it behaves, can take the daemon's descriptors, memory or log from the
/// others (DESIGN §3, invariant 9). The defaults are chosen for a daemon that serves a few VMs or
/// copy tools on a host it shares; docs/ARCHITECTURE.md says why each value.
public struct NBDServerLimits: Sendable, Equatable {
    /// A client must finish negotiation (reach NBD_OPT_GO or EXPORT_NAME) within this time, or it
    /// is disconnected. nil: no limit. Default 10 s, as qemu's NBD server (CVE-2024-7409): real
    /// clients negotiate in milliseconds, and silent connections otherwise pin a descriptor forever.
    public var handshakeTimeout: TimeAmount? = .seconds(10)
    /// A connection with nothing in flight that sends nothing for this long is closed. nil (the
    /// default): never, because a VM's disk can sit idle for hours and dropping its connection
    /// fails the guest's next I/O; idle connections are already bounded by `maximumConnections`.
    public var idleTimeout: TimeAmount? = nil
    /// A client that holds server memory (a request whose payload it stopped sending, or replies it
    /// does not read) and makes no progress for this long is disconnected, so that it cannot keep
    /// the shared memory budget from everyone else. nil: never. Default 30 s, the Linux NBD
    /// client's own request timeout: a client stuck that long has already failed its I/O.
    public var stallTimeout: TimeAmount? = .seconds(30)
    /// Connections served at once; further ones get an NBD_REP_ERR_POLICY reply that says so, then
    /// are closed. Default 100, as qemu's NBD server: multi-connection clients use 4 to 16.
    public var maximumConnections = 100
    /// Payload bytes (requests' data and replies not yet written to their sockets) all connections
    /// together may hold; a connection over the budget stops reading until memory frees. One
    /// request always proceeds, so the budget never deadlocks, and a connection holding nothing
    /// may always start one of up to 1 MiB (`NBDPayloadBudget`). Default 256 MiB: 8 maximal
    /// requests, far more than any disk needs in flight to run at full speed.
    public var maximumPayloadBytes = 256 << 20

    /// Per connection: requests from decoding until their reply has been written to the socket.
    public var maximumRequestsPerConnection = 512
    /// Per connection: payload bytes of those requests (128 MiB: four maximal requests).
    public var maximumPayloadBytesPerConnection = 128 << 20

    /// The defaults; change what you need on the value.
    public init() {}
}
