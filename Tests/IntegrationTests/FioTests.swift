import Foundation
import Testing

/// fio's nbd engine (libnbd, many requests in flight, several connections) against `blockmirror serve`.
@Suite struct FioTests {
    /// Runs fio with `arguments` (writing all of a fresh `size` export, then verifying it) against
    /// `blockmirror serve` started with `serverArguments`: expects success, no verify errors, job
    /// errors 0, every byte written and read back; then runs `afterwards` on the server.
    func runFio(_ label: String, _ arguments: [String], size: Int = 64 << 20, serverArguments: [String] = [],
                afterwards: (ServerProcess) throws -> Void = { _ in }) throws {
        try Tools.require("fio")
        let dir = try TempDir(label)
        defer { dir.remove() }
        let image = dir.file("disk.img")
        try makeSparseFile(image, size: size)
        let server = try ServerProcess(image: image, in: dir, extraArguments: serverArguments)
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
        // Every byte was written, and read back by the verify phase.
        func total(_ direction: String) -> Int {
            jobs.reduce(0) { $0 + (((($1[direction] as? [String: Any])?["io_bytes"]) as? NSNumber)?.intValue ?? 0) }
        }
        #expect(total("write") == size, "fio wrote \(total("write")) bytes\n\(json.suffix(4000))")
        #expect(total("read") == size, "fio verified \(total("read")) bytes\n\(json.suffix(4000))")
        #expect(server.isRunning, "server died under fio\n\(server.log)")
        try afterwards(server)
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

    /// Queue depth 1, the case busy polling is for (`--busy-poll 2000`: the loop spins up to 2 ms
    /// after each request, reaping completions and watching the socket itself): 4 KiB random writes
    /// over 16 MiB, verified. Then, with no client, the server stops spinning: its CPU time stops
    /// growing (a loop that never ended its spin would burn a whole core).
    @Test func queueDepthOneWithBusyPollingThenIdle() throws {
        try runFio("qd1poll", ["--rw=randwrite", "--bs=4k", "--iodepth=1", "--size=16M", "--verify=crc32c", "--do_verify=1"],
                   size: 16 << 20, serverArguments: ["--busy-poll", "2000"]) { server in
            func cpuSeconds() -> Double {
                let fields = readText("/proc/\(server.child.pid)/stat").split(separator: ")").last?.split(separator: " ") ?? []
                guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return .infinity }
                return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
            }
            var last = cpuSeconds()
            let settled = waitUntil(timeout: 60) {
                Thread.sleep(forTimeInterval: 1)
                let now = cpuSeconds()
                defer { last = now }
                return now - last < 0.25
            }
            #expect(settled, "the idle server kept using CPU (last second: \(cpuSeconds() - last) s)\n\(server.log)")
        }
    }
}
