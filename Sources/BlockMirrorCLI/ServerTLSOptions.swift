import ArgumentParser
import NBD
import NBDTLS

/// TLS on the export (`serve` and `build`), as nbdkit and qemu-nbd spell it: `--tls off|on|require`
/// with X.509 files (`--tls-certificates DIR`: server-cert.pem, server-key.pem, and ca-cert.pem
/// for `--tls-verify-peer`) or pre-shared keys (`--tls-psk FILE`, psktool's format).
struct ServerTLSOptions: ParsableArguments {
    enum Mode: String, ExpressibleByArgument, CaseIterable {
        case off, on, require
    }

    @Option(name: .long, help: "TLS on the export: off, on (STARTTLS offered) or require (nothing else before it).")
    var tls: Mode = .off

    @Option(name: .long, help: ArgumentHelp("X.509 for TLS: a directory with server-cert.pem and server-key.pem (and ca-cert.pem for --tls-verify-peer).",
                                            valueName: "DIR"))
    var tlsCertificates: String?

    @Option(name: .long, help: ArgumentHelp("Pre-shared keys for TLS: a file of NAME:HEXKEY lines (psktool's format).", valueName: "FILE"))
    var tlsPsk: String?

    @Flag(name: .long, help: "With --tls-certificates: clients must show a certificate signed by DIR/ca-cert.pem.")
    var tlsVerifyPeer = false

    func validate() throws {
        if tls == .off {
            if let given = [("--tls-certificates", tlsCertificates != nil), ("--tls-psk", tlsPsk != nil), ("--tls-verify-peer", tlsVerifyPeer)]
                .first(where: { $0.1 }) {
                throw ValidationError("\(given.0) needs --tls on or --tls require")
            }
            return
        }
        guard (tlsCertificates == nil) != (tlsPsk == nil) else {
            throw ValidationError("--tls \(tls.rawValue) needs one of --tls-certificates DIR and --tls-psk FILE")
        }
        if tlsVerifyPeer && tlsCertificates == nil { throw ValidationError("--tls-verify-peer needs --tls-certificates") }
    }

    /// The server's TLS, its files read now (an error names the file).
    func policy() throws -> NBDServerTLSPolicy? {
        let mode: NBDServerTLSPolicy.Mode
        switch tls {
        case .off: return nil
        case .on: mode = .on
        case .require: mode = .require
        }
        let provider: NBDServerTLS
        if let tlsPsk {
            provider = try NBDServerTLS(pskFile: absolutePath(tlsPsk))
        } else {
            provider = try NBDServerTLS(certificates: absolutePath(tlsCertificates ?? ""), verifyPeer: tlsVerifyPeer)
        }
        return NBDServerTLSPolicy(mode: mode, provider: provider)
    }
}
