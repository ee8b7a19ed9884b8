import BlockIO
import Foundation
import Logging
import Testing

/// The fault injector over a real file through libaio: each rule fails exactly the requests it
/// names, with an error naming the leg, operation and offset; the rest reach the file.
@Suite struct FaultInjectingLegTests {
    let files = BlockDeviceTests()

    /// A 1 MiB scratch file opened through libaio, under a fault injector.
    struct Scratch {
        let path: String
        let aio: AIOEngine
        let leg: FaultInjectingLeg

        init(_ files: BlockDeviceTests) throws {
            path = try files.scratchFile(size: 1 << 20)
            aio = try AIOEngine()
            leg = FaultInjectingLeg(try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: files.logger))
        }

        func remove() {
            aio.shutdown()
            unlink(path)
        }
    }

    /// The result of one asynchronous call: nil on success, else the error.
    func outcome(_ body: (@escaping @Sendable (Result<Void, BlockIOError>) -> Void) -> Void) async -> BlockIOError? {
        do {
            try await files.await(body)
            return nil
        } catch let error as BlockIOError {
            return error
        } catch {
            Issue.record("not a BlockIOError: \(error)")
            return nil
        }
    }

    @Test func faultsFailExactlyTheRequestsTheyName() async throws {
        let scratch = try Scratch(files)
        defer { scratch.remove() }
        let (path, leg) = (scratch.path, scratch.leg)
        let buffer = AlignedBuffer(capacity: 4096)
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0xA5)
        func write(at offset: UInt64) async -> BlockIOError? {
            await outcome { leg.write(from: buffer.baseAddress, count: 4096, offset: offset, durable: false, completion: $0) }
        }
        func read(at offset: UInt64) async -> BlockIOError? {
            await outcome { leg.read(into: buffer.baseAddress, count: 4096, offset: offset, completion: $0) }
        }

        // ENOSPC on writes overlapping [64 KiB, 68 KiB); reads there and writes elsewhere pass.
        leg.inject(.init([.write], range: (64 << 10)..<(68 << 10), errno: .noSpace))
        let refused = await write(at: 62 << 10)
        #expect(refused?.errno == .noSpace && refused?.operation == .write && refused?.offset == 62 << 10)
        #expect(refused?.description.contains(path) == true && refused?.description.contains("injected") == true)
        #expect(await write(at: 68 << 10) == nil)
        #expect(await write(at: 0) == nil)
        #expect(await read(at: 64 << 10) == nil)
        #expect(leg.injected == 1)

        // EIO on the third read anywhere, once.
        leg.heal()
        leg.inject(.init([.read], after: 2, times: 1))
        var failures: [Int] = []
        for index in 0..<5 where await read(at: UInt64(index) * 4096) != nil { failures.append(index) }
        #expect(failures == [2])
        #expect(await outcome { leg.flush(completion: $0) } == nil)

        // What passed reached the file; the refused write did not.
        let contents = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(contents[0] == 0xA5 && contents[68 << 10] == 0xA5)
        #expect(contents[62 << 10] == 0)

        // Latency delays, it does not fail.
        leg.heal()
        leg.setLatency(nanoseconds: 2_000_000)
        #expect(await write(at: 8192) == nil)
        #expect(await outcome { leg.flush(completion: $0) } == nil)
    }

    /// A stalled leg: the write reaches the file, its completion only comes on release.
    @Test func heldCompletionsArriveWhenReleased() async throws {
        let scratch = try Scratch(files)
        defer { scratch.remove() }
        let (path, leg) = (scratch.path, scratch.leg)
        let buffer = AlignedBuffer(capacity: 4096)
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0x3C)
        leg.holdCompletions()
        let completed = OneShot<Bool>()
        leg.write(from: buffer.baseAddress, count: 4096, offset: 8192, durable: true) { completed.fulfil((try? $0.get()) != nil) }
        let deadline = ContinuousClock.now + .seconds(30)
        while (try? Data(contentsOf: URL(fileURLWithPath: path)))?[8192] != 0x3C, ContinuousClock.now < deadline {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect((try Data(contentsOf: URL(fileURLWithPath: path)))[8192] == 0x3C, "the write never reached the file")
        #expect(completed.value == nil, "the completion was not held")
        leg.releaseCompletions()
        #expect(await completed.wait())
    }

    @Test func aVanishedLegFailsEveryCallAndSaysSo() async throws {
        let scratch = try Scratch(files)
        defer { scratch.remove() }
        let leg = scratch.leg
        #expect(leg.replacement() == nil)
        leg.vanish()
        let buffer = AlignedBuffer(capacity: 4096)
        let errors = [
            await outcome { leg.read(into: buffer.baseAddress, count: 4096, offset: 0, completion: $0) },
            await outcome { leg.write(from: buffer.baseAddress, count: 4096, offset: 0, durable: true, completion: $0) },
            await outcome { leg.flush(completion: $0) },
            await outcome { leg.writeZeroes(offset: 0, length: 4096, mayDeallocate: true, fastOnly: false, completion: $0) },
            await outcome { leg.discard(offset: 0, length: 4096, completion: $0) },
            await outcome { leg.prefetch(offset: 0, length: 4096, completion: $0) },
        ]
        #expect(errors.allSatisfy { $0?.errno == Errno(rawValue: ENXIO) })
        #expect(throws: BlockIOError.self) { try leg.flushNow() }
        #expect(throws: BlockIOError.self) { try leg.allocationMap(offset: 0, length: 4096, maxExtents: 1) }
        #expect(leg.replacement()?.contains("vanished") == true)
        leg.heal()
        #expect(await outcome { leg.flush(completion: $0) }?.errno == Errno(rawValue: ENXIO), "a vanished leg stays gone")
    }
}
