import FuzzSupport
import NBD
import NIOCore

/// Reads what the server sent against what the client sent and stops the run (`fuzzCheck`) where
/// the server broke the protocol (NetworkBlockDevice/nbd doc/proto.md): a reply to an option the
/// client did not send or with another option's number, a message cut short, a length field that
/// disagrees with the data, strings that are not UTF-8 or longer than 4096 bytes, transmission
/// replies with a cookie no request carried, chunks of the wrong shape.
///
/// The server may end the stream at any message boundary (it closes a connection for reasons of
/// its own: a protocol error, a limit); what it sent until then must be right.
public struct NBDStreamCheck {
    private var client: ByteBuffer
    private var server: ByteBuffer
    private var structuredReplies = false
    /// Metadata context ids the server gave in answer to SET_META_CONTEXT.
    private var contextIDs: Set<UInt32> = []

    /// Checks a whole connection: greeting, negotiation, then transmission.
    public static func check(client: [UInt8], server: [UInt8]) {
        var check = NBDStreamCheck(client: ByteBuffer(bytes: client), server: ByteBuffer(bytes: server))
        check.run()
    }

    private init(client: ByteBuffer, server: ByteBuffer) {
        self.client = client
        self.server = server
    }

    private func require(_ condition: Bool, _ what: @autoclosure () -> String) {
        if !condition { fail(what()) }
    }

    private func fail(_ what: String) -> Never {
        fuzzFail("NBD server: \(what)")
    }

    /// The server sends nothing more.
    private func requireEnd(_ after: String) {
        require(server.readableBytes == 0, "\(server.readableBytes) bytes sent \(after)")
    }

    /// `count` bytes of the server's stream, which must hold them (no message is sent in part).
    private mutating func serverBytes(_ count: Int, _ what: String) -> ByteBuffer {
        guard let slice = server.readSlice(length: count) else {
            fail("\(what) cut short: \(count) bytes expected, \(server.readableBytes) sent")
        }
        return slice
    }

    private func requireString(_ bytes: ByteBuffer, _ what: String) {
        require(bytes.readableBytes <= NBDCodec.maximumStringLength, "\(what) of \(bytes.readableBytes) bytes (limit 4096)")
        require(String(validating: bytes.readableBytesView, as: UTF8.self) != nil, "\(what) is not valid UTF-8")
    }

    private mutating func run() {
        var greeting = serverBytes(18, "greeting")
        require(greeting.readInteger(as: UInt64.self) == NBDMagic.greeting, "greeting without NBDMAGIC")
        require(greeting.readInteger(as: UInt64.self) == NBDMagic.option, "greeting without IHAVEOPT")
        guard let flags = client.readInteger(as: UInt32.self) else { return requireEnd("before the client's flags") }
        guard NBDClientFlags.known.isSuperset(of: NBDClientFlags(rawValue: flags)) else {
            return requireEnd("after unknown client flags")
        }
        negotiate(noZeroes: flags & NBDClientFlags.noZeroes.rawValue != 0)
    }

    // MARK: Negotiation

    private mutating func negotiate(noZeroes: Bool) {
        while true {
            guard client.readableBytes >= 16 else { return requireEnd("without a whole option request") }
            let magic = client.readInteger(as: UInt64.self)!
            let option = NBDOption(rawValue: client.readInteger(as: UInt32.self)!)
            let length = client.readInteger(as: UInt32.self)!
            guard magic == NBDMagic.option else { return requireEnd("after an option with a bad magic") }
            guard client.readSlice(length: Int(length)) != nil else {
                return requireEnd("in answer to \(option) before its \(length) bytes of data arrived")
            }
            if server.readableBytes == 0 { return }
            if option == .exportName {
                var reply = serverBytes(10 + (noZeroes ? 0 : 124), "EXPORT_NAME reply")
                _ = reply.readInteger(as: UInt64.self)
                let transmission = NBDTransmissionFlags(rawValue: reply.readInteger(as: UInt16.self)!)
                require(transmission.contains(.hasFlags), "EXPORT_NAME reply flags without HAS_FLAGS")
                require(reply.readableBytesView.allSatisfy { $0 == 0 }, "EXPORT_NAME reply padding is not zeroes")
                return transmit()
            }
            guard answered(option) else { return }
        }
    }

    /// Reads the server's replies to one option up to its final one; false when the negotiation
    /// is over (transmission ran, or the server must send nothing more).
    private mutating func answered(_ option: NBDOption) -> Bool {
        var selected: Set<UInt32> = []
        while true {
            if server.readableBytes == 0 { return false }
            var header = serverBytes(20, "option reply header")
            require(header.readInteger(as: UInt64.self) == NBDMagic.optionReply, "option reply with a bad magic")
            let echoed = header.readInteger(as: UInt32.self)!
            require(echoed == option.rawValue, "reply for option \(echoed) to \(option)")
            let type = header.readInteger(as: UInt32.self)!
            var data = serverBytes(Int(header.readInteger(as: UInt32.self)!), "option reply data")
            if type & (1 << 31) != 0 {
                requireString(data, "error message of the reply to \(option)")
                return option != .abort
            }
            switch NBDOptionReply(rawValue: type) {
            case .ack:
                require(data.readableBytes == 0, "ACK to \(option) with data")
                switch option {
                case .startTLS:
                    // Nothing negotiated in the clear carries over (the server forgets it too).
                    structuredReplies = false
                    contextIDs = []
                case .structuredReply: structuredReplies = true
                case .setMetaContext: contextIDs.formUnion(selected)
                case .go:
                    transmit()
                    return false
                case .abort:
                    requireEnd("after the ACK to ABORT")
                    return false
                default: break
                }
                return true
            case .server:
                require(option == .list, "SERVER reply to \(option)")
                guard let nameLength = data.readInteger(as: UInt32.self), nameLength <= data.readableBytes else {
                    fail("SERVER reply whose name length exceeds its data")
                }
                requireString(data.readSlice(length: Int(nameLength))!, "export name in a SERVER reply")
                requireString(data, "export description in a SERVER reply")
            case .info:
                require(option == .info || option == .go, "INFO reply to \(option)")
                guard let info = data.readInteger(as: UInt16.self) else { fail("INFO reply without a type") }
                switch NBDInfo(rawValue: info) {
                case .export: require(data.readableBytes == 10, "INFO_EXPORT of \(data.readableBytes + 2) bytes")
                case .name, .description: requireString(data, "INFO string")
                case .blockSize:
                    require(data.readableBytes == 12, "INFO_BLOCK_SIZE of \(data.readableBytes + 2) bytes")
                    let minimum = data.readInteger(as: UInt32.self)!, preferred = data.readInteger(as: UInt32.self)!
                    let maximum = data.readInteger(as: UInt32.self)!
                    require(minimum > 0 && minimum & (minimum - 1) == 0 && minimum <= preferred && preferred <= maximum,
                            "INFO_BLOCK_SIZE \(minimum)/\(preferred)/\(maximum)")
                default: fail("INFO reply of unknown type \(info)")
                }
            case .metaContext:
                require(option == .listMetaContext || option == .setMetaContext, "META_CONTEXT reply to \(option)")
                guard let id = data.readInteger(as: UInt32.self) else { fail("META_CONTEXT reply without an id") }
                requireString(data, "metadata context name")
                selected.insert(id)
            default:
                fail("reply of unknown type \(type) to \(option)")
            }
        }
    }

    // MARK: Transmission

    /// What the client asked under one cookie.
    private struct Asked {
        var command: NBDCommand
        var offset: UInt64
        var length: UInt32
    }

    private mutating func transmit() {
        var asked: [UInt64: [Asked]] = [:]
        while let request = try? NBDCodec.readRequest(from: &client) {
            asked[request.cookie, default: []].append(Asked(command: request.command, offset: request.offset, length: request.length))
            if request.command == .disconnect { break }
            if request.command == .write && client.readSlice(length: Int(request.length)) == nil { break }
        }
        while server.readableBytes > 0 {
            let magic = server.readInteger(as: UInt32.self)
            if magic == NBDMagic.simpleReply {
                guard simpleReply(asked) else { return }
            } else {
                require(magic == NBDMagic.structuredReply, "reply with a bad magic 0x\(String(magic ?? 0, radix: 16))")
                structuredChunk(asked)
            }
        }
    }

    /// Reads a simple reply (its magic read); false when what follows cannot be told apart (a
    /// cookie used for reads of several lengths).
    private mutating func simpleReply(_ asked: [UInt64: [Asked]]) -> Bool {
        var header = serverBytes(12, "simple reply")
        let error = header.readInteger(as: UInt32.self)!
        let cookie = header.readInteger(as: UInt64.self)!
        guard let requests = asked[cookie] else { fail("simple reply to cookie \(cookie), which no request carried") }
        require([0, 1, 5, 12, 22, 28, 75, 95, 108].contains(error), "error \(error) is not one of the protocol's")
        guard error == 0, !structuredReplies else { return true }
        let reads = Set(requests.filter { $0.command == .read }.map(\.length))
        guard !reads.isEmpty else { return true }
        guard reads.count == 1, requests.count == 1 else { return false }
        _ = serverBytes(Int(reads.first!), "read data")
        return true
    }

    /// Reads a structured reply chunk (its magic read).
    private mutating func structuredChunk(_ asked: [UInt64: [Asked]]) {
        var header = serverBytes(16, "structured reply header")
        let flags = header.readInteger(as: UInt16.self)!
        let type = NBDChunkType(rawValue: header.readInteger(as: UInt16.self)!)
        let cookie = header.readInteger(as: UInt64.self)!
        var payload = serverBytes(Int(header.readInteger(as: UInt32.self)!), "chunk payload")
        require(structuredReplies, "structured reply without STRUCTURED_REPLY negotiated")
        require(flags & ~NBDChunkType.flagDone == 0, "chunk flags 0x\(String(flags, radix: 16))")
        guard let requests = asked[cookie] else { fail("chunk for cookie \(cookie), which no request carried") }
        switch type {
        case .none:
            require(payload.readableBytes == 0 && flags & NBDChunkType.flagDone != 0, "NONE chunk with data or not final")
        case .offsetData:
            guard let offset = payload.readInteger(as: UInt64.self), payload.readableBytes > 0 else {
                fail("OFFSET_DATA chunk without data")
            }
            let inside = requests.contains { read in
                read.command == .read && offset >= read.offset
                    && UInt64(payload.readableBytes) <= UInt64(read.length) && offset - read.offset <= UInt64(read.length) - UInt64(payload.readableBytes)
            }
            require(inside, "OFFSET_DATA at \(offset) for \(payload.readableBytes) bytes is outside every read of cookie \(cookie)")
        case .offsetHole:
            require(payload.readableBytes == 12, "OFFSET_HOLE chunk of \(payload.readableBytes) bytes")
        case .blockStatus:
            require(requests.contains { $0.command == .blockStatus }, "BLOCK_STATUS chunk for cookie \(cookie) of no BLOCK_STATUS request")
            require(payload.readableBytes >= 12 && (payload.readableBytes - 4) % 8 == 0, "BLOCK_STATUS chunk of \(payload.readableBytes) bytes")
            guard let id = payload.readInteger(as: UInt32.self) else { return }
            require(contextIDs.contains(id), "BLOCK_STATUS for context \(id), which SET_META_CONTEXT did not give")
            while let length = payload.readInteger(as: UInt32.self), payload.readInteger(as: UInt32.self) != nil {
                require(length > 0, "BLOCK_STATUS extent of length 0")
            }
        case .error, .errorOffset:
            guard let error = payload.readInteger(as: UInt32.self), let length = payload.readInteger(as: UInt16.self) else {
                fail("ERROR chunk of \(payload.readableBytes) bytes")
            }
            require(error != 0, "ERROR chunk with error 0")
            guard let message = payload.readSlice(length: Int(length)) else { fail("ERROR chunk whose message length \(length) exceeds it") }
            requireString(message, "ERROR chunk message")
            require(payload.readableBytes == (type == .errorOffset ? 8 : 0), "ERROR chunk with \(payload.readableBytes) trailing bytes")
        default:
            fail("chunk of unknown type \(type.rawValue)")
        }
    }
}
