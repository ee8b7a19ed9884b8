import BlockExport
import BlockIO
import Logging
import Mirror
import MirrorModel
import NBD

/// What a mirror daemon is asked to run (`blockmirror build`'s settings), and the mirror-specific
/// parts of running it: opening the legs and the bitmap file, and the final report of a stop.
public struct MirrorDaemon: Sendable {
    /// Bytes per region when neither the settings nor a bitmap file say otherwise.
    public static let defaultRegionSize: UInt64 = 1 << 20

    public var name: String
    /// The source's absolute path or NBD URI (the bitmap file records it, and status shows it).
    public var source: String
    /// The target's absolute path or NBD URI; nil to start degraded.
    public var target: String?
    /// The write-intent bitmap file: created if absent, resumed from if present.
    public var bitmap: String?
    /// Bytes per region; nil: the bitmap file's, or `defaultRegionSize`.
    public var regionSize: UInt64?
    /// Compare the regions a resumed bitmap calls clean before trusting them.
    public var verifyClean: Bool
    public var limits: SpeedLimits
    /// Regions the background copy keeps in flight.
    public var copiesInFlight: Int
    /// Copy rates this mirror shares with others (a plan's total, its group's).
    public var budgets: [CopyBudget]
    /// How legs that are NBD URIs connect (this one's, and those `add` gives later).
    public var remote: NBDLeg.Options

    public init(name: String, source: String, target: String?, bitmap: String?, regionSize: UInt64?, verifyClean: Bool,
                limits: SpeedLimits, copiesInFlight: Int = MirrorExport.defaultCopiesInFlight, budgets: [CopyBudget] = [],
                remote: NBDLeg.Options = NBDLeg.Options()) {
        self.name = name
        self.source = source
        self.target = target
        self.bitmap = bitmap
        self.regionSize = regionSize
        self.verifyClean = verifyClean
        self.limits = limits
        self.copiesInFlight = copiesInFlight
        self.budgets = budgets
        self.remote = remote
    }

    /// Opens the source, the target (refused if it is the source by another path), and the bitmap
    /// file (its notes logged; resumed from if it holds a previous run), builds the mirror and
    /// attaches the target. The export asks its clients for requests the target can take (an NBD
    /// server's minimum block size). The mirror logs once when its recovery ends.
    /// After `complete` or `reverse`, the legs serve in the roles the bitmap file records
    /// (`openLegs`).
    public func open(aio: AIOEngine, logger: Logger) async throws -> MirrorExport {
        let (sourceDevice, targetDevice, size) = try await openLegs(aio: aio, logger: logger)
        var log: WriteIntentLog?
        var resumed: RegionBitmap?
        if let bitmap {
            let opened = try WriteIntentLog.openOrCreate(path: bitmap, source: sourceDevice.identity,
                                                         sourceTrace: sourceDevice.writeTrace(), deviceSize: size,
                                                         regionSize: regionSize, defaultRegionSize: Self.defaultRegionSize)
            for note in opened.notes { logger.warning("bitmap \(bitmap): \(note)") }
            if opened.resumed {
                logger.info("resuming from the bitmap", metadata: ["bitmap": "\(bitmap)", "dirty": "\(opened.bitmap.dirtyCount)"])
                resumed = opened.bitmap
            }
            log = opened.log
            try MirrorExport.checkGeometry(of: sourceDevice, regionSize: opened.log.regionSize)
        }
        let mirror = MirrorExport(source: sourceDevice, size: size, blockSize: targetDevice?.requiredAlignment ?? 1,
                                  regionSize: log?.regionSize ?? regionSize ?? Self.defaultRegionSize, copiesInFlight: copiesInFlight,
                                  limits: limits, budgets: budgets, pool: BufferPool(), logger: logger, intentLog: log, resuming: resumed)
        if let targetDevice { try await mirror.attach(target: targetDevice, verifyClean: verifyClean) }
        Task {
            let settled = await mirror.waitUntilSettled()
            switch settled.state {
            case .inSync: logger.notice("recovery complete: target in sync", metadata: ["copied": "\(settled.bytesCopied)"])
            case .targetFailed: logger.error("target failed: \(settled.failure ?? "")")
            default: break
            }
        }
        return mirror
    }

    /// Opens `path` (a file, a block device or an NBD URI) and attaches it to `mirror` as its
    /// target: the recovery starts. Returns the regions it will copy. Refuses the source under
    /// another name; a target it could not attach is closed again. `onlyIfInSync`: attached
    /// only if nothing is to be copied (`MirrorExport.attach`).
    public static func attachTarget(_ path: String, to mirror: MirrorExport, aio: AIOEngine, remote: NBDLeg.Options,
                                    onlyIfInSync: Bool = false, logger: Logger) async throws -> Int {
        try MirrorExport.refuseSource(path, of: mirror.source)
        let target = try await LegOpener.open(path, readOnly: false, aio: aio, remote: remote, logger: logger)
        do {
            return try await mirror.attach(target: target, onlyIfInSync: onlyIfInSync)
        } catch {
            target.close()
            throw error
        }
    }

    /// What a stopped mirror left: whether the target is a complete copy of the source, and if not
    /// why and how to resume (the answer to `stop`, and what the daemon prints).
    public func report(_ status: MirrorStatus) -> String {
        let resume = bitmap.map { " --bitmap \($0)" } ?? ""
        let source = status.source
        if status.target == nil, let retired = status.retired {
            return "\(name): completed at \(status.switched ?? "?"): \(source) holds every write; \(retired) holds what it held "
                + "then (to go back, add it as the target: only the regions written since are copied)"
                + (bitmap.map { "; restart with --source \(source) --bitmap \($0), or with this build's command line" } ?? "")
        }
        guard let target = status.target else {
            if let pending = status.pendingCopy {
                return "\(name): waiting: plan \(pending.plan) had not started its copy onto \(pending.target); \(source) holds every write "
                    + "(run `blockmirror migrate \(pending.planFile)` again to go on)"
            }
            return "\(name): degraded: no target attached; \(source) holds every write (add one with --target NEW\(resume))"
        }
        let warning = status.sourceProblem.map { "; warning: \($0)" } ?? ""
        if status.regionsDirty == 0 && status.failure == nil {
            return "\(name): in sync: \(target) is a complete copy of \(source)\(warning)"
        }
        let why = status.failure.map { " (target failed: \($0))" } ?? ""
        let found = status.lastCheck.flatMap { check in
            check.regionsMarkedDirty > 0 ? "; the last check found \(check.mismatchedSectors) mismatched sectors" : nil
        } ?? ""
        return "\(name): not in sync\(why): \(target) is incomplete (\(status.regionsDirty) of \(status.regionsTotal) regions to copy\(found))"
            + (bitmap == nil ? "" : "; restart with --source \(source) --target \(target)\(resume) to resume") + warning
    }
}
