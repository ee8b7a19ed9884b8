import Control
import Foundation
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
        #expect(failure("{") == "not JSON (a message is one JSON object on one line, such as {\"verb\":\"status\"})")
        #expect(failure("[1]") == "not a JSON object (a message is one JSON object on one line, such as {\"verb\":\"status\"})")
        #expect(failure("{\"target\":\"x\"}") == "missing \"verb\" (one of status, add, speed, check, fail, remove, complete, reverse, stop)")
        #expect(failure("{\"verb\":7}") == "\"verb\" must be a string, one of status, add, speed, check, fail, remove, complete, reverse, stop (got 7)")
        #expect(failure("{\"verb\":\"format-disk\"}") == "unknown verb \"format-disk\"; expected one of status, add, speed, check, fail, remove, complete, reverse, stop")
        #expect(failure("{\"verb\":\"add\",\"target\":[\"/dev/sdb\"]}") == "\"target\" must be a string (the target's path) (got an array)")
        #expect(failure("{\"verb\":\"check\",\"repair\":\"yes\"}") == "\"repair\" must be true or false (got a string)")
    }

    /// JSON numbers that do not fit the field are JSON all the same: the error names the field,
    /// what it takes and what it got (Foundation says only "The given data was not valid JSON").
    @Test func numbersThatDoNotFitNameTheField() throws {
        let range = "must be a whole number of KiB/s from 0 to 18446744073709551615"
        for field in ["speedMin", "speedMax"] {
            for (value, got) in [("1e999", "a number out of any range"), ("-1e999", "a number out of any range"), ("-1", "-1"),
                                 ("1.5", "1.5"), ("18446744073709551616", "1.8446744073709552e+19"), ("true", "a boolean"),
                                 ("{}", "an object"), ("\"5\"", "a string")] {
                #expect(failure("{\"verb\":\"speed\",\"\(field)\":\(value)}") == "\"\(field)\" \(range) (got \(got))", "\(field) = \(value)")
            }
        }
        #expect(try ControlCodec.decode(ControlRequest.self, from: Data("{\"verb\":\"speed\",\"speedMax\":18446744073709551615,\"speedMin\":1e3}".utf8))
                == ControlRequest(verb: .speed, speedMin: 1000, speedMax: UInt64.max))
        #expect(try ControlCodec.decode(ControlRequest.self, from: Data("{\"verb\":\"status\",\"speedMin\":null,\"extra\":1}".utf8))
                == ControlRequest(verb: .status))
    }

    /// What a request sends is escaped before it is echoed back or logged.
    @Test func unknownVerbsAreEscaped() {
        let text = failure("{\"verb\":\"x\\u001b[2J\\u202e\\n\\\"\"}")
        #expect(text == "unknown verb \"x\\x1b[2J\\u{202e}\\n\\\"\"; expected one of status, add, speed, check, fail, remove, complete, reverse, stop", "\(text)")
        #expect(!failure("{\"verb\":\"\(String(repeating: "v", count: 5000))\"}").contains(String(repeating: "v", count: 300)))
    }

    /// The description of the failure to decode `line` as a request ("" if it decoded).
    private func failure(_ line: String) -> String {
        do {
            _ = try ControlCodec.decode(ControlRequest.self, from: Data(line.utf8))
            return ""
        } catch {
            return error.description
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
