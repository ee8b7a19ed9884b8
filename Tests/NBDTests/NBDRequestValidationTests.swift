import BlockExport
import Testing
@testable import NBD

/// Each rule of docs/ARCHITECTURE.md's "Error rules (NBD)" table that is decided before a request
/// reaches the export.
@Suite struct NBDRequestValidationTests {
    private let size: UInt64 = 1 << 20

    private func negotiated(readOnly: Bool = false, canFastZero: Bool = true, structured: Bool = true,
                            blockStatus: Bool = true) -> NBDNegotiated {
        NBDNegotiated(name: "disk", export: MemoryExport(size: size, readOnly: readOnly, canFastZero: canFastZero, maximumPayload: 32 << 20),
                      structuredReplies: structured, baseAllocationSelected: blockStatus)
    }

    private func error(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64 = 0, length: UInt32 = 512,
                       _ negotiated: NBDNegotiated? = nil) -> NBDErrorCode? {
        NBDRequestValidation.rejection(of: NBDRequest(flags: flags, command: command, cookie: 1, offset: offset, length: length),
                                       negotiated: negotiated ?? self.negotiated())?.error
    }

    @Test func requestsWithinTheExportPass() {
        for command in [NBDCommand.read, .write, .flush, .trim, .writeZeroes, .cache, .blockStatus] {
            #expect(error(command, offset: size - 512) == nil, "\(command)")
        }
        #expect(error(.flush, offset: .max, length: .max) == nil, "FLUSH's range is not looked at")
    }

    @Test func readCacheAndBlockStatusPastTheEndAreInvalid() {
        for command in [NBDCommand.read, .cache, .blockStatus] {
            #expect(error(command, offset: size - 511) == .invalid, "\(command)")
            #expect(error(command, offset: .max - 100) == .invalid, "\(command) whose end overflows")
        }
    }

    @Test func modificationsPastTheEndAreNoSpace() {
        for command in [NBDCommand.write, .trim, .writeZeroes] {
            #expect(error(command, offset: size) == .noSpace, "\(command)")
            #expect(error(command, offset: .max, length: 1) == .noSpace, "\(command) whose end overflows")
        }
    }

    @Test func modificationsOfAReadOnlyExportArePermissionErrors() {
        for command in [NBDCommand.write, .trim, .writeZeroes] {
            #expect(error(command, negotiated(readOnly: true)) == .permission, "\(command)")
        }
        #expect(error(.read, negotiated(readOnly: true)) == nil)
    }

    @Test func payloadsOverTheMaximumAreInvalidOrOverflowWithDF() {
        let tooLong = BlockSizeConstraints.maximumPayload + 1
        #expect(error(.read, length: tooLong) == .invalid)
        #expect(error(.read, flags: .dontFragment, length: tooLong) == .overflow)
        #expect(error(.read, flags: .dontFragment, length: tooLong, negotiated(structured: false)) == .invalid)
        #expect(error(.write, length: tooLong) == .invalid)
        #expect(error(.write, length: BlockSizeConstraints.maximumPayload) == .noSpace, "the longest payload passes; only its range fails")
    }

    /// An export that asks for 4 KiB blocks (a mirror whose target is an NBD server with that
    /// minimum) refuses ranges off them, as the NBD spec lets it, naming the range.
    @Test func rangesOffTheMinimumBlockSizeAreInvalid() {
        let blocky = NBDNegotiated(name: "disk", export: MemoryExport(size: size, minimumBlockSize: 4096, maximumPayload: 1 << 20),
                                   structuredReplies: true, baseAllocationSelected: true)
        for command in [NBDCommand.read, .write, .trim, .writeZeroes, .cache, .blockStatus] {
            #expect(error(command, offset: 4096, length: 8192, blocky) == nil, "\(command)")
            #expect(error(command, offset: 100, length: 4096, blocky) == .invalid, "\(command) at an unaligned offset")
            #expect(error(command, offset: 4096, length: 512, blocky) == .invalid, "\(command) of an unaligned length")
        }
        #expect(error(.flush, offset: 3, length: 5, blocky) == nil)
        let message = NBDRequestValidation.rejection(of: NBDRequest(flags: [], command: .write, cookie: 1, offset: 100, length: 4096),
                                                     negotiated: blocky)?.message
        #expect(message == "write at offset 100 length 4096 is not a multiple of the export's 4096-byte minimum block size")
    }

    @Test func unknownCommandsAndFlagsAreInvalid() {
        #expect(error(NBDCommand(rawValue: 8)) == .invalid)
        #expect(error(NBDCommand(rawValue: 0xFFFF)) == .invalid)
        #expect(error(.read, flags: NBDCommandFlags(rawValue: 1 << 5)) == .invalid)
        #expect(error(.writeZeroes, flags: .fastZero, negotiated(canFastZero: false)) == .invalid)
        #expect(error(.writeZeroes, flags: .fastZero) == nil)
    }

    @Test func blockStatusNeedsItsContextAndALength() {
        #expect(error(.blockStatus, negotiated(blockStatus: false)) == .invalid)
        #expect(error(.blockStatus, length: 0) == .invalid)
    }
}
