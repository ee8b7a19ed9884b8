import Foundation
import Testing
@testable import NBDTLS

/// psktool's key files as both ends read them.
@Suite struct PSKFileTests {
    func file(_ text: String) throws -> String {
        let path = try scratchDirectory("psk-test") + "/keys.psk"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func linesWithCRLFAndBlankOnesAreRead() throws {
        let path = try file("alice:00ff10\r\n\r\nbob:abcd\n")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        #expect(try PSKFile(path: path).keys == ["alice": [0x00, 0xff, 0x10], "bob": [0xab, 0xcd]])
    }

    @Test func aBadLineIsNamed() throws {
        for (text, says) in [("alice:00ff\nbob\n", "line 2, is not NAME:HEXKEY"), ("alice:0g\n", "line 1"), (":00\n", "line 1"),
                             ("\n\n", "holds no key")] {
            let path = try file(text)
            defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
            #expect(throws: PSKFile.Problem.self) { try PSKFile(path: path) }
            do { _ = try PSKFile(path: path) } catch { #expect(error.description.contains(says), "\(error)") }
        }
    }
}
