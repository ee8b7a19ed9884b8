import Benchmark
import BlockIO
import Foundation
import Logging

/// libaio through BlockIO without any network: 4 KiB direct reads, 32 in flight, on a scratch file.
/// Compare with `fio --ioengine=libaio --direct=1 --bs=4k --iodepth=32` on the same file.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.throughput, .wallClock], maxDuration: .seconds(5))

    Benchmark("4k direct random read, 32 in flight, 10000 reads") { benchmark in
        let path = "/var/tmp/blockmirror-bench-\(getpid()).img"
        // Real data, so reads reach the disk (holes and unwritten extents would read as free zeroes).
        let chunk = [UInt8](repeating: 0xa5, count: 1 << 20)
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        for _ in 0..<256 { try handle.write(contentsOf: chunk) }
        try handle.synchronize()
        try handle.close()
        let aio = try AIOEngine(depth: 64)
        defer { aio.shutdown() }
        let device = try BlockDevice.open(path: path, readOnly: true, aio: aio, logger: Logger(label: "bench"))
        let buffers = (0..<32).map { _ in AlignedBuffer(capacity: 4096) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            await withTaskGroup(of: Void.self) { group in
                for lane in 0..<32 {
                    group.addTask {
                        var state = UInt64(lane &+ 1) &* 0x9E37_79B9_7F4A_7C15
                        for _ in 0..<(10000 / 32) {
                            state = state &* 6364136223846793005 &+ 1442695040888963407
                            let block = (state >> 33) % UInt64(65536)
                            await withCheckedContinuation { continuation in
                                device.read(into: buffers[lane].baseAddress, count: 4096, offset: block * 4096) { _ in continuation.resume() }
                            }
                        }
                    }
                }
            }
        }
        benchmark.stopMeasurement()
    }
}
