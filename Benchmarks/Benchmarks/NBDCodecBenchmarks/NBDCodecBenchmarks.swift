import Benchmark
import NBD
import NIOCore

/// The per-request cost of the protocol layer: decoding request headers and encoding replies.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.throughput, .wallClock, .mallocCountTotal], maxDuration: .seconds(3))

    let allocator = ByteBufferAllocator()
    var wire = allocator.buffer(capacity: 28 * 1000)
    for i in 0..<1000 {
        NBDCodec.writeRequest(NBDRequest(command: .read, cookie: UInt64(i), offset: UInt64(i) * 4096, length: 4096), into: &wire)
    }
    let requests = wire

    Benchmark("decode 1000 request headers") { benchmark in
        for _ in benchmark.scaledIterations {
            var input = requests
            var count = 0
            while let request = try NBDCodec.readRequest(from: &input) { count &+= Int(request.length) }
            blackHole(count)
        }
    }

    Benchmark("encode 1000 simple replies") { benchmark in
        var out = allocator.buffer(capacity: 16 * 1000)
        for _ in benchmark.scaledIterations {
            out.clear()
            for i in 0..<1000 { NBDCodec.writeSimpleReply(cookie: UInt64(i), error: .ok, into: &out) }
            blackHole(out.readableBytes)
        }
    }
}
