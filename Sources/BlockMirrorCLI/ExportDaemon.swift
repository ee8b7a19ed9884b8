import BlockExport
import BlockIO
import Foundation
import Logging
import NBD
import NIOCore
import NIOPosix

/// What every serving verb does around its export: set up libaio on the event loops, open the
/// export, listen and print the NBD URIs, serve until SIGINT/SIGTERM, then answer the requests in
/// flight, close the export (which makes it durable) and tear everything down.
enum ExportDaemon {
    /// Runs the daemon. `open` opens the devices and builds the export; `stopped` runs after the
    /// export closed cleanly (to report what state it was left in). Errors exit with status 1.
    static func run<Export: BlockExport>(
        name: String, listen addresses: [ListenAddress], logger: Logger,
        open: (AIOEngine) throws -> Export, stopped: (Export) -> Void = { _ in }
    ) async throws {
        let aio: AIOEngine
        do { aio = try AIOEngine(depth: 512) } catch {
            throw exitWithError(CLIError("cannot set up libaio: \(error) (see /proc/sys/fs/aio-max-nr)"))
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        func tearDown() async {
            aio.shutdown()
            try? await group.shutdownGracefully()
        }
        let export: Export
        do {
            try await aio.bind(to: group)
            export = try open(aio)
        } catch {
            await tearDown()
            throw exitWithError(error)
        }
        let server = NBDServer(registry: NBDExportRegistry([(name, export)]), group: group, logger: logger)
        do {
            for address in addresses {
                let bound = try await server.listen(on: address)
                print(bound.uri(exportName: name))
            }
            fflush(nil)
        } catch {
            await server.shutdown()
            try? await export.close()
            await tearDown()
            throw exitWithError(error)
        }

        let signal = await SignalWaiter().wait()
        logger.info("stopping", metadata: ["signal": "\(signal)"])
        await server.shutdown()
        var failure: (any Error)?
        do { try await export.close() } catch { failure = error }
        await tearDown()
        if let failure { throw exitWithError(failure) }
        stopped(export)
        logger.info("stopped")
    }
}
