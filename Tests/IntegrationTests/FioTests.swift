import Foundation
import Testing

/// fio's nbd engine (libnbd, many requests in flight, several connections) against `blockmirror serve`.
@Suite struct FioTests {
    /// Runs fio with `arguments` (writing all of a fresh 64 MiB export, then verifying it): expects
    /// success, no verify errors, job errors 0, 64 MiB written and 64 MiB read back.
    func runFio(_ label: String, _ arguments: [String]) throws {
        try Tools.require("fio")
        let dir = try TempDir(label)
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: 64 << 20)
        let server = try ServerProcess(image: image, in: dir)
        defer { server.stop() }

        let report = dir.file("fio.json")
        let fio = try run(["fio", "--name=\(label)", "--ioengine=nbd", "--uri=\(server.uri)",
                           "--output-format=json", "--output=\(report)", "--verify_state_save=0"] + arguments, in: dir)
        let json = readText(report)
        #expect(fio.succeeded, "\(fio)\n--- fio.json ---\n\(json.suffix(4000))\n\(server.log)")
        #expect(!fio.output.lowercased().contains("verify"), "fio reported verify errors\n\(fio)\n\(server.log)")
        let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let jobs = try #require(object?["jobs"] as? [[String: Any]], "no jobs in fio's JSON\n\(json.suffix(4000))")
        #expect(!jobs.isEmpty)
        for job in jobs {
            #expect((job["error"] as? NSNumber)?.intValue == 0, "fio job error \(job["error"] ?? "?")\n\(fio)\n\(server.log)")
        }
        // Every byte of the 64 MiB was written, and read back by the verify phase.
        func total(_ direction: String) -> Int {
            jobs.reduce(0) { $0 + (((($1[direction] as? [String: Any])?["io_bytes"]) as? NSNumber)?.intValue ?? 0) }
        }
        #expect(total("write") == 64 << 20, "fio wrote \(total("write")) bytes\n\(json.suffix(4000))")
        #expect(total("read") == 64 << 20, "fio verified \(total("read")) bytes\n\(json.suffix(4000))")
        #expect(server.isRunning, "server died under fio\n\(server.log)")
    }

    /// 4 KiB random writes, 32 in flight, over all 64 MiB, then every block read back and crc32c-verified.
    @Test func randomWriteVerify() throws {
        try runFio("randwrite", ["--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=64M",
                                 "--verify=crc32c", "--do_verify=1"])
    }

    /// Two jobs (two NBD connections, multi-conn) each write 32 MiB sequentially in 1 MiB blocks and verify.
    @Test func sequentialTwoConnectionsVerify() throws {
        try runFio("seqwrite2", ["--rw=write", "--bs=1M", "--iodepth=8", "--numjobs=2", "--size=32M",
                                 "--offset_increment=32M", "--verify=crc32c", "--do_verify=1"])
    }
}
