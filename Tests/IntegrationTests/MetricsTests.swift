import Foundation
import Testing

/// `--metrics HOST:PORT`: Prometheus text with the mirror's figures and request latencies, read
/// with curl from a live mirror while fio writes through it.
@Suite(.serialized) struct MetricsTests {
    @Test func prometheusTextShowsProgressStateAndLatencies() throws {
        try Tools.require("curl", "fio")
        let dir = try TempDir()
        defer { dir.remove() }
        let old = dir.file("old.img"), new = dir.file("new.img")
        try makeRandomFile(old, size: 16 << 20)
        try makeSparseFile(new, size: 16 << 20)
        let mirror = try MirrorDaemon(source: old, target: new, in: dir, ["--metrics", "127.0.0.1:0"])
        let detail = try mirror.cli("detail", "m0", "--json")
        let object = try JSONSerialization.jsonObject(with: Data(detail.stdout.utf8)) as? [String: Any]
        let url = try #require((object?["daemon"] as? [String: Any])?["metrics"] as? String, "\(detail)")
        #expect(url.hasPrefix("http://127.0.0.1:") && url.hasSuffix("/metrics"))

        let fio = try run(["fio", "--name=m", "--ioengine=nbd", "--uri=\(mirror.uri)", "--rw=randwrite", "--bs=4k", "--size=4M",
                           "--iodepth=8"], in: dir)
        try #require(fio.succeeded, "\(fio)")
        try mirror.waitForStatus { $0.state == .inSync }
        let scrape = try run("curl", "-sf", url, in: dir)
        try #require(scrape.succeeded, "\(scrape)")
        let lines = scrape.stdout.split(separator: "\n").map(String.init)
        func value(_ prefix: String) -> Double? {
            lines.first { $0.hasPrefix(prefix + " ") }.flatMap { Double($0.split(separator: " ").last!) }
        }
        #expect(value("blockmirror_request_duration_seconds_count{op=\"write\"}") == 1024, "\(scrape.stdout)")
        #expect(value("blockmirror_state{mirror=\"m0\",state=\"in-sync\"}") == 1)
        #expect(value("blockmirror_state{mirror=\"m0\",state=\"recovering\"}") == 0)
        #expect(value("blockmirror_regions_dirty{mirror=\"m0\"}") == 0)
        #expect(value("blockmirror_regions{mirror=\"m0\"}") == 16)
        #expect((value("blockmirror_copied_bytes_total{mirror=\"m0\"}") ?? 0) > 0)
        #expect(lines.contains { $0.hasPrefix("blockmirror_request_duration_seconds_bucket{op=\"write\",le=") })
        let missing = try run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url.replacingOccurrences(of: "/metrics", with: "/nope"), in: dir)
        #expect(missing.stdout == "404", "\(missing)")
        _ = try mirror.stop()
    }
}
