import Testing
@testable import NBD

/// How a leg's request is cut for a server's block sizes.
@Suite struct NBDRequestSplitTests {
    @Test func withoutBlockSizesTheSpecsDefaultsApply() {
        let split = NBDRequestSplit(blockSizes: nil)
        #expect(split.minimum == 1 && split.maximumPayload == 32 << 20 && split.maximumRange == 1 << 30)
        #expect(split.misalignment(offset: 3, length: 5) == nil)
    }

    @Test func limitsAreMultiplesOfTheMinimum() {
        // A maximum that is not a multiple of the minimum is rounded down to one; a maximum above
        // 32 MiB is not used (32 MiB is what every server takes).
        let odd = NBDRequestSplit(blockSizes: (minimum: 4096, preferred: 65536, maximum: 100_000))
        #expect(odd.maximumPayload == 98_304 && odd.maximumRange == 1 << 30)
        let large = NBDRequestSplit(blockSizes: (minimum: 512, preferred: 4096, maximum: UInt32.max))
        #expect(large.maximumPayload == 32 << 20)
        let tight = NBDRequestSplit(blockSizes: (minimum: 65536, preferred: 65536, maximum: 65536))
        #expect(tight.maximumPayload == 65536)
    }

    @Test func misalignmentNamesTheRangeAndTheBlock() {
        let split = NBDRequestSplit(blockSizes: (minimum: 4096, preferred: 4096, maximum: 1 << 20))
        #expect(split.misalignment(offset: 8192, length: 4096) == nil)
        #expect(split.misalignment(offset: 100, length: 4096)
                == "offset 100 length 4096 is not a multiple of the export's 4096-byte minimum block size")
        #expect(split.misalignment(offset: 4096, length: 10) != nil)
    }

    @Test func piecesCoverTheRangeInOrder() {
        #expect(NBDRequestSplit.pieces(offset: 7, length: 0, step: 4096).isEmpty)
        let pieces = NBDRequestSplit.pieces(offset: 1 << 20, length: 150_000, step: 65536)
        #expect(pieces.map(\.offset) == [1 << 20, (1 << 20) + 65536, (1 << 20) + 131_072])
        #expect(pieces.map(\.length) == [65536, 65536, 18_928])
        // A range longer than 32 bits of length is cut too.
        let huge = NBDRequestSplit.pieces(offset: 0, length: 5 << 30, step: 1 << 30)
        #expect(huge.count == 5 && huge.allSatisfy { $0.length == 1 << 30 } && huge.last?.offset == 4 << 30)
    }
}
