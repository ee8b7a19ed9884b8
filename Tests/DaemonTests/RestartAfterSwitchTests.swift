import BlockIO
import Daemon
import Foundation
import Logging
import Mirror
import MirrorModel
import NIOCore
import NIOPosix
import Testing

/// What a restart does after `complete`, whatever command line the admin (or systemd) gives: the
/// leg the bitmap file names as the source serves, at the mirror's size, and OLD is never served
/// again; a command line that would serve OLD is refused with what to start instead.
@Suite(.serialized) struct RestartAfterSwitchTests {
    final class Rig {
        let dir = "/var/tmp/restart-switch-\(UUID().uuidString)"
        var old: String { dir + "/old.img" }
        var new: String { dir + "/new.img" }
        var bitmap: String { dir + "/m0.bitmap" }
        let aio: AIOEngine
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let logger = Logger(label: "restart-test")
        /// What was written after `complete` (at 1 MiB), on NEW alone.
        let late = [UInt8](repeating: 0x6b, count: 64 << 10)

        /// OLD of 16 MiB random bytes, a larger sparse NEW, a mirror built, in sync, completed
        /// (`keepOld`), written to after the switch, and stopped.
        init(keepOld: Bool = false) async throws {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var bytes = [UInt8](repeating: 0, count: 16 << 20)
            for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index &* 2654435761 >> 13) }
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/old.img"))
            _ = FileManager.default.createFile(atPath: dir + "/new.img", contents: nil)
            truncate(dir + "/new.img", 32 << 20)
            aio = try AIOEngine()
            let mirror = try await daemon(source: old, target: new).open(aio: aio, logger: logger)
            #expect(await mirror.waitUntilSettled().state == .inSync)
            _ = try await mirror.complete(keepOld: keepOld)
            var buffer = ByteBufferAllocator().buffer(capacity: late.count)
            buffer.writeBytes(late)
            try await mirror.write(offset: 1 << 20, data: buffer, fua: true, on: group.next()).get()
            try await mirror.close()
        }

        func daemon(source: String, target: String?) -> MirrorDaemon {
            MirrorDaemon(name: "m0", source: source, target: target, bitmap: bitmap, regionSize: nil, verifyClean: false, limits: SpeedLimits())
        }

        func read(_ mirror: MirrorExport, at offset: UInt64, count: Int) async throws -> [UInt8] {
            let buffer = try await mirror.read(offset: offset, length: count, allocator: ByteBufferAllocator(), on: group.next()).get()
            return Array(buffer.readableBytesView)
        }

        func bytes(_ path: String, at offset: Int, count: Int) throws -> [UInt8] {
            [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))[offset..<(offset + count)])
        }

        deinit {
            aio.shutdown()
            try? group.syncShutdownGracefully()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// The build's own command line serves NEW (with the write), at OLD's size; so does
    /// `--source NEW` alone, though NEW is larger than the mirror.
    @Test func theBuildsCommandLineAndSourceNewAloneServeNew() async throws {
        let rig = try await Rig()
        for (source, target) in [(rig.old, rig.new), (rig.new, nil)] {
            let mirror = try await rig.daemon(source: source, target: target).open(aio: rig.aio, logger: rig.logger)
            let status = mirror.status
            #expect(status.source == rig.new && status.target == nil && status.size == 16 << 20, "\(source) \(target ?? "-"): \(status)")
            #expect(try await rig.read(mirror, at: 1 << 20, count: rig.late.count) == rig.late)
            try await mirror.close()
        }
        #expect(try rig.bytes(rig.old, at: 1 << 20, count: 16) != Array(rig.late.prefix(16)), "OLD got the write made after complete")
    }

    /// Once OLD is gone (decommissioned: the point of a migration), the build's command line still
    /// serves NEW: a retired OLD is not even opened.
    @Test func aRetiredOldThatIsGoneIsNotNeeded() async throws {
        let rig = try await Rig()
        try FileManager.default.removeItem(atPath: rig.old)
        let mirror = try await rig.daemon(source: rig.old, target: rig.new).open(aio: rig.aio, logger: rig.logger)
        #expect(mirror.status.source == rig.new && mirror.status.target == nil)
        try await mirror.close()
    }

    /// `--source OLD` alone would serve the leg that lacks every write since the switch: refused,
    /// saying what to start instead and not to remove the bitmap file.
    @Test func sourceOldIsRefusedWithWhatToStartInstead() async throws {
        let rig = try await Rig()
        let error = await #expect(throws: WriteIntentLog.Failure.self) {
            try await rig.daemon(source: rig.old, target: nil).open(aio: rig.aio, logger: rig.logger)
        }
        let text = error?.description ?? ""
        #expect(text.contains("the roles switched at") && text.contains("\(rig.new) serves, not \(rig.old)")
                && text.contains("which was retired then and lacks every write made since") && text.contains("start with --source \(rig.new)")
                && text.contains("do not remove the bitmap file"), "\(text)")
    }

    /// The way back: `--source NEW --target OLD` copies only the region written since the switch.
    @Test func newWithOldAsTargetCopiesOnlyWhatChanged() async throws {
        let rig = try await Rig()
        let mirror = try await rig.daemon(source: rig.new, target: rig.old).open(aio: rig.aio, logger: rig.logger)
        let settled = await mirror.waitUntilSettled()
        #expect(settled.state == .inSync && settled.source == rig.new && settled.target == rig.old && settled.bytesCopied == 1 << 20,
                "\(settled)")
        try await mirror.close()
        #expect(try rig.bytes(rig.old, at: 1 << 20, count: rig.late.count) == rig.late)
        #expect(try rig.bytes(rig.old, at: 0, count: 16 << 20) == rig.bytes(rig.new, at: 0, count: 16 << 20))
    }

    /// A retired OLD written outside the mirror since the switch (its write trace changed) is not
    /// trusted when it is added back: every region is copied.
    @Test func aRetiredOldWrittenSinceIsCopiedWhole() async throws {
        let rig = try await Rig()
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: rig.old))
        try handle.seek(toOffset: 8 << 20)
        try handle.write(contentsOf: Data(repeating: 0x99, count: 4096))
        try handle.close()
        let mirror = try await rig.daemon(source: rig.new, target: rig.old).open(aio: rig.aio, logger: rig.logger)
        let settled = await mirror.waitUntilSettled()
        #expect(settled.state == .inSync && settled.bytesCopied == 16 << 20, "\(settled)")
        try await mirror.close()
        #expect(try rig.bytes(rig.old, at: 0, count: 16 << 20) == rig.bytes(rig.new, at: 0, count: 16 << 20))
    }

    /// After `complete --keep-old` the build's command line serves NEW with OLD as its target, in
    /// sync (OLD took every write).
    @Test func keepOldComesBackWithOldAsTheTarget() async throws {
        let rig = try await Rig(keepOld: true)
        let mirror = try await rig.daemon(source: rig.old, target: rig.new).open(aio: rig.aio, logger: rig.logger)
        let settled = await mirror.waitUntilSettled()
        #expect(settled.state == .inSync && settled.source == rig.new && settled.target == rig.old && settled.bytesCopied == 0, "\(settled)")
        try await mirror.close()
    }
}
