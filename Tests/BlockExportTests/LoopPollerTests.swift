import BlockIO
import Dispatch
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import BlockExport

/// A busy-polling event loop on a real file: requests started one after another from their
/// completions (queue depth 1, the case polling is for) all complete with the right bytes, the
/// window opens, the spin reaps completions itself, and once the requests stop the loop stops
/// spinning.
@Suite struct LoopPollerTests {
    @Test func queueDepthOneReadsAreCaughtByTheSpinWhichThenStops() async throws {
        let path = "/var/tmp/blockexport-poll-\(UUID().uuidString).img"
        var contents = [UInt8](repeating: 0, count: 1 << 20)
        for index in contents.indices { contents[index] = UInt8(truncatingIfNeeded: index / 4096 &* 31 &+ index) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data(contents)))
        let expected = contents
        defer { unlink(path) }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let aio = try AIOEngine(depth: 16)
        let polling = try await aio.bind(to: group, busyPoll: .milliseconds(2))
        let loop = group.next()
        let poller = try #require(polling.poller(of: loop))
        let device = try BlockDevice.open(path: path, readOnly: true, aio: aio, logger: Logger(label: "test"))
        let buffer = AlignedBuffer(capacity: 4096)
        let blocks = (0..<300).map { ($0 * 97) % 256 }

        // Each read starts from the previous one's completion, on the loop; the last one reports
        // what the poller saw.
        let (mismatches, caught, window) = try await loop.flatSubmit {
            let promise = loop.makePromise(of: (Int, Int, UInt64).self)
            @Sendable func read(_ index: Int, mismatches: Int) {
                guard index < blocks.count else {
                    return promise.succeed((mismatches, poller.completionsCaught, poller.windowLength))
                }
                let offset = blocks[index] * 4096
                device.read(into: buffer.baseAddress, count: 4096, offset: UInt64(offset)) { result in
                    loop.execute {
                        guard case .success = result else { return promise.fail(IOError(errnoCode: EIO, reason: "read")) }
                        let same = memcmp(buffer.baseAddress, expected.withUnsafeBytes { $0.baseAddress! + offset }, 4096) == 0
                        read(index + 1, mismatches: mismatches + (same ? 0 : 1))
                    }
                }
            }
            read(0, mismatches: 0)
            return promise.futureResult
        }.get()
        #expect(mismatches == 0)
        #expect(caught > 0, "no completion was reaped by the spin (window \(window) ns)")
        #expect(window > 0)

        // Nothing more to do: the spin ends within its window, and the loop sleeps. Asked by a
        // task on the loop, which a loop that never ends its spin would not run: a timeout says so.
        func spinningNow() -> Bool? {
            let answer = Mutex<Bool?>(nil)
            let answered = DispatchSemaphore(value: 0)
            loop.execute {
                answer.withLock { $0 = poller.spinning }
                answered.signal()
            }
            guard answered.wait(timeout: .now() + 30) == .success else { return nil }
            return answer.withLock { $0 }
        }
        let deadline = DispatchTime.now().uptimeNanoseconds + 30_000_000_000
        var spinning = spinningNow()
        while spinning == true, DispatchTime.now().uptimeNanoseconds < deadline {
            try await Task.sleep(nanoseconds: 10_000_000)
            spinning = spinningNow()
        }
        #expect(spinning == false, spinning == nil ? "the loop runs no task: it spins forever" : "the loop still spins with nothing in flight")
        guard spinning == false else { return }  // a stuck loop cannot be shut down

        device.close()
        aio.shutdown()
        try await group.shutdownGracefully()
    }

    @Test func withoutBusyPollingNoLoopHasAPoller() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let aio = try AIOEngine(depth: 16)
        let polling = try await aio.bind(to: group)
        for loop in group.makeIterator() { #expect(polling.poller(of: loop) == nil) }
        aio.shutdown()
        try await group.shutdownGracefully()
    }
}
