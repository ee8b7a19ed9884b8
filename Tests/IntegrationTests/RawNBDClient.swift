import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A tiny blocking NBD client over a unix socket, written from the protocol document (it shares no
/// code with the server), so tests can send what well-behaved clients never send. Big-endian by hand.
final class RawNBDClient {
    enum Failure: Error, CustomStringConvertible {
        case closed(after: [UInt8])
        case timeout
        case system(String)
        case protocolViolation(String)

        var description: String {
            switch self {
            case .closed(let bytes): "the server closed the connection (after \(bytes.count) more bytes: \(hex(bytes)))"
            case .timeout: "no answer from the server within the socket timeout"
            case .system(let message): message
            case .protocolViolation(let message): "protocol violation: \(message)"
            }
        }
    }

    // Wire constants (NetworkBlockDevice/nbd doc/proto.md).
    static let nbdMagic: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
    static let ihaveopt: UInt64 = 0x4948_4156_454f_5054  // "IHAVEOPT"
    static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    static let requestMagic: UInt32 = 0x2560_9513
    static let simpleReplyMagic: UInt32 = 0x6744_6698
    static let structuredReplyMagic: UInt32 = 0x668e_33ef
    static let optExportName: UInt32 = 1, optInfo: UInt32 = 6, optGo: UInt32 = 7, optStructuredReply: UInt32 = 8
    static let optListMetaContext: UInt32 = 9, optSetMetaContext: UInt32 = 10
    static let repAck: UInt32 = 1, repInfo: UInt32 = 3, repMetaContext: UInt32 = 4
    static let repErrUnsup: UInt32 = 0x8000_0001, repErrPolicy: UInt32 = 0x8000_0002, repErrUnknown: UInt32 = 0x8000_0006
    static let cmdRead: UInt16 = 0, cmdWrite: UInt16 = 1, cmdDisc: UInt16 = 2, cmdFlush: UInt16 = 3
    static let cmdTrim: UInt16 = 4, cmdCache: UInt16 = 5, cmdWriteZeroes: UInt16 = 6, cmdBlockStatus: UInt16 = 7

    private var fd: Int32

    /// Connects to `socketPath`; reads and writes give up after `timeout` seconds.
    init(socketPath: String, timeout: Int = 30) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure.system("socket: \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(fd)
            throw Failure.system("socket path too long: \(socketPath)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw Failure.system("connect \(socketPath): \(message)")
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    // MARK: Bytes

    /// Sends everything (MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE).
    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + sent, min(bytes.count - sent, 1 << 20), Int32(MSG_NOSIGNAL))
            }
            if n < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: throw Failure.timeout
                case EPIPE, ECONNRESET: throw Failure.closed(after: [])
                default: throw Failure.system("send: \(String(cString: strerror(errno)))")
                }
            }
            sent += n
        }
    }

    /// Exactly `count` bytes.
    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = bytes.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress! + got, count - got, 0) }
            if n == 0 { throw Failure.closed(after: Array(bytes[..<got])) }
            if n < 0 {
                switch errno {
                case EINTR: continue
                case EAGAIN, EWOULDBLOCK: throw Failure.timeout
                case ECONNRESET: throw Failure.closed(after: Array(bytes[..<got]))
                default: throw Failure.system("recv: \(String(cString: strerror(errno)))")
                }
            }
            got += n
        }
        return bytes
    }

    /// Whether the server has closed its end within `timeout` seconds, found without reading
    /// (replies waiting in the socket stay unread: reading them would be progress).
    func peerClosed(within timeout: TimeInterval) -> Bool {
        let readHangUp: Int16 = 0x2000  // POLLRDHUP (Linux; glibc declares it only under _GNU_SOURCE)
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            var entry = pollfd(fd: fd, events: readHangUp, revents: 0)
            if poll(&entry, 1, 100) > 0 && entry.revents & (readHangUp | Int16(POLLHUP | POLLERR)) != 0 { return true }
        } while Date() < deadline
        return false
    }

    /// Reads until the server closes the connection (EOF or reset): true, or false on timeout.
    /// Bytes the server sent first are returned for messages.
    func waitForClose() -> (closed: Bool, bytes: [UInt8]) {
        var received: [UInt8] = []
        while received.count < 1 << 20 {
            do {
                received += try receive(1)
            } catch Failure.closed(let tail) {
                return (true, received + tail)
            } catch {
                return (false, received)
            }
        }
        return (false, received)
    }

    // MARK: Handshake and options

    /// Reads the greeting ("NBDMAGIC", "IHAVEOPT", u16 handshake flags) and returns the flags.
    func readGreeting() throws -> UInt16 {
        var r = WireReader(try receive(18))
        let magic = r.u64(), option = r.u64()
        guard magic == Self.nbdMagic, option == Self.ihaveopt else {
            throw Failure.protocolViolation("greeting magics \(hex64(magic)) \(hex64(option))")
        }
        return r.u16()
    }

    /// Greeting, then client flags FIXED_NEWSTYLE|NO_ZEROES; returns the server's handshake flags.
    @discardableResult
    func handshake() throws -> UInt16 {
        let flags = try readGreeting()
        try send(WireWriter().u32(3).bytes)
        return flags
    }

    /// An option request: magic, option, length (defaults to the data's), data.
    func sendOption(_ option: UInt32, data: [UInt8] = [], magic: UInt64 = RawNBDClient.ihaveopt, length: UInt32? = nil) throws {
        try send(WireWriter().u64(magic).u32(option).u32(length ?? UInt32(data.count)).append(data).bytes)
    }

    struct OptionReply {
        let option: UInt32
        let type: UInt32
        let data: [UInt8]
    }

    func readOptionReply() throws -> OptionReply {
        var r = WireReader(try receive(20))
        let magic = r.u64()
        guard magic == Self.optionReplyMagic else { throw Failure.protocolViolation("option reply magic \(hex64(magic))") }
        let option = r.u32(), type = r.u32(), length = r.u32()
        guard length <= 1 << 24 else { throw Failure.protocolViolation("option reply length \(length)") }
        return OptionReply(option: option, type: type, data: try receive(Int(length)))
    }

    /// Sends NBD_OPT_GO with `name` and no info requests.
    func sendGo(name: String) throws {
        try sendExportOption(Self.optGo, name: Array(name.utf8))
    }

    /// Sends NBD_OPT_GO or NBD_OPT_INFO naming `name` (any bytes), with no info requests.
    func sendExportOption(_ option: UInt32, name: [UInt8]) throws {
        try sendOption(option, data: WireWriter().u32(UInt32(name.count)).append(name).u16(0).bytes)
    }

    /// Sends NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT for export `name` with `queries`.
    func sendMetaContextOption(_ option: UInt32, name: [UInt8], queries: [String]) throws {
        var data = WireWriter().u32(UInt32(name.count)).append(name).u32(UInt32(queries.count))
        for query in queries { data = data.u32(UInt32(query.utf8.count)).append(Array(query.utf8)) }
        try sendOption(option, data: data.bytes)
    }

    /// Negotiates structured replies and selects `base:allocation` (so BLOCK_STATUS is allowed).
    func negotiateStructuredRepliesAndAllocation() throws {
        try sendOption(Self.optStructuredReply)
        let structured = try readOptionReply()
        guard structured.type == Self.repAck else { throw Failure.protocolViolation("STRUCTURED_REPLY answered \(hex32(structured.type))") }
        try sendMetaContextOption(Self.optSetMetaContext, name: [], queries: ["base:allocation"])
        while true {
            let reply = try readOptionReply()
            if reply.type == Self.repAck { return }
            guard reply.type == Self.repMetaContext else { throw Failure.protocolViolation("SET_META_CONTEXT answered \(hex32(reply.type))") }
        }
    }

    /// NBD_OPT_GO with `name` and no info requests; reads the INFO replies up to the ACK.
    /// Returns the export size and transmission flags (from NBD_INFO_EXPORT).
    @discardableResult
    func go(name: String = "") throws -> (size: UInt64, flags: UInt16) {
        try sendGo(name: name)
        var export: (size: UInt64, flags: UInt16)?
        while true {
            let reply = try readOptionReply()
            guard reply.option == Self.optGo else {
                throw Failure.protocolViolation("reply to GO names option \(reply.option)")
            }
            switch reply.type {
            case Self.repAck:
                guard let export else { throw Failure.protocolViolation("GO acknowledged without NBD_INFO_EXPORT") }
                return export
            case Self.repInfo:
                var r = WireReader(reply.data)
                if reply.data.count >= 12, r.u16() == 0 { export = (r.u64(), r.u16()) }
            default:
                throw Failure.protocolViolation("GO answered with reply type \(hex32(reply.type)): \(String(decoding: reply.data, as: UTF8.self))")
            }
        }
    }

    /// Handshake and GO on the default export.
    @discardableResult
    func negotiate() throws -> (size: UInt64, flags: UInt16) {
        try handshake()
        return try go()
    }

    // MARK: Transmission

    func sendRequest(_ type: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32, payload: [UInt8] = []) throws {
        try send(WireWriter().u32(Self.requestMagic).u16(flags).u16(type).u64(cookie).u64(offset).u32(length).append(payload).bytes)
    }

    /// The next reply's cookie and error, simple or structured (a structured reply's chunks are read
    /// up to the one flagged DONE; its error is the first error chunk's).
    func readAnyReply() throws -> (error: UInt32, cookie: UInt64) {
        var error: UInt32 = 0
        while true {
            var r = WireReader(try receive(4))
            let magic = r.u32()
            if magic == Self.simpleReplyMagic {
                var rest = WireReader(try receive(12))
                return (rest.u32(), rest.u64())
            }
            guard magic == Self.structuredReplyMagic else { throw Failure.protocolViolation("reply magic \(hex32(magic))") }
            var header = WireReader(try receive(16))
            let flags = header.u16(), type = header.u16(), cookie = header.u64(), length = header.u32()
            guard length <= 64 << 20 else { throw Failure.protocolViolation("chunk length \(length)") }
            let payload = try receive(Int(length))
            if type & 0x8000 != 0 && error == 0 && payload.count >= 4 { var p = WireReader(payload); error = p.u32() }
            if flags & 1 != 0 { return (error, cookie) }
        }
    }

    /// A simple reply header: magic, error, cookie.
    func readSimpleReply() throws -> (error: UInt32, cookie: UInt64) {
        var r = WireReader(try receive(16))
        let magic = r.u32()
        guard magic == Self.simpleReplyMagic else { throw Failure.protocolViolation("simple reply magic \(hex32(magic))") }
        return (r.u32(), r.u64())
    }

    /// READ: the error and (when it is 0) the data; checks the cookie.
    func read(offset: UInt64, length: UInt32, cookie: UInt64 = 0x5245_4144) throws -> (error: UInt32, data: [UInt8]) {
        try sendRequest(Self.cmdRead, cookie: cookie, offset: offset, length: length)
        let reply = try readSimpleReply()
        guard reply.cookie == cookie else { throw Failure.protocolViolation("READ reply cookie \(hex64(reply.cookie)) != \(hex64(cookie))") }
        return (reply.error, reply.error == 0 ? try receive(Int(length)) : [])
    }

    /// WRITE with `payload`: the error; checks the cookie.
    func write(offset: UInt64, payload: [UInt8], cookie: UInt64 = 0x5752_4954) throws -> UInt32 {
        try sendRequest(Self.cmdWrite, cookie: cookie, offset: offset, length: UInt32(payload.count), payload: payload)
        let reply = try readSimpleReply()
        guard reply.cookie == cookie else { throw Failure.protocolViolation("WRITE reply cookie \(hex64(reply.cookie)) != \(hex64(cookie))") }
        return reply.error
    }
}

/// Big-endian encoder.
struct WireWriter {
    var bytes: [UInt8] = []
    func u16(_ v: UInt16) -> WireWriter { append([UInt8(v >> 8), UInt8(v & 0xff)]) }
    func u32(_ v: UInt32) -> WireWriter { append((0..<4).reversed().map { UInt8((v >> (8 * UInt32($0))) & 0xff) }) }
    func u64(_ v: UInt64) -> WireWriter { append((0..<8).reversed().map { UInt8((v >> (8 * UInt64($0))) & 0xff) }) }
    func append(_ more: [UInt8]) -> WireWriter {
        var copy = self
        copy.bytes += more
        return copy
    }
}

/// Big-endian decoder over a byte array (callers check lengths first).
struct WireReader {
    let bytes: [UInt8]
    var index = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    mutating func take(_ n: Int) -> UInt64 {
        var v: UInt64 = 0
        for _ in 0..<n { v = v << 8 | UInt64(bytes[index]); index += 1 }
        return v
    }
    mutating func u16() -> UInt16 { UInt16(take(2)) }
    mutating func u32() -> UInt32 { UInt32(take(4)) }
    mutating func u64() -> UInt64 { take(8) }
}

func hex(_ bytes: [UInt8]) -> String { bytes.prefix(64).map { String(format: "%02x", $0) }.joined() }
func hex32(_ v: UInt32) -> String { String(format: "0x%08x", v) }
func hex64(_ v: UInt64) -> String { String(format: "0x%016llx", v) }
