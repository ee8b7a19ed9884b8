import BlockIO
import Foundation
import Logging
import Testing
@testable import Mirror

#if canImport(Glibc)
import Glibc
#endif

/// The target's lifecycle alone (md's --add, --fail, --remove on one slot), on small real files.
@Suite struct TargetSlotTests {
    /// Three legs: `new` and `other` as large as the 1 MiB source, `small` shorter.
    struct Legs {
        let dir = "/var/tmp/target-slot-\(UUID().uuidString)"
        let aio: AIOEngine
        let new: BlockDevice, other: BlockDevice, small: BlockDevice

        init() throws {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let aio = try AIOEngine()
            self.aio = aio
            let dir = self.dir
            func leg(_ name: String, size: off_t) throws -> BlockDevice {
                let path = "\(dir)/\(name).img"
                _ = FileManager.default.createFile(atPath: path, contents: nil)
                truncate(path, size)
                return try BlockDevice.open(path: path, readOnly: false, aio: aio, logger: Logger(label: "test"))
            }
            new = try leg("new", size: 1 << 20)
            other = try leg("other", size: 2 << 20)
            small = try leg("small", size: 1 << 19)
        }

        func tearDown() {
            aio.shutdown()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// The text of the error `body` throws, nil if it throws none.
    private func refusal(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func attachFailRemoveAndAttachAgain() throws {
        let legs = try Legs()
        defer { legs.tearDown() }
        var slot = TargetSlot()
        #expect(slot.leg == nil && slot.healthy == nil)
        #expect(refusal { _ = try slot.checkRemove() } == "no target to remove")

        #expect(refusal { try slot.checkAttach(legs.small, sourcePath: "OLD", sourceSize: 1 << 20) }?
                    .contains("has 524288 bytes, smaller than source OLD (1048576 bytes)") == true)
        #expect(refusal { try slot.checkAttach(legs.new, sourcePath: "OLD", sourceSize: 1 << 20) } == nil)
        slot.attach(legs.new)
        #expect(slot.attaching == 1 && slot.healthy === legs.new && slot.isHealthy(legs.new) && !slot.isHealthy(legs.other))
        slot.attached()
        #expect(slot.attaching == 0)
        #expect(refusal { try slot.checkAttach(legs.other, sourcePath: "OLD", sourceSize: 1 << 20) }?.contains("already attached") == true)
        #expect(refusal { _ = try slot.checkRemove() }?.contains("is active: fail it first") == true)

        let otherFailed = slot.fail("not ours", on: legs.other)
        #expect(!otherFailed, "only the attached target can fail")
        let failed = slot.fail("EIO at offset 4096", on: legs.new)
        let again = slot.fail("a second reason", on: legs.new)
        #expect(failed && !again && slot.failure == "EIO at offset 4096", "the first reason wins")
        #expect(slot.healthy == nil && slot.leg === legs.new, "a failed target stays until removed")

        // A failed target may be replaced by an attach, or removed.
        #expect(refusal { try slot.checkAttach(legs.other, sourcePath: "OLD", sourceSize: 1 << 20) } == nil)
        #expect(try slot.checkRemove() == legs.new.path)
        slot.remove()
        #expect(slot.leg == nil && slot.failure == nil)
        slot.attach(legs.other)
        #expect(slot.healthy === legs.other && slot.failure == nil)
    }

    /// Attaches overlap as a count: one that ends does not end the other.
    @Test func attachesAreCounted() throws {
        let legs = try Legs()
        defer { legs.tearDown() }
        var slot = TargetSlot()
        slot.attach(legs.new)
        _ = slot.fail("replaced", on: legs.new)
        slot.attach(legs.other)
        slot.attached()
        #expect(slot.attaching == 1)
        slot.attached()
        #expect(slot.attaching == 0)
    }

    /// A leg that takes only aligned requests (as an NBD server with a minimum block size).
    private final class BlockSized: LegFilter {
        let next: any Leg
        let requiredAlignment: Int
        init(_ next: any Leg, _ alignment: Int) { self.next = next; requiredAlignment = alignment }
    }

    /// A target that needs requests in blocks larger than the export promised its clients, or
    /// that the source's size does not end on, is refused, naming both.
    @Test func aTargetNeedingLargerBlocksThanTheExportIsRefused() throws {
        let legs = try Legs()
        defer { legs.tearDown() }
        let slot = TargetSlot()
        let blocky = BlockSized(legs.other, 4096)
        #expect(refusal { try slot.checkAttach(blocky, sourcePath: "OLD", sourceSize: 1 << 20, exportBlockSize: 512) }?
                    .contains("takes only requests in multiples of 4096 bytes, and the export promised its clients 512-byte ones") == true)
        #expect(refusal { try slot.checkAttach(blocky, sourcePath: "OLD", sourceSize: 1 << 20, exportBlockSize: 4096) } == nil)
        #expect(refusal { try slot.checkAttach(blocky, sourcePath: "OLD", sourceSize: (1 << 20) - 512, exportBlockSize: 4096) }?
                    .contains("does not end on a 4096-byte block") == true)
    }
}
