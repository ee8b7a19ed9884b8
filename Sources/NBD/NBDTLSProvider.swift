import NIOCore

/// Makes the TLS handler a connection puts in front of its decoder after STARTTLS. The NBD module
/// speaks the protocol only; the TLS library (swift-nio-ssl) is in the `NBDTLS` module, which
/// provides the conformers (`NBDClientTLS`, `NBDServerTLS`), so what does not use TLS (the fuzz
/// targets) does not build it.
public protocol NBDTLSProvider: Sendable {
    /// A fresh handler for one connection.
    func makeHandler() throws -> any ChannelHandler
}
