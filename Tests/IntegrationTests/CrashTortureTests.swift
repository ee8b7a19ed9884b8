import Foundation
import Testing

/// tools/crash-torture.sh for a few small rounds, so every run of the suite kills the mirror
/// daemon with SIGKILL at several random moments (copy, bitmap write, add, check, stop, resume),
/// restarts it with the same bitmap and checks every acknowledged write on both legs and
/// OLD == NEW (invariants 2, 3, 4 and 6). The long runs (hundreds of rounds) are the tool's own;
/// a failing round's files stay in the test's directory, named in the failure.
@Suite(.serialized) struct CrashTortureTests {
    @Test func killDashNineAtRandomMomentsLosesNoAcknowledgedWrite() throws {
        let dir = try TempDir()
        var keep = false  // a failing round is a finding: its images, journals and logs stay
        defer { if !keep { dir.remove() } }
        try PythonNBD.require(in: dir)
        let tool = KernelMDTests.projectRoot + "/tools/crash-torture.sh"
        try #require(FileManager.default.isExecutableFile(atPath: tool), "missing \(tool)")
        let summaryPath = dir.file("summary.json")
        let result = try run(["env", "BLOCKMIRROR_BIN=\(try BlockMirrorBinary.path())", "PYTHON=\(PythonNBD.interpreter)", tool,
                              "--rounds", "3", "--size", "16M", "--kills", "2-3", "--work", dir.file("work"),
                              "--summary-json", summaryPath], in: dir, timeout: 900)
        let summary = try? JSONSerialization.jsonObject(with: Data(readText(summaryPath).utf8)) as? [String: Any]
        let passed = result.succeeded && (summary?["failed"] as? Int) == 0
        keep = !passed
        #expect(passed, "crash torture failed; kept in \(dir.path)\n\(result)")
        let kills = (summary?["kills"] as? [String: Int])?.values.reduce(0, +) ?? 0
        #expect((summary?["rounds"] as? Int) == 3 && kills >= 6 && (summary?["acked"] as? Int ?? 0) > 0,
                "the torture did less than asked: \(String(describing: summary))\n\(result)")
    }
}
