import FuzzSupport
import NBD
import NBDFuzzHarness
import NIOCore

/// Fuzzes the NBD negotiation with what a client sends from its first byte: the client flags,
/// option requests, and whatever follows them (transmission, once a GO or EXPORT_NAME succeeded).
///
/// Each input goes (1) through the codec's negotiation parsers directly (`readClientFlags`,
/// `readOptionHeader`, `parseExportRequest`, `parseMetaContextRequest`, as the handler calls them),
/// and (2) to the server's connection handler on an EmbeddedChannel, serving one export named
/// "disk" (1 MiB, payloads up to 64 KiB), with no TLS, `--tls on` or `--tls require` (by the
/// input's length; `TLSStandIn` for TLS), whole and split in about 16 reads (the replies must not
/// differ, up to a STARTTLS acknowledged), with every log line checked;
/// the server's replies are then read against the protocol (`NBDStreamCheck`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNBDHandshake(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    parseOptions(input)
    NBDConnectionRun.serveAndCheck(input, registry: registry, tls: tlsPolicies[size % tlsPolicies.count])
    return 0
}

/// The server's STARTTLS policy, chosen by the input's length (so the corpus keeps its meaning):
/// none (STARTTLS unsupported), `--tls on`, `--tls require`; TLS itself is `TLSStandIn`.
private let tlsPolicies: [NBDServerTLSPolicy?] = [nil, NBDServerTLSPolicy(mode: .on, provider: TLSStandIn()),
                                                 NBDServerTLSPolicy(mode: .require, provider: TLSStandIn())]

private let registry = NBDExportRegistry([(name: "disk", export: FuzzExport(size: 1 << 20, readOnly: false, failing: false,
                                                                            maximumPayload: 64 << 10))])

/// The codec alone: client flags, then option after option, each option's data parsed as every
/// option that carries structured data; an error must be a description, never a trap, and a
/// parse must take only whole messages.
private func parseOptions(_ input: [UInt8]) {
    var buffer = ByteBuffer(bytes: input)
    let before = buffer.readerIndex
    guard (try? NBDCodec.readClientFlags(from: &buffer)) != nil else {
        fuzzCheck(buffer.readerIndex == before, "readClientFlags moved the reader without a result")
        return
    }
    while true {
        let start = buffer.readerIndex
        let header: NBDOptionHeader?
        do { header = try NBDCodec.readOptionHeader(from: &buffer) } catch {
            fuzzCheck(buffer.readerIndex == start, "readOptionHeader consumed bytes and threw")
            _ = error.description
            return
        }
        guard let header else {
            fuzzCheck(buffer.readerIndex == start && buffer.readableBytes < 16, "readOptionHeader returned nil with a whole header")
            return
        }
        guard let data = buffer.readSlice(length: Int(header.length)) else { return }
        for option in [NBDOption.info, .go] {
            do {
                let request = try NBDCodec.parseExportRequest(data, option: option)
                fuzzCheck(request.name.utf8.count <= NBDCodec.maximumStringLength, "export name of \(request.name.utf8.count) bytes accepted")
                var encoded = ByteBuffer()
                NBDCodec.writeString(request.name, into: &encoded)
                encoded.writeInteger(UInt16(request.requestedInfo.count))
                for info in request.requestedInfo { encoded.writeInteger(info.rawValue) }
                fuzzCheck(encoded == data, "parseExportRequest accepted data it does not read back the same")
            } catch {
                _ = error.description
            }
        }
        for option in [NBDOption.listMetaContext, .setMetaContext] {
            do {
                let request = try NBDCodec.parseMetaContextRequest(data, option: option)
                var encoded = ByteBuffer()
                NBDCodec.writeString(request.exportName, into: &encoded)
                encoded.writeInteger(UInt32(request.queries.count))
                for query in request.queries { NBDCodec.writeString(query, into: &encoded) }
                fuzzCheck(encoded == data, "parseMetaContextRequest accepted data it does not read back the same")
            } catch {
                _ = error.description
            }
        }
    }
}
