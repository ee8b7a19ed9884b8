/// Whether a server offers TLS (STARTTLS), and whether it insists on it, as nbdkit's and qemu-nbd's
/// `--tls=on|require` do.
public struct NBDServerTLSPolicy: Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        /// STARTTLS is offered; a client may negotiate in the clear.
        case on
        /// Nothing but STARTTLS (and ABORT) before TLS: every other option gets
        /// `NBD_REP_ERR_TLS_REQD`, EXPORT_NAME closes the connection.
        case require
    }

    public var mode: Mode
    /// The TLS handler for each connection that sends STARTTLS (`NBDServerTLS` of `NBDTLS`).
    public var provider: any NBDTLSProvider

    public init(mode: Mode, provider: any NBDTLSProvider) {
        self.mode = mode
        self.provider = provider
    }
}
