import FuzzSupport
import Logging
import NBD
import NIOCore
import NIOEmbedded
#if canImport(Glibc)
import Glibc
#endif

/// One client connection to the server's connection handler on an `EmbeddedChannel`: the client's
/// bytes go in `chunkSize` bytes at a time (each chunk one read, as the kernel might split them),
/// and what the server flushed comes out. Everything the handler logs is rendered and checked
/// (`CheckingLogHandler`).
public enum NBDConnectionRun {
    /// Serves a client that sent `input`: replaces `output` with the bytes the server sent (keeping
    /// its capacity) and returns whether the server closed the connection before the end of the
    /// input. `tls`: the server's STARTTLS policy (nil: none).
    public static func serve(_ input: [UInt8], chunkSize: Int, registry: NBDExportRegistry,
                             tls: NBDServerTLSPolicy? = nil, into output: inout [UInt8]) -> Bool {
        output.removeAll(keepingCapacity: true)
        let channel = EmbeddedChannel()
        do {
            try ConnectionHandlerFactory.configure(channel, registry: registry, tls: tls, logger: CheckingLogHandler.logger(label: "nbd"))
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 10809)).wait()
        } catch {
            fuzzCheck(false, "cannot set up the embedded connection: \(error)")
        }
        func collect() {
            channel.embeddedEventLoop.run()
            while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
                buffer.withUnsafeReadableBytes { output.append(contentsOf: $0) }
            }
        }
        collect()
        var offset = 0
        while offset < input.count, channel.isActive {
            let end = min(input.count, offset + chunkSize)
            do {
                try channel.writeInbound(ByteBuffer(bytes: input[offset..<end]))
            } catch {
                fuzzCheck(false, "the connection handler let an error escape: \(error)")
            }
            collect()
            offset = end
        }
        let closed = !channel.isActive
        _ = try? channel.finish(acceptAlreadyClosed: true)
        collect()
        return closed
    }

    /// The two runs' replies, kept from input to input: an array grown afresh for every run (READ
    /// replies make megabytes) cost the transmission target a third of its time in copies and in
    /// page faults on AddressSanitizer's new mappings.
    nonisolated(unsafe) private static var wholeOutput: [UInt8] = []
    nonisolated(unsafe) private static var chunkedOutput: [UInt8] = []

    /// Serves `input` whole and in about 16 reads (of 7 bytes at least), checks that both runs sent
    /// the same bytes (the state machine must not depend on how reads split the stream), and checks
    /// the replies against the protocol (`NBDStreamCheck`). Once STARTTLS is acknowledged the split
    /// does matter, by design: bytes that arrived in the clear in the read that carried it close the
    /// connection, later ones go through TLS. So then the runs are compared up to the ACK only, and
    /// each is checked against the protocol on its own (the whole one always hits the barrier; a
    /// split one may go on negotiating "through TLS").
    public static func serveAndCheck(_ input: [UInt8], registry: NBDExportRegistry, tls: NBDServerTLSPolicy? = nil) {
        let chunkSize = max(7, input.count / 16)
        let wholeClosed = serve(input, chunkSize: max(1, input.count), registry: registry, tls: tls, into: &wholeOutput)
        let chunkedClosed = serve(input, chunkSize: chunkSize, registry: registry, tls: tls, into: &chunkedOutput)
        let whole = (output: wholeOutput, closed: wholeClosed), chunked = (output: chunkedOutput, closed: chunkedClosed)
        if let end = startTLSAcknowledged(in: whole.output) {
            fuzzCheck(chunked.output.count >= end && whole.output[..<end] == chunked.output[..<end],
                      "the server's replies up to STARTTLS's ACK depend on how the input is split")
            NBDStreamCheck.check(client: input, server: whole.output)
            NBDStreamCheck.check(client: input, server: chunked.output)
            return
        }
        let same = whole.output.count == chunked.output.count
            && whole.output.withUnsafeBytes { a in chunked.output.withUnsafeBytes { b in a.isEmpty || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
        fuzzCheck(same, "the server's replies depend on how the input is split: \(whole.output.count) bytes sent for the whole input, "
                  + "\(chunked.output.count) for reads of \(chunkSize) bytes")
        fuzzCheck(whole.closed == chunked.closed, "the connection closed for one split of the input but not the other")
        NBDStreamCheck.check(client: input, server: whole.output)
    }

    /// Where the server's bytes end after its ACK to STARTTLS, if it sent one (the reply's bytes,
    /// looked for anywhere: the fuzz exports' data is zeroes, which never look like it). With
    /// libc's `memchr` for the third byte of the reply magic (0xe8: the first is zero, found at every
    /// byte of READ data) and `memcmp` at each hit, not a loop of our own: the replies can be
    /// megabytes, and an instrumented comparison per byte took a quarter of the transmission target's time.
    static func startTLSAcknowledged(in output: [UInt8]) -> Int? {
        var ack = ByteBuffer()
        NBDCodec.writeOptionReply(.startTLS, .ack, into: &ack)
        let pattern = Array(ack.readableBytesView)
        let anchor = 2
        guard output.count >= pattern.count else { return nil }
        return output.withUnsafeBytes { haystack -> Int? in
            pattern.withUnsafeBytes { needle -> Int? in
                let base = haystack.baseAddress!, last = haystack.count - needle.count
                var start = 0
                while start <= last, let hit = memchr(base + start + anchor, Int32(needle[anchor]), last - start + 1) {
                    start = base.distance(to: UnsafeRawPointer(hit)) - anchor
                    if memcmp(base + start, needle.baseAddress!, needle.count) == 0 { return start + needle.count }
                    start += 1
                }
                return nil
            }
        }
    }
}
