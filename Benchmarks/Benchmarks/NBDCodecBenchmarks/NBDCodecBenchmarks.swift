import Benchmark
import BenchmarkSupport
import NBD
import NIOCore

/// The per-request cost of the protocol layer: framing and decoding the requests a client
/// pipelines, and encoding the replies' headers. None of it should allocate: payloads are slices of
/// the receive buffer, and headers are written into a buffer the caller owns.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .blockMirror()

    let allocator = ByteBufferAllocator()
    var reads = allocator.buffer(capacity: NBDRequest.wireSize * 1000)
    for i in 0..<1000 {
        NBDCodec.writeRequest(NBDRequest(command: .read, cookie: UInt64(i), offset: UInt64(i) * 4096, length: 4096), into: &reads)
    }
    // What a client streaming a mix sends: READs, and 4 KiB WRITEs each followed by its payload.
    var mixed = allocator.buffer(capacity: (NBDRequest.wireSize + 2048) * 1000)
    for i in 0..<1000 {
        let write = i % 2 == 1
        NBDCodec.writeRequest(NBDRequest(command: write ? .write : .read, cookie: UInt64(i), offset: UInt64(i) * 4096, length: 4096),
                              into: &mixed)
        if write { mixed.writeRepeatingByte(0xa5, count: 4096) }
    }
    let requests = reads, pipelined = mixed

    Benchmark("decode-1000-request-headers") { benchmark in
        for _ in benchmark.scaledIterations {
            var input = requests
            var count = 0
            while let request = try NBDCodec.readRequest(from: &input) { count &+= Int(request.length) }
            blackHole(count)
        }
    }

    // The server's framing (NBDFrameDecoder, in transmission) over one receive buffer holding 1000
    // pipelined requests, half of them WRITEs whose payload it passes on as a slice.
    let decoder = NBDFrameDecoder()
    decoder.startTransmission()
    Benchmark("frame-1000-pipelined-requests-half-4KiB-writes") { benchmark in
        for _ in benchmark.scaledIterations {
            var input = pipelined
            var count = 0
            while let message = try decoder.next(from: &input) {
                if case .payload(let piece, _) = message { count &+= piece.readableBytes }
            }
            blackHole(count)
        }
    }

    Benchmark("encode-1000-simple-replies") { benchmark in
        var out = allocator.buffer(capacity: 16 * 1000)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            out.clear()
            for i in 0..<1000 { NBDCodec.writeSimpleReply(cookie: UInt64(i), error: .ok, into: &out) }
            blackHole(out.readableBytes)
        }
        benchmark.stopMeasurement()
    }

    // A READ's reply when structured replies were negotiated (the data follows each header).
    Benchmark("encode-1000-offset-data-headers") { benchmark in
        var out = allocator.buffer(capacity: 28 * 1000)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            out.clear()
            for i in 0..<1000 {
                NBDCodec.writeOffsetDataHeader(cookie: UInt64(i), offset: UInt64(i) * 4096, dataLength: 4096, into: &out)
            }
            blackHole(out.readableBytes)
        }
        benchmark.stopMeasurement()
    }
}
