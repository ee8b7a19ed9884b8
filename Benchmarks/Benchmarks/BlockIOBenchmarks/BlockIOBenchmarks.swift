import Benchmark
import BenchmarkSupport
import BlockIO
import Dispatch
import Glibc
import Logging

/// The data path's buffers and libaio without any network: the buffer pool's take and return, and
/// 4 KiB `O_DIRECT` reads of a scratch file through `BlockDevice` and `AIOContext`.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .blockMirror()

    // Requests as a connection with 32 in flight makes them: take 32 buffers, then give them back.
    // The pool serves every take from what was returned (after the warm-up iteration filled it).
    for (size, name) in [(4096, "4KiB"), (1 << 20, "1MiB")] {
        let pool = BufferPool()
        Benchmark("buffer-pool-take-return-1000-of-\(name)-32-held") { benchmark in
            var held: [AlignedBuffer] = []
            held.reserveCapacity(32)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                for batch in stride(from: 0, to: 1000, by: 32) {
                    for _ in batch..<min(batch + 32, 1000) { held.append(pool.take(capacity: size)) }
                    for buffer in held { pool.recycle(buffer) }
                    held.removeAll(keepingCapacity: true)
                }
            }
            benchmark.stopMeasurement()
        }
    }

    // One request's whole trip, as the daemon makes it: BlockDevice.read submits to the shared
    // AIOContext (io_submit), its reaper thread gets the completion (io_getevents) and runs the
    // callback, which wakes the waiting thread. One read per iteration: its p90 is a latency.
    Benchmark(
        "libaio-round-trip-4KiB-direct-read",
        configuration: .blockMirror(maxDuration: .seconds(5)),
        closure: { benchmark, scratch in
            for _ in benchmark.scaledIterations {
                let offset = scratch.blocks.next() * 4096
                scratch.device.read(into: scratch.buffers[0].baseAddress, count: 4096, offset: offset, completion: scratch.completion)
                scratch.done.wait()
            }
        },
        setup: { try ScratchDevice() })

    // Compare with `fio --ioengine=libaio --direct=1 --bs=4k --iodepth=32 --rw=randread` on a file
    // in /var/tmp. Its allocations vary by a few percent: the reaper thread allocates once per batch
    // of completions it reaps, and how many a batch holds depends on timing. 5% still catches one
    // allocation more per read (about 9 now).
    Benchmark(
        "libaio-10000-4KiB-direct-random-reads-32-in-flight",
        configuration: .blockMirror(maxDuration: .seconds(5), allocations: .init(relative: [.p90: 5])),
        closure: { benchmark, scratch in
            for _ in benchmark.scaledIterations {
                await withTaskGroup(of: Void.self) { group in
                    for lane in 0..<32 {
                        group.addTask {
                            var blocks = BlockSequence(seed: UInt64(lane), count: scratch.device.size / 4096)
                            for _ in 0..<(10000 / 32 + (lane < 10000 % 32 ? 1 : 0)) {
                                let offset = blocks.next() * 4096
                                await withCheckedContinuation { continuation in
                                    scratch.device.read(into: scratch.buffers[lane].baseAddress, count: 4096, offset: offset) { result in
                                        if case .failure(let error) = result { fatalError("read failed: \(error)") }
                                        continuation.resume()
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
        setup: { try ScratchDevice() })
}

/// Block numbers in `0..<count`, pseudo-random and the same every run (a 64-bit LCG), so reads hit
/// the scratch file all over rather than one block the disk's cache keeps.
struct BlockSequence: Sendable {
    private var state: UInt64
    let count: UInt64

    init(seed: UInt64, count: UInt64) {
        state = (seed &+ 1) &* 0x9E37_79B9_7F4A_7C15
        self.count = count
    }

    mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return (state >> 33) % count
    }
}

/// What the read benchmarks share, made by each one's setup: a 64 MiB file of real data (holes and
/// unwritten extents would read as free zeroes) in /var/tmp, on a disk (tmpfs would not take
/// `O_DIRECT`), opened through libaio and unlinked at once, so its blocks go when the process exits;
/// 32 aligned buffers; the round trip's callback, made once so that the benchmark measures the
/// read's allocations, not its own.
final class ScratchDevice: @unchecked Sendable {
    let device: BlockDevice
    let buffers = (0..<32).map { _ in AlignedBuffer(capacity: 4096) }
    /// The round trip's blocks (used by the benchmark's thread only).
    var blocks: BlockSequence
    /// Signalled by `completion`.
    let done: DispatchSemaphore
    let completion: @Sendable (Result<Void, BlockIOError>) -> Void

    init() throws {
        let path = "/var/tmp/blockmirror-bench-\(getpid()).img"
        defer { unlink(path) }
        let file = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC).get()
        defer { _ = file.close() }
        let chunk = [UInt8](repeating: 0xa5, count: 1 << 20)
        for mebibyte in 0..<64 { try chunk.withUnsafeBytes { file.writeAll($0, at: UInt64(mebibyte) << 20) }.get() }
        try file.dataSync().get()
        device = try BlockDevice.open(path: path, readOnly: true, aio: try AIOEngine(depth: 64), logger: Logger(label: "bench"))
        precondition(device.isDirect, "\(path) refused O_DIRECT: the reads would measure the page cache")
        blocks = BlockSequence(seed: 0, count: device.size / 4096)
        let done = DispatchSemaphore(value: 0)
        self.done = done
        completion = { result in
            if case .failure(let error) = result { fatalError("read failed: \(error)") }
            done.signal()
        }
    }
}
