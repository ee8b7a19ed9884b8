import Foundation
import Mirror
import MirrorModel
import Testing

/// `blockmirror verify LEG1 LEG2`: two legs compared outside any mirror, with check's report.
@Suite struct VerifyTests {
    @Test func verifyCountsExactMismatchesBetweenTwoLegs() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let a = dir.file("a.img"), b = dir.file("b.img")
        try makeRandomFile(a, size: 8 << 20)
        try FileManager.default.copyItem(atPath: a, toPath: b)
        let binary = try BlockMirrorBinary.path()

        let same = try run(binary, "verify", a, b, in: dir)
        #expect(same.succeeded && same.stdout.contains("mismatch_cnt=0 (8 of 8 regions"), "\(same)")

        try flipBytes(b, offset: 4096 + 100, count: 1000)      // sectors 8..10: 3 sectors
        try flipBytes(b, offset: (7 << 20) + 512, count: 512)  // 1 sector
        let differ = try run(binary, "verify", a, b, "--json", in: dir)
        #expect(differ.status == 3, "\(differ)")
        let report = try JSONDecoder().decode(CheckReport.self, from: Data(differ.stdout.utf8))
        #expect(report.mismatchedSectors == 4 && report.regionsChecked == 8)
        #expect(report.mismatches == [CheckReport.Mismatch(offset: 4096, length: 1536),
                                      CheckReport.Mismatch(offset: (7 << 20) + 512, length: 512)])

        // With an offset (a metadata area skipped), offsets are the array's.
        let shifted = try run(binary, "verify", a, b, "--offset", "4M", "--json", in: dir)
        let tail = try JSONDecoder().decode(CheckReport.self, from: Data(shifted.stdout.utf8))
        #expect(shifted.status == 3 && tail.mismatches == [CheckReport.Mismatch(offset: (3 << 20) + 512, length: 512)], "\(shifted)")

        let missing = try run(binary, "verify", a, dir.file("nope.img"), in: dir)
        #expect(missing.status == 1 && missing.stderr.contains("nope.img"), "\(missing)")
    }
}
