import Control
import Foundation
import Mirror
import Testing

@Suite struct ControlCodecTests {
    @Test func requestRoundTripsAsOneJSONLine() throws {
        let request = ControlRequest(verb: .speed, speedMin: 1000, speedMax: 0)
        let line = ControlCodec.encode(request)
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(String(decoding: line, as: UTF8.self) == "{\"speedMax\":0,\"speedMin\":1000,\"verb\":\"speed\"}\n")
        #expect(try ControlCodec.decode(ControlRequest.self, from: line.dropLast()) == request)
    }

    @Test func malformedRequestsAreDescribed() {
        #expect(throws: ControlCodec.DecodingFailure.self) { try ControlCodec.decode(ControlRequest.self, from: Data("{".utf8)) }
        do {
            _ = try ControlCodec.decode(ControlRequest.self, from: Data("{\"target\":\"x\"}".utf8))
            Issue.record("a request without a verb was accepted")
        } catch {
            #expect(error.description.contains("verb"))
        }
        #expect(throws: ControlCodec.DecodingFailure.self) {
            try ControlCodec.decode(ControlRequest.self, from: Data("{\"verb\":\"format-disk\"}".utf8))
        }
    }

    @Test func mirrorNamesAreCheckedBecauseTheyNameFiles() {
        #expect(throws: Never.self) { try RuntimeDirectory.validate(name: "vm-disk_1.old") }
        for bad in ["", "../etc", "a/b", ".hidden", String(repeating: "x", count: 65), "sp ace"] {
            #expect(throws: ControlError.self) { try RuntimeDirectory.validate(name: bad) }
        }
    }

    @Test func runtimeDirectoryPrefersTheExplicitOne() {
        #expect(RuntimeDirectory.resolve("/tmp/x").path == "/tmp/x")
        #expect(RuntimeDirectory.resolve("/tmp/x").controlSocket(for: "m0") == "/tmp/x/m0.ctl")
    }
}
