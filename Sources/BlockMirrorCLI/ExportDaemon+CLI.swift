import ArgumentParser
import BlockExport
import BlockIO
import Daemon
import Foundation
import Logging
import NBD

extension ExportDaemon {
    /// `run` for a verb: the NBD URIs and the final report go to standard output (which is then
    /// detached, for a daemon started in the background), a failure to one error line and exit
    /// status 1.
    static func serve<Export: BlockExport>(
        name: String, listen addresses: [ListenAddress], limits: NBDServerLimits, tls: NBDServerTLSPolicy? = nil,
        busyPoll: BusyPollOption, logger: Logger,
        control: Control<Export>? = nil, metrics: Metrics<Export>? = nil, open: (AIOEngine) async throws -> Export, report: (Export) -> String? = { _ in nil }
    ) async throws {
        let text: String?
        do {
            text = try await run(name: name, listen: addresses, limits: limits, tls: tls, busyPoll: busyPoll.amount, logger: logger, control: control, metrics: metrics,
                                 announce: { print($0) }, ready: {
                                     fflush(nil)
                                     SystemdNotifier.ready(status: "serving \(name)")
                                     Daemonizer.detachStandardOutput()
                                 }, open: open, report: report)
        } catch {
            throw exitWithError(error)
        }
        if let text { print(text) }
    }
}
