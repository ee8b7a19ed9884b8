import BlockIO
import Foundation
import NBD
import NIOCore
import NIOSSL
#if canImport(Glibc)
import Glibc
#endif

/// The TLS an `nbds://` or `nbds+unix://` URI asks for, as libnbd and qemu read its parameters:
///
/// - `tls-certificates=DIR`: X.509, the server's certificate checked against `DIR/ca-cert.pem`;
///   `DIR/client-cert.pem` and `DIR/client-key.pem` are sent when present (a server that checks
///   its clients asks for them). Without the parameter the system's trust store is used.
/// - `tls-psk-file=FILE`: a pre-shared key, the line `NAME:HEXKEY` (psktool's format) for the
///   user `tls-username` (or the login name), TLS 1.2 PSK cipher suites.
///
/// Over TCP the server's certificate must name the host (or its IP address); over a Unix socket
/// there is no host to name, so only its chain is checked (libnbd does the same).
public struct NBDClientTLS: NBDTLSProvider {
    let configuration: TLSConfiguration
    /// The name sent for SNI and checked against the certificate (nil: none, or an IP address).
    let serverHostname: String?

    /// The TLS for `uri`; the error names the URI and the file that is wrong.
    public init(_ uri: NBDURI) throws(NBDClientError) {
        guard let tls = uri.tls else { throw NBDClientError(uri: uri, reason: "not a TLS URI") }
        var host: String?
        if case .tcp(let name, _) = uri.transport { host = name }
        switch tls.credentials {
        case .pskFile(let path):
            let username = tls.username ?? Self.loginName()
            let key = try Self.preSharedKey(path, username: username, uri: uri)
            var configuration = TLSConfiguration.makePreSharedKeyConfiguration()
            configuration.maximumTLSVersion = .tlsv12
            configuration.cipherSuites = Self.pskCipherSuites
            configuration.certificateVerification = .none
            configuration.pskClientProvider = { _ in PSKClientIdentityResponse(key: key, identity: username) }
            self.configuration = configuration
            serverHostname = nil
            return
        case .certificates(let directory):
            var configuration = TLSConfiguration.makeClientConfiguration()
            let ca = directory + "/ca-cert.pem"
            guard FileManager.default.isReadableFile(atPath: ca) else {
                throw NBDClientError(uri: uri, reason: "no readable CA certificate \(UntrustedText.escape(ca))")
            }
            configuration.trustRoots = .file(ca)
            let certificate = directory + "/client-cert.pem", key = directory + "/client-key.pem"
            if FileManager.default.fileExists(atPath: certificate) || FileManager.default.fileExists(atPath: key) {
                do {
                    configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                    configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
                } catch {
                    throw NBDClientError(uri: uri, reason: "cannot read the client certificate \(UntrustedText.escape(certificate)) "
                                         + "and key \(UntrustedText.escape(key)): \(error)")
                }
            }
            self.configuration = Self.verifying(configuration, host: host)
        case nil:
            self.configuration = Self.verifying(TLSConfiguration.makeClientConfiguration(), host: host)
        }
        // SNI takes names only; an IP address is checked against the certificate's IP entries.
        serverHostname = host.flatMap { Self.isIPAddress($0) ? nil : $0 }
    }

    public func makeHandler() throws -> any ChannelHandler {
        try NIOSSLClientHandler(context: NIOSSLContext(configuration: configuration), serverHostname: serverHostname)
    }

    private static func verifying(_ configuration: TLSConfiguration, host: String?) -> TLSConfiguration {
        var configuration = configuration
        configuration.certificateVerification = host == nil ? .noHostnameVerification : .fullVerification
        return configuration
    }

    private static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// The key of `username` in a psktool file.
    private static func preSharedKey(_ path: String, username: String, uri: NBDURI) throws(NBDClientError) -> NIOSSLSecureBytes {
        let keys: [String: [UInt8]]
        do { keys = try PSKFile(path: path).keys } catch { throw NBDClientError(uri: uri, reason: error.description) }
        guard let key = keys[username] else {
            throw NBDClientError(uri: uri, reason: "no key for user \(UntrustedText.escape(username)) in the PSK file "
                                 + "\(UntrustedText.escape(path)) (set tls-username= to the name its line starts with)")
        }
        return NIOSSLSecureBytes(key)
    }

    /// The PSK suites both ends offer: BoringSSL has PSK in TLS 1.2 only, and these are its ones
    /// with forward secrecy (GnuTLS, as nbdkit, qemu and libnbd use it, takes them).
    static let pskCipherSuites = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA:ECDHE-PSK-AES256-CBC-SHA"

    private static func loginName() -> String {
        getpwuid(geteuid()).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? "root"
    }
}
