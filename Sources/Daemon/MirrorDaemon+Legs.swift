import BlockIO
import Logging
import Mirror

extension MirrorDaemon {
    /// Opens the legs in the roles they serve, and the size the mirror exports.
    ///
    /// As given — `source` serves, `target` (if any) is its target, the source's size — unless the
    /// bitmap file records a role switch (`complete`, `reverse`). Then the leg the record names as
    /// the source serves, at the mirror's recorded size, whichever of `--source` and `--target`
    /// it was given as; a restart after the switch never serves the old source again. Given as
    /// `--target` (the build's own command line, as systemd reruns it): the `--source` leg is its
    /// target only if the record says so (`--keep-old`, `reverse`); a retired one is not opened
    /// at all (it may be gone: that is what a migration is for), and a leg the record names in
    /// neither role is not used, and the log says so.
    func openLegs(aio: AIOEngine, logger: Logger) async throws -> (source: any Leg, target: (any Leg)?, size: UInt64) {
        func open(_ path: String) async throws -> any Leg {
            try await LegOpener.open(path, readOnly: false, aio: aio, remote: remote, logger: logger)
        }
        let regions = regionSize ?? Self.defaultRegionSize
        // An absent or unreadable file records no switch; opening it later says what is wrong with it.
        let header = bitmap.flatMap { try? WriteIntentLog.examine(path: $0).header }
        if let header, let switched = header.record.switched, let target {
            let serving = try await open(target)
            if serving.identity.differences(from: header.record.source.identity).isEmpty {
                try MirrorExport.checkGeometry(of: serving, regionSize: regions)
                let kept = try await switchedTarget(header.record, serving: serving, open: open, logger: logger)
                let roles = "the roles switched at \(switched): \(serving.path) serves" + (kept.map { ", \($0.path) is its target" } ?? "")
                logger.notice("bitmap \(bitmap ?? ""): \(roles)")
                return (serving, kept, header.deviceSize)
            }
            serving.close()
        }
        let sourceDevice = try await open(source)
        // Before any bitmap is made of it: a source too large for one, or off its own block size.
        try MirrorExport.checkGeometry(of: sourceDevice, regionSize: regions)
        if let target { try MirrorExport.refuseSource(target, of: sourceDevice) }
        let targetDevice = try await target.asyncMap(open)
        // The leg a switch made the source may be larger than the mirror it serves.
        var size = sourceDevice.size
        if let header, header.record.switched != nil, sourceDevice.size > header.deviceSize,
           sourceDevice.identity.differences(from: header.record.source.identity).isEmpty {
            size = header.deviceSize
        }
        return (sourceDevice, targetDevice, size)
    }

    /// After a switch onto the leg given as `--target`: the `--source` leg, opened, if the record
    /// names it as the target; nil (and a log line saying why) otherwise.
    private func switchedTarget(_ record: BitmapFileFormat.Record, serving: any Leg, open: (String) async throws -> any Leg,
                                logger: Logger) async throws -> (any Leg)? {
        guard let recordedTarget = record.target else {
            let retired = record.retired?.identity.path
            let why = retired == source ? "\(source) was retired by complete and is left alone (to go back: blockmirror add NAME \(source))"
                : "\(source) is not a leg this bitmap records (the retired one is \(retired ?? "none")): it is not used"
            logger.notice("\(why)")
            return nil
        }
        try MirrorExport.refuseSource(source, of: serving)
        let old = try await open(source)
        guard old.identity.differences(from: recordedTarget.identity).isEmpty else {
            old.close()
            logger.warning("\(source) is not the target the bitmap records (\(recordedTarget.identity.summary)): it is not used; add the target with blockmirror add")
            return nil
        }
        return old
    }
}

extension Optional {
    /// `map` with an async throwing transform.
    fileprivate func asyncMap<U>(_ transform: (Wrapped) async throws -> U) async rethrows -> U? {
        guard let self else { return nil }
        return try await transform(self)
    }
}
