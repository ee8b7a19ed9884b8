/// What every connection of one server shares: the exports, the limits, and the server-wide
/// accounting of connections, memory and log lines.
struct NBDConnectionEnvironment: Sendable {
    let registry: NBDExportRegistry
    let limits: NBDServerLimits
    let tracker: NBDConnectionTracker
    let budget: NBDPayloadBudget
    let logLimiter: NBDLogLimiter
    /// nil: no TLS (STARTTLS is refused as unsupported).
    var tls: NBDServerTLSPolicy? = nil

    var timeouts: NBDConnectionTimeouts { NBDConnectionTimeouts(limits) }
}
