import BlockIO
import Foundation
import FuzzSupport
import NIOCore
import NIOEmbedded
@testable import Control

/// Fuzzes what a client writes to a mirror daemon's control socket: the line framing
/// (`LineFrameDecoder`, the one the server uses) and each line's decoding as a `ControlRequest`
/// (and, for the client's side, as a `ControlResponse`).
///
/// Checks: the framing gives the same lines whatever the reads' sizes, and refuses exactly the
/// lines longer than its limit; of the first lines (`maximumLinesDecoded`), a request that decodes
/// is encoded back to one line that decodes to the same request; a refusal's description is one
/// safe line (`SafeText`: no control characters, no bidi overrides, bounded), as is the daemon's
/// answer to it, which decodes back the same.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let whole = frame(input, chunkSize: max(1, size), limit: 1 << 20)
    fuzzCheck(!whole.tooLong, "a line shorter than the limit was refused")
    checkChunkedFraming(input, whole: whole.lines)
    // Lines decode independently of each other, so the first few carry all there is to fuzz in
    // the codec; decoding every line of a 4 KiB input of short lines made the target 5x slower.
    for line in whole.lines.prefix(maximumLinesDecoded) { decode(line) }
    return 0
}

/// Lines of one input given to the request and response decoders (all of them are framed).
private let maximumLinesDecoded = 4

/// The lines `LineFrameDecoder(maximumLength: limit)` gives for `input` read `chunkSize` bytes at a
/// time, and whether it refused a line as too long.
private func frame(_ input: [UInt8], chunkSize: Int, limit: Int) -> (lines: [[UInt8]], tooLong: Bool) {
    let collector = LineCollector()
    let channel = EmbeddedChannel()
    do {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineFrameDecoder(maximumLength: limit)))
        try channel.pipeline.syncOperations.addHandler(collector)
    } catch {
        fuzzFail("cannot set up the embedded channel: \(error)")
    }
    var offset = 0
    while offset < input.count, !collector.tooLong {
        let end = min(input.count, offset + chunkSize)
        _ = try? channel.writeInbound(ByteBuffer(bytes: input[offset..<end]))
        offset = end
    }
    _ = try? channel.finish(acceptAlreadyClosed: true)
    return (collector.lines, collector.tooLong)
}

/// Collects the framed lines, and whether the decoder refused one.
private final class LineCollector: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var lines: [[UInt8]] = []
    var tooLong = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lines.append(Array(unwrapInboundIn(data).readableBytesView))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fuzzCheck(error is LineFrameDecoder.LineTooLong, "line framing failed with \(error)")
        tooLong = true
    }
}

/// In about 16 reads (of 5 bytes at least) with a limit of 200, the lines must be those of the
/// whole input, up to a refusal, which only a line (or an unterminated tail) longer than 200 bytes
/// may cause; a line may pass at up to 200 + the read size - 1 bytes, when its newline came in the
/// read that made it longer than 200.
private func checkChunkedFraming(_ input: [UInt8], whole: [[UInt8]]) {
    let limit = 200, chunk = max(5, input.count / 16)
    let chunked = frame(input, chunkSize: chunk, limit: limit)
    fuzzCheck(chunked.lines.count <= whole.count && Array(whole.prefix(chunked.lines.count)) == chunked.lines,
              "lines read in \(chunk)-byte reads differ from the lines of the whole input")
    var pieces = input.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(\.count)
    if pieces.last == 0 { pieces.removeLast() }
    if chunked.tooLong {
        let refused = pieces.count > chunked.lines.count ? pieces[chunked.lines.count] : 0
        fuzzCheck(refused > limit, "a line of \(refused) bytes was refused as longer than \(limit)")
    } else {
        fuzzCheck(chunked.lines.count == whole.count, "\(chunk)-byte reads lost lines without an error")
        fuzzCheck(chunked.lines.allSatisfy { $0.count <= limit + chunk - 1 }, "a line longer than the limit passed")
        let tail = input.last == UInt8(ascii: "\n") ? 0 : pieces.last ?? 0
        fuzzCheck(tail <= limit, "an unterminated tail of \(tail) bytes was kept")
    }
}

/// One line as the daemon reads it, and as the client reads a daemon's answer.
private func decode(_ line: [UInt8]) {
    let escaped = UntrustedText.escape(bytes: line)
    fuzzCheck(SafeText.problem(in: escaped, limit: UntrustedText.defaultLimit + 32) == nil,
              "UntrustedText.escape gave an unsafe line: \(SafeText.problem(in: escaped, limit: UntrustedText.defaultLimit + 32) ?? "")")
    do {
        let request = try ControlCodec.decode(ControlRequest.self, from: Data(line))
        let encoded = ControlCodec.encode(request)
        fuzzCheck(encoded.last == UInt8(ascii: "\n") && encoded.dropLast().firstIndex(of: UInt8(ascii: "\n")) == nil,
                  "an encoded request is not one line")
        fuzzCheck((try? ControlCodec.decode(ControlRequest.self, from: encoded.dropLast())) == request,
                  "a request does not decode back from its encoding")
    } catch {
        fuzzCheck(SafeText.problem(in: error.description) == nil,
                  "the refusal of a request is not a safe line (\(SafeText.problem(in: error.description) ?? "")): "
                  + String(reflecting: String(error.description.prefix(300))))
        let answer = ControlResponse.failure("m0", "malformed request: \(error)")
        let encoded = ControlCodec.encode(answer)
        fuzzCheck(encoded.dropLast().firstIndex(of: UInt8(ascii: "\n")) == nil, "the answer to a malformed request is not one line")
        fuzzCheck((try? ControlCodec.decode(ControlResponse.self, from: encoded.dropLast())) == answer,
                  "the answer to a malformed request does not decode back")
    }
    if let response = try? ControlCodec.decode(ControlResponse.self, from: Data(line)) {
        let encoded = ControlCodec.encode(response)
        fuzzCheck((try? ControlCodec.decode(ControlResponse.self, from: encoded.dropLast())) == response,
                  "a response does not decode back from its encoding")
    }
}
