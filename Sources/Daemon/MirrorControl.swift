import BlockIO
import Control
import Logging
import Mirror
import NBD

/// How a mirror daemon answers control requests other than `stop`.
public enum MirrorControl {
    /// `remote`: how a target given as an NBD URI connects.
    public static func answer(_ request: ControlRequest, name: String, mirror: MirrorExport, aio: AIOEngine,
                              remote: NBDLeg.Options = NBDLeg.Options(), logger: Logger) async -> ControlResponse {
        switch request.verb {
        case .status:
            return ControlResponse(ok: true, name: name, status: mirror.status)
        case .add:
            guard let path = request.target, !path.isEmpty else { return .failure(name, "add: no target given") }
            let regions: Int
            do {
                regions = try await MirrorDaemon.attachTarget(path, to: mirror, aio: aio, remote: remote, logger: logger)
            } catch {
                // The path came from a client: escaped wherever it appears.
                return .failure(name, UntrustedText.escape("cannot add \(path): \(error)", limit: 2048))
            }
            let status = mirror.status
            return ControlResponse(ok: true, name: name, message: "added \(UntrustedText.escape(path)): recovery started (\(regions) of \(status.regionsTotal) regions to copy)",
                                   status: status)
        case .speed:
            var limits = mirror.status.speedLimits
            if let minimum = request.speedMin { limits.minimum = minimum }
            if let maximum = request.speedMax { limits.maximum = maximum == 0 ? nil : maximum }
            if let maximum = limits.maximum, maximum < limits.minimum {
                return .failure(name, "speed max \(maximum)K/sec would be below speed min \(limits.minimum)K/sec")
            }
            mirror.setSpeedLimits(limits)
            return ControlResponse(ok: true, name: name, message: "speed limits: min \(limits.minimum)K/sec, max "
                                   + (limits.maximum.map { "\($0)K/sec" } ?? "unlimited"), status: mirror.status)
        case .check:
            do {
                let report = try await mirror.check(repair: request.repair ?? false)
                return ControlResponse(ok: true, name: name, status: mirror.status, check: report)
            } catch {
                return .failure(name, "cannot check: \(error)")
            }
        case .fail:
            do { try mirror.failTarget() } catch { return .failure(name, "cannot fail the target: \(error)") }
            return ControlResponse(ok: true, name: name, message: "marked \(mirror.status.target ?? "the target") faulty", status: mirror.status)
        case .remove:
            do {
                let removed = try await mirror.removeTarget()
                return ControlResponse(ok: true, name: name, message: "removed \(removed)", status: mirror.status)
            } catch {
                return .failure(name, "cannot remove the target: \(error)")
            }
        case .complete, .reverse:
            do {
                let switched = request.verb == .complete ? try await mirror.complete(keepOld: request.keepOld ?? false)
                                                         : try await mirror.reverse()
                let message = switched.retired.map { "\(switched.source) serves alone; \($0) is retired and holds what it held now" }
                    ?? "\(switched.source) serves, \(switched.target ?? "") is its target"
                return ControlResponse(ok: true, name: name, message: message, status: mirror.status)
            } catch {
                return .failure(name, "cannot \(request.verb.rawValue): \(error)")
            }
        case .stop:
            return .failure(name, "stop is handled by the daemon")
        }
    }
}
