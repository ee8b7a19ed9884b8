/// Where a server listens, parsed from the command line's `unix:PATH` or `tcp:HOST:PORT`.
public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)

    /// Why a `--listen` value could not be used.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let value: String
        public let reason: String
        public var description: String { "invalid listen address \"\(value)\": \(reason) (expected unix:PATH or tcp:HOST:PORT)" }
    }

    /// Parses `unix:PATH`, `tcp:HOST:PORT` or `tcp:[IPv6]:PORT`.
    public init(parsing value: String) throws(ParseError) {
        if value.hasPrefix("unix:") {
            let path = String(value.dropFirst(5))
            guard !path.isEmpty else { throw ParseError(value: value, reason: "empty socket path") }
            guard path.utf8.count < 108 else { throw ParseError(value: value, reason: "socket path longer than 107 bytes") }
            self = .unix(path: path)
        } else if value.hasPrefix("tcp:") {
            let rest = value.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":") else { throw ParseError(value: value, reason: "missing port") }
            var host = String(rest[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { throw ParseError(value: value, reason: "missing host") }
            guard let port = Int(rest[rest.index(after: colon)...]), (0...65535).contains(port) else {
                throw ParseError(value: value, reason: "port must be a number from 0 to 65535")
            }
            self = .tcp(host: host, port: port)
        } else {
            throw ParseError(value: value, reason: "unknown scheme")
        }
    }

    public var description: String {
        switch self {
        case .unix(let path): return "unix:\(path)"
        case let .tcp(host, port): return host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }

    /// The NBD URI (as libnbd, qemu and nbdkit spell it) that reaches `exportName` here; with
    /// `tls`, its `nbds` form (a client adds its credentials as query parameters).
    public func uri(exportName: String, tls: Bool = false) -> String {
        let name = exportName.addingURIPathEscapes()
        let secure = tls ? "s" : ""
        switch self {
        case .unix(let path): return "nbd\(secure)+unix:///\(name)?socket=\(path)"
        case let .tcp(host, port): return "nbd\(secure)://\(host.contains(":") ? "[\(host)]" : host):\(port)/\(name)"
        }
    }
}

extension String {
    /// Percent-encodes everything but unreserved characters and "/".
    func addingURIPathEscapes() -> String {
        var out = ""
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "/"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    fileprivate func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
