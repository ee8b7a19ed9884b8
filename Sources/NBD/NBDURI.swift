import BlockIO

/// Where an NBD export is, as the NBD URI standard (NetworkBlockDevice/nbd doc/uri.md), libnbd,
/// qemu and nbdkit spell it: `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`, and
/// `nbds://…`, `nbds+unix://…` for a connection that must be TLS, with the query parameters
/// `tls-certificates=DIR` or `tls-psk-file=FILE` and `tls-username=NAME` (or `NAME@` before the
/// host).
///
/// Parsed strictly, so that a typo is an error naming the URI and what is wrong rather than a
/// connection to some other place: RFC 3986 syntax (characters outside it must be
/// percent-encoded), a known scheme, a host for TCP and none for a Unix socket, a port in
/// 1–65535, every query parameter known and given once, TLS parameters only with a TLS scheme, an
/// export name of valid UTF-8 without NUL and at most 4096 bytes (the protocol's limits).
public struct NBDURI: Sendable, Equatable, CustomStringConvertible {
    /// How the server is reached.
    public enum Transport: Sendable, Equatable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    /// What TLS authenticates with: X.509 files in a directory (ca-cert.pem, and client-cert.pem
    /// and client-key.pem if the server asks), or a pre-shared key file (psktool's `name:hexkey`).
    public enum TLSCredentials: Sendable, Equatable {
        case certificates(directory: String)
        case pskFile(String)
    }

    /// A connection that must be TLS (the `nbds` schemes).
    public struct TLS: Sendable, Equatable {
        /// nil: X.509 with the system's trust store.
        public var credentials: TLSCredentials?
        /// The PSK identity or X.509 user name (`tls-username`, or the URI's user info).
        public var username: String?
    }

    public let transport: Transport
    /// The export name: the path without its leading "/", percent-decoded ("" when there is none).
    public let exportName: String
    /// nil for a plaintext connection (`nbd`, `nbd+unix`).
    public let tls: TLS?
    /// The URI as given.
    public let text: String

    /// The IANA port of NBD, used when a TCP URI names none.
    public static let defaultPort = 10809

    /// The URI as given, with anything unprintable escaped (it ends up in logs and messages).
    public var description: String { UntrustedText.escape(text, limit: 4096) }

    /// Where the export is and its name, spelled one way whatever the URI's spelling (default port
    /// written out, TLS and its credentials left out): what identifies a remote leg.
    public var location: String {
        let name = exportName.addingURIPathEscapes()
        switch transport {
        case let .tcp(host, port): return "nbd://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(name)"
        case .unix(let path): return "nbd+unix:///\(name)?socket=\(path)"
        }
    }

    /// Whether `text` is meant as an NBD URI (its scheme is one of the four), rather than the path
    /// of a file or device: then it is parsed as one, and an error in it is an error, not a path.
    public static func isURI(_ text: String) -> Bool {
        guard let colon = text.firstIndex(of: ":") else { return false }
        return Scheme(rawValue: text[..<colon].lowercased()) != nil
    }

    /// Parses `text`; the error names the URI and what is wrong with it.
    public static func parse(_ text: String) throws(NBDURIError) -> NBDURI {
        var parser = Parser(text: text)
        return try parser.parse()
    }

    fileprivate init(transport: Transport, exportName: String, tls: TLS?, text: String) {
        self.transport = transport
        self.exportName = exportName
        self.tls = tls
        self.text = text
    }
}

/// What is wrong with an NBD URI.
public struct NBDURIError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The URI, escaped for display.
    public let uri: String
    public let problem: String
    public var description: String { "bad NBD URI \(uri): \(problem)" }
}

private enum Scheme: String {
    case nbd, nbds, nbdUnix = "nbd+unix", nbdsUnix = "nbds+unix"
    var isUnix: Bool { self == .nbdUnix || self == .nbdsUnix }
    var isTLS: Bool { self == .nbds || self == .nbdsUnix }
}

/// One pass over the URI's parts (RFC 3986 section 3): scheme, "//" authority, path, query; a
/// fragment is refused.
private struct Parser {
    let text: String

    func fail(_ problem: String) -> NBDURIError {
        NBDURIError(uri: UntrustedText.escape(text, limit: 4096), problem: problem)
    }

    mutating func parse() throws(NBDURIError) -> NBDURI {
        try checkCharacters()
        guard let colon = text.firstIndex(of: ":") else { throw fail("no scheme (nbd://, nbds://, nbd+unix://, nbds+unix://)") }
        guard let scheme = Scheme(rawValue: text[..<colon].lowercased()) else {
            throw fail("unknown scheme '\(text[..<colon])' (nbd, nbds, nbd+unix, nbds+unix)")
        }
        var rest = text[text.index(after: colon)...]
        guard rest.hasPrefix("//") else { throw fail("'\(scheme.rawValue):' must be followed by '//'") }
        rest = rest.dropFirst(2)
        if rest.contains("#") { throw fail("a fragment ('#…') has no meaning in an NBD URI") }
        let query: Substring?
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        } else {
            query = nil
        }
        let pathStart = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = try parseAuthority(rest[..<pathStart])
        let exportName = try parseExportName(rest[pathStart...])
        var parameters = try parseQuery(query)
        let transport: NBDURI.Transport
        if scheme.isUnix {
            guard authority.host.isEmpty, authority.port == nil else {
                throw fail("a Unix socket URI takes no host or port (nbd+unix:///EXPORT?socket=PATH)")
            }
            guard let socket = parameters.removeValue(forKey: "socket"), !socket.isEmpty else {
                throw fail("a Unix socket URI needs ?socket=PATH")
            }
            transport = .unix(path: socket)
        } else {
            guard !authority.host.isEmpty else { throw fail("no host (\(scheme.rawValue)://HOST[:PORT]/EXPORT)") }
            if parameters["socket"] != nil { throw fail("socket= is for nbd+unix:// and nbds+unix:// URIs") }
            transport = .tcp(host: authority.host, port: authority.port ?? NBDURI.defaultPort)
        }
        let tls = try parseTLS(scheme: scheme, userInfo: authority.userInfo, parameters: &parameters)
        if let unknown = parameters.keys.sorted().first {
            throw fail("unknown query parameter '\(unknown)' (known: socket, tls-certificates, tls-psk-file, tls-username)")
        }
        return NBDURI(transport: transport, exportName: exportName, tls: tls, text: text)
    }

    /// Every character is one RFC 3986 allows in a URI; anything else must come percent-encoded.
    func checkCharacters() throws(NBDURIError) {
        for (position, scalar) in text.unicodeScalars.enumerated() where !Self.allowed(scalar) {
            let shown = scalar.value < 0x20 || scalar.value == 0x7f || scalar.value > 0x7e
                ? "U+\(String(scalar.value, radix: 16, uppercase: true))" : "'\(scalar)'"
            throw fail("character \(shown) at position \(position + 1) must be percent-encoded")
        }
    }

    /// RFC 3986's unreserved, sub-delims, gen-delims and "%".
    static func allowed(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "a"..."z", "A"..."Z", "0"..."9": return true
        default: return "-._~!$&'()*+,;=:@/?#[]%".unicodeScalars.contains(scalar)
        }
    }

    struct Authority {
        var userInfo: String?
        var host: String
        var port: Int?
    }

    /// `[userinfo@]host[:port]`, the host a name, an IPv4 address or a bracketed IPv6 address.
    func parseAuthority(_ authority: Substring) throws(NBDURIError) -> Authority {
        var rest = authority
        var userInfo: String?
        if let at = rest.lastIndex(of: "@") {
            userInfo = try decode(rest[..<at], what: "user name")
            rest = rest[rest.index(after: at)...]
        }
        var host: String
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw fail("an IPv6 address opened with '[' is not closed") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            guard !host.isEmpty, host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                throw fail("'[\(host)]' is not an IPv6 address")
            }
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw fail("unexpected '\(after)' after the IPv6 address") }
                portText = after.dropFirst()
            }
        } else {
            if let colon = rest.firstIndex(of: ":") {
                portText = rest[rest.index(after: colon)...]
                rest = rest[..<colon]
            }
            host = try decode(rest, what: "host")
            guard !host.contains(where: { "[]:/".contains($0) }) else { throw fail("'\(host)' is not a host name") }
        }
        var port: Int?
        if let portText {
            guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy(\.isASCIIDigit),
                  let number = Int(portText), (1...65535).contains(number) else {
                throw fail("port '\(portText)' is not a number from 1 to 65535")
            }
            port = number
        }
        host = host.lowercased()
        return Authority(userInfo: userInfo, host: host, port: port)
    }

    /// The path without its leading "/", percent-decoded, as the protocol allows an export name.
    func parseExportName(_ path: Substring) throws(NBDURIError) -> String {
        guard !path.isEmpty else { return "" }
        let name = try decode(path.dropFirst(), what: "export name")
        guard name.utf8.count <= 4096 else { throw fail("the export name is longer than 4096 bytes") }
        return name
    }

    /// `key=value` pairs separated by "&", each key known (checked by the caller) and given once.
    func parseQuery(_ query: Substring?) throws(NBDURIError) -> [String: String] {
        guard let query, !query.isEmpty else { return [:] }
        var parameters: [String: String] = [:]
        for pair in query.split(separator: "&", omittingEmptySubsequences: false) {
            guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex else {
                throw fail("query parameter '\(pair)' is not KEY=VALUE")
            }
            let key = try decode(pair[..<equals], what: "query parameter name")
            let value = try decode(pair[pair.index(after: equals)...], what: "value of \(key)")
            guard parameters.updateValue(value, forKey: key) == nil else { throw fail("query parameter '\(key)' is given twice") }
        }
        return parameters
    }

    /// The TLS settings of an `nbds` scheme; TLS parameters with a plaintext scheme are an error.
    func parseTLS(scheme: Scheme, userInfo: String?, parameters: inout [String: String]) throws(NBDURIError) -> NBDURI.TLS? {
        let certificates = parameters.removeValue(forKey: "tls-certificates")
        let pskFile = parameters.removeValue(forKey: "tls-psk-file")
        var username = parameters.removeValue(forKey: "tls-username")
        guard scheme.isTLS else {
            if certificates != nil || pskFile != nil || username != nil || userInfo != nil {
                throw fail("TLS settings (tls-…, NAME@) need a TLS scheme: nbds:// or nbds+unix://")
            }
            return nil
        }
        if let userInfo {
            if let username, username != userInfo {
                throw fail("the user name '\(userInfo)@' and tls-username=\(username) differ")
            }
            username = userInfo
        }
        if username?.isEmpty == true { throw fail("the TLS user name is empty") }
        switch (certificates, pskFile) {
        case (let directory?, nil):
            guard !directory.isEmpty else { throw fail("tls-certificates= names no directory") }
            return NBDURI.TLS(credentials: .certificates(directory: directory), username: username)
        case (nil, let file?):
            guard !file.isEmpty else { throw fail("tls-psk-file= names no file") }
            return NBDURI.TLS(credentials: .pskFile(file), username: username)
        case (nil, nil):
            return NBDURI.TLS(credentials: nil, username: username)
        case (_?, _?):
            throw fail("tls-certificates and tls-psk-file are two ways to authenticate: give one")
        }
    }

    /// Percent-decodes `part` into UTF-8 text without NUL.
    func decode(_ part: Substring, what: String) throws(NBDURIError) -> String {
        var bytes: [UInt8] = []
        var utf8 = part.utf8[...]
        while let byte = utf8.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.popFirst().flatMap(Self.hexValue), let low = utf8.popFirst().flatMap(Self.hexValue) else {
                throw fail("a '%' in the \(what) is not followed by two hexadecimal digits")
            }
            bytes.append(high << 4 | low)
        }
        guard !bytes.contains(0) else { throw fail("the \(what) contains a NUL byte (%00)") }
        guard let decoded = String(validating: bytes, as: UTF8.self) else { throw fail("the \(what) is not valid UTF-8") }
        return decoded
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

private extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
