import FuzzSupport
import BlockExport
import NBD
import NBDFuzzHarness
import NIOCore

/// Fuzzes the transmission phase: a first byte chooses how the connection was negotiated and what
/// the export is; the rest is what the client sends once transmission started (request headers,
/// WRITE payloads, anything).
///
/// The bits of the first byte: 0 structured replies, 1 base:allocation selected (with 0), 2 the
/// old EXPORT_NAME rather than GO, 3 a read-only export, 4 an export that fails requests at some
/// offsets with each kind of error, 5 an export of 2^64 - 512 bytes rather than 1 MiB (ranges
/// near the top of the offset space), 6 payloads up to the 32 MiB real exports take rather than
/// 64 KiB (slower: see `FuzzExport.init`).
///
/// The stream goes (1) through `NBDCodec.readRequest` directly, every header re-encoded the same,
/// and (2) after the negotiation the first byte names, to the server's connection handler on an
/// EmbeddedChannel, whole and split in about 16 reads (the replies must not differ), with every log line
/// checked; the replies are read against the requests (`NBDStreamCheck`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNBDTransmission(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let setup = data[0]
    let requests = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    readRequests(requests)
    let export = FuzzExport(size: setup & 32 != 0 ? UInt64.max - 511 : 1 << 20, readOnly: setup & 8 != 0, failing: setup & 16 != 0,
                            maximumPayload: setup & 64 != 0 ? BlockSizeConstraints.maximumPayload : 64 << 10)
    let registry = NBDExportRegistry([(name: "disk", export: export)])
    let client = negotiation(structured: setup & 1 != 0, blockStatus: setup & 3 == 3, exportName: setup & 4 != 0) + requests
    NBDConnectionRun.serveAndCheck(client, registry: registry)
    return 0
}

/// What a client sends before transmission: flags, the options asked for, then GO or EXPORT_NAME.
private func negotiation(structured: Bool, blockStatus: Bool, exportName: Bool) -> [UInt8] {
    var buffer = ByteBuffer()
    buffer.writeInteger(NBDClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
    if structured { NBDCodec.writeOptionRequest(.structuredReply, data: ByteBuffer(), into: &buffer) }
    if blockStatus {
        var query = ByteBuffer()
        NBDCodec.writeString("disk", into: &query)
        query.writeInteger(UInt32(1))
        NBDCodec.writeString(NBDMetaContext.baseAllocation, into: &query)
        NBDCodec.writeOptionRequest(.setMetaContext, data: query, into: &buffer)
    }
    if exportName {
        NBDCodec.writeOptionRequest(.exportName, data: ByteBuffer(string: "disk"), into: &buffer)
    } else {
        var go = ByteBuffer()
        NBDCodec.writeString("disk", into: &go)
        go.writeInteger(UInt16(0))
        NBDCodec.writeOptionRequest(.go, data: go, into: &buffer)
    }
    return Array(buffer.readableBytesView)
}

/// The codec alone: header after header (a WRITE's payload skipped), each written back the same;
/// nil only short of a whole header, an error only for a bad magic, and neither moves the reader.
private func readRequests(_ stream: [UInt8]) {
    var buffer = ByteBuffer(bytes: stream)
    while true {
        let start = buffer.readerIndex
        let header = buffer.getSlice(at: start, length: NBDRequest.wireSize)
        let request: NBDRequest?
        do { request = try NBDCodec.readRequest(from: &buffer) } catch {
            fuzzCheck(buffer.readerIndex == start, "readRequest consumed bytes and threw")
            fuzzCheck(buffer.getInteger(at: start, as: UInt32.self) != NBDMagic.request, "readRequest refused a header with the right magic")
            _ = error.description
            return
        }
        guard let request else {
            fuzzCheck(buffer.readerIndex == start && buffer.readableBytes < NBDRequest.wireSize, "readRequest returned nil with a whole header")
            return
        }
        var encoded = ByteBuffer()
        NBDCodec.writeRequest(request, into: &encoded)
        fuzzCheck(encoded == header, "readRequest and writeRequest disagree")
        _ = "\(request.command) \(request.flags.rawValue) \(request.offset) \(request.length)"
        if request.hasPayload && buffer.readSlice(length: Int(request.length)) == nil { return }
    }
}
