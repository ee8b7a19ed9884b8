import ArgumentParser
import BlockIO
import Control
import Daemon
import Foundation
import Logging
import Mirror

/// `blockmirror verify LEG1 LEG2`: compares two legs of a mirror (a kernel md array's devices, or
/// images of them) region by region, with the report `check` gives, so a user can confirm what md
/// claims. Read-only.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Compare two legs of a mirror (devices or images) region by region, like check (mismatch_cnt in sectors).",
        discussion: """
            Both are opened read-only. Use --offset to skip a metadata area at the start of both legs \
            (md's data offset with superblock 1.2), --size to compare the array's size only.
            Exit status: 0 identical; 3 mismatches found; 1 a leg could not be read.
            """)

    @Argument(help: "The first leg: a device, an image or an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH).")
    var first: String
    @Argument(help: "The second leg, likewise.") var second: String
    @Option(name: .long, help: "Bytes to skip at the start of both legs.") var offset: ByteSize = ByteSize(bytes: 0)
    @Option(name: .long, help: "Bytes to compare (default: all of the smaller leg after --offset).") var size: ByteSize?
    @Option(name: .long, help: "Bytes compared per step (a power of two, 4K to 32M).") var regionSize: ByteSize = ByteSize(bytes: 1 << 20)
    @Flag(name: .long, help: "Print the report as JSON.") var json = false
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        let region = regionSize.bytes
        guard region >= 4096, region <= 32 << 20, region & (region - 1) == 0 else {
            throw ValidationError("--region-size must be a power of two from 4K to 32M (got \(region) bytes)")
        }
        guard offset.bytes % 4096 == 0 else { throw ValidationError("--offset must be a multiple of 4096 (got \(offset.bytes))") }
    }

    func run() async throws {
        let logger = makeLogger(label: "blockmirror.verify", level: logging.logLevel.level)
        let aio: AIOEngine
        do { aio = try AIOEngine(depth: 64) } catch { throw exitWithError(CLIError("cannot set up libaio: \(error)")) }
        defer { aio.shutdown() }
        let legs: (any Leg, any Leg)
        do {
            legs = (try await LegOpener.open(legName(first), readOnly: true, aio: aio, logger: logger),
                    try await LegOpener.open(legName(second), readOnly: true, aio: aio, logger: logger))
        } catch {
            throw exitWithError(error)
        }
        defer { legs.0.close(); legs.1.close() }
        let smaller = min(legs.0.size, legs.1.size)
        guard offset.bytes < smaller else {
            throw exitWithError(CLIError("--offset \(offset.bytes) is past the end of the smaller leg (\(smaller) bytes)"))
        }
        let length = size?.bytes ?? (smaller - offset.bytes)
        guard offset.bytes + length <= smaller else {
            throw exitWithError(CLIError("--size \(length) from offset \(offset.bytes) is past the end of the smaller leg (\(smaller) bytes)"))
        }
        if legs.0.size != legs.1.size && size == nil {
            FileHandle.standardError.write(Data("blockmirror: note: the legs differ in size (\(first): \(legs.0.size) bytes, \(second): \(legs.1.size) bytes); comparing the first \(length) bytes after the offset\n".utf8))
        }
        let report = await LegComparison.verify(legs.0, legs.1, offset: offset.bytes, length: length,
                                                regionSize: regionSize.bytes, pool: BufferPool())
        if json {
            print(String(decoding: ControlCodec.encode(report).dropLast(), as: UTF8.self))
        } else {
            print("verify \(first) \(second): " + (report.interrupted.map { "interrupted: \($0): " } ?? "")
                  + "mismatch_cnt=\(report.mismatchedSectors) (\(report.regionsChecked) of \(report.regionsTotal) regions of "
                  + "\(regionSize.bytes / 1024)K compared, \(length) bytes from offset \(offset.bytes))")
            for mismatch in report.mismatches { print("  mismatch at offset \(mismatch.offset), \(mismatch.length) bytes") }
        }
        if let why = report.interrupted { throw exitWithError(CLIError("verify interrupted: \(why)")) }
        if report.mismatchedSectors > 0 { throw ExitCode(3) }
    }
}
