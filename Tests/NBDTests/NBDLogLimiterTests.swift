import BlockIO
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import NBD

/// The server-wide rate limit on client-caused log lines.
@Suite struct NBDLogLimiterTests {
    /// Collects what is logged, in order.
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        var all: [String] { lines.withLock { $0 } }

        func logger() -> Logger {
            Logger(label: "test") { _ in Handler(lines: self) }
        }

        struct Handler: LogHandler {
            let lines: Lines
            var logLevel = Logger.Level.trace
            var metadata: Logger.Metadata = [:]
            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }
            func log(event: LogEvent) { lines.lines.withLock { $0.append("\(event.level) \(event.message)") } }
        }
    }

    /// A flood of 1000 lines of one kind costs the burst plus one summary with the count; another
    /// kind has its own bucket.
    @Test func floodIsCutToABurstAndASummary() async throws {
        let lines = Lines()
        let logger = lines.logger()
        let limiter = NBDLogLimiter(logger: logger, burst: 5, perSecond: 0.001, summaryDelay: .milliseconds(50))
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        for index in 0..<1000 {
            limiter.log(.protocolError, .warning, "bad \(index)", to: logger, scheduleOn: loop)
        }
        limiter.log(.refused, .warning, "refused", to: logger, scheduleOn: loop)
        var deadline = 600
        while lines.all.count < 7 && deadline > 0 {
            try await Task.sleep(for: .milliseconds(50))
            deadline -= 1
        }
        try await group.shutdownGracefully()
        let logged = lines.all
        #expect(logged.count == 7, "\(logged)")
        #expect(Array(logged.prefix(5)) == (0..<5).map { "warning bad \($0)" })
        #expect(logged.contains("warning refused"))
        #expect(logged.contains { $0.contains("suppressed 995 similar messages (protocol errors)") }, "\(logged)")
    }
}
