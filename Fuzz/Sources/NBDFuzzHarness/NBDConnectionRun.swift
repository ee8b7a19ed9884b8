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
    /// The bytes the server sent to a client that sent `input`, and whether the server closed the
    /// connection before the end of the input.
    public static func serve(_ input: [UInt8], chunkSize: Int, registry: NBDExportRegistry) -> (output: [UInt8], closed: Bool) {
        let channel = EmbeddedChannel()
        do {
            try ConnectionHandlerFactory.configure(channel, registry: registry, logger: CheckingLogHandler.logger(label: "nbd"))
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 10809)).wait()
        } catch {
            fuzzCheck(false, "cannot set up the embedded connection: \(error)")
        }
        var output: [UInt8] = []
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
        return (output, closed)
    }

    /// Serves `input` whole and in about 16 reads (of 7 bytes at least), checks that both runs sent
    /// the same bytes (the state machine must not depend on how reads split the stream), and
    /// returns them.
    public static func serveChunkedAlike(_ input: [UInt8], registry: NBDExportRegistry) -> [UInt8] {
        let chunkSize = max(7, input.count / 16)
        let whole = serve(input, chunkSize: max(1, input.count), registry: registry)
        let chunked = serve(input, chunkSize: chunkSize, registry: registry)
        let same = whole.output.count == chunked.output.count
            && whole.output.withUnsafeBytes { a in chunked.output.withUnsafeBytes { b in a.isEmpty || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
        fuzzCheck(same, "the server's replies depend on how the input is split: \(whole.output.count) bytes sent for the whole input, "
                  + "\(chunked.output.count) for reads of \(chunkSize) bytes")
        fuzzCheck(whole.closed == chunked.closed, "the connection closed for one split of the input but not the other")
        return whole.output
    }
}
