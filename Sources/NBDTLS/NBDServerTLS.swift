import BlockIO
import Foundation
import NBD
import NIOCore
import NIOSSL

/// The server side of STARTTLS, with the files nbdkit and qemu-nbd take:
///
/// - X.509 (`--tls-certificates DIR`): `DIR/server-cert.pem` and `DIR/server-key.pem`; with
///   `verifyPeer` (`--tls-verify-peer`) a client must show a certificate signed by `DIR/ca-cert.pem`.
/// - A pre-shared key (`--tls-psk FILE`): psktool's `NAME:HEXKEY` lines; a client names its line.
///   TLS 1.2 with the ECDHE-PSK and PSK suites (BoringSSL has no TLS 1.3 external PSK).
///
/// The files are read once, when the server starts, so a missing or broken one is an error then,
/// naming it, not a refused client later.
public struct NBDServerTLS: NBDTLSProvider {
    private let context: NIOSSLContext

    /// Why the TLS settings cannot be used; names the file.
    public struct SetupError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// X.509 from `directory`.
    public init(certificates directory: String, verifyPeer: Bool) throws(SetupError) {
        let certificate = directory + "/server-cert.pem", key = directory + "/server-key.pem", ca = directory + "/ca-cert.pem"
        var configuration: TLSConfiguration
        do {
            configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        } catch {
            throw SetupError(description: "cannot read the server certificate \(certificate) and key \(key): \(error)")
        }
        if verifyPeer {
            guard FileManager.default.isReadableFile(atPath: ca) else {
                throw SetupError(description: "--tls-verify-peer needs the CA certificate \(ca), which cannot be read")
            }
            configuration.trustRoots = .file(ca)
            configuration.certificateVerification = .noHostnameVerification
        }
        context = try Self.context(configuration)
    }

    /// Pre-shared keys from `file`.
    public init(pskFile file: String) throws(SetupError) {
        let keys: [String: [UInt8]]
        do { keys = try PSKFile(path: file).keys } catch { throw SetupError(description: error.description) }
        var configuration = TLSConfiguration.makePreSharedKeyConfiguration()
        configuration.maximumTLSVersion = .tlsv12
        configuration.cipherSuites = NBDClientTLS.pskCipherSuites
        configuration.pskServerProvider = { [keys] context in
            guard let key = keys[context.clientIdentity] else { throw SetupError(description: "no key for this client") }
            return PSKServerIdentityResponse(key: NIOSSLSecureBytes(key))
        }
        context = try Self.context(configuration)
    }

    public func makeHandler() throws -> any ChannelHandler {
        NIOSSLServerHandler(context: context)
    }

    private static func context(_ configuration: TLSConfiguration) throws(SetupError) -> NIOSSLContext {
        do { return try NIOSSLContext(configuration: configuration) } catch {
            throw SetupError(description: "cannot set up TLS: \(error)")
        }
    }
}
