import Foundation
import Mirror
import MirrorModel
import Testing

/// The md backend against a real kernel md: this host's kernel has no md, so tools/md-vm.sh boots
/// Debian's cloud kernel in qemu (TCG) with mdadm and this build's blockmirror in an initramfs, and
/// runs the scenario through blockmirror's verbs with `--backend md`: build degraded on vda, fio
/// writes on /dev/md0, add vdb, wait, check (mismatch_cnt 0), status --json and detail, complete
/// (md fails and removes vda: the array runs on vdb alone), stop; then
/// both disks' md5s compared on the host. The harness installs qemu, the kernel, busybox and mdadm
/// when they are missing; the test fails (never skips) when it cannot run.
@Suite(.serialized) struct KernelMDTests {
    static var projectRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    @Test func mdBackendDrivesKernelMDInAVM() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let harness = Self.projectRoot + "/tools/md-vm.sh"
        try #require(FileManager.default.isExecutableFile(atPath: harness), "missing \(harness)")
        let result = try run(["env", "WORK=\(dir.path)", "SIZE=256M", "FIO_MB=32", "VM_TIMEOUT=600",
                              "BLOCKMIRROR_BIN=\(try BlockMirrorBinary.path())", harness, "run", "md-blockmirror"],
                             in: dir, timeout: 1500)
        #expect(result.succeeded, "\(result)")
        let output = result.stdout
        #expect(output.contains("@@ COMPLETE md0: /dev/vdb serves alone; /dev/vda removed (mdadm --fail, --remove)"), "\(result)")
        #expect(output.contains("@@ STOP md0: degraded: no target attached; /dev/vdb holds every write"), "\(result)")
        #expect(output.contains("@@ MISMATCH_CNT 0"), "\(result)")
        #expect(output.contains("@@ STATUS 0"), "\(result)")
        let md5s = output.split(separator: "\n").filter { $0.contains("md5 OLD") }
        #expect(md5s.count == 1 && md5s.allSatisfy { line in
            let words = line.split(separator: " ")
            guard let old = words.firstIndex(of: "OLD"), let new = words.firstIndex(of: "NEW") else { return false }
            return words[old + 1] == words[new + 1]
        }, "\(md5s)")

        // What blockmirror's md backend read from the live kernel md (the guest's files).
        let files = dir.path + "/results/md-blockmirror/files/"
        func status(_ file: String) throws -> MirrorStatus {
            let line = try #require(readText(files + file).split(separator: "\n").first { $0.hasPrefix("{") }, "no JSON in \(file)")
            return try JSONDecoder().decode(MirrorStatus.self, from: Data(line.utf8))
        }
        let degraded = try status("status-degraded.json")
        #expect(degraded.state == .degraded && degraded.source == "/dev/vda" && degraded.target == nil && degraded.size == 256 << 20)
        let synced = try status("status.json")
        #expect(synced.state == .inSync && synced.target == "/dev/vdb" && synced.regionsDirty == 0
                && synced.lastCheck?.mismatchedSectors == 0)
        let completed = try status("status-completed.json")
        #expect(completed.state == .degraded && completed.source == "/dev/vdb" && completed.target == nil, "\(completed)")
        let detail = readText(files + "detail.txt")
        #expect(detail.contains("Backend : md (kernel)") && detail.contains("State : clean\n")
                && detail.contains("active sync   /dev/vda") && detail.contains("active sync   /dev/vdb"), "\(detail)")
    }
}
