import Logging

/// A log handler that renders every line at every level, as a real one would, and stops the run
/// (`fuzzCheck`) when a line could forge or flood the log (`SafeText`). Nothing is printed.
public struct CheckingLogHandler: LogHandler {
    public var logLevel: Logger.Level = .trace
    public var metadata: Logger.Metadata = [:]

    public init() {}

    /// A logger that checks its lines this way.
    public static func logger(label: String = "fuzz") -> Logger {
        Logger(label: label) { _ in CheckingLogHandler() }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let text = "\(event.message)"
        fuzzCheck(SafeText.problem(in: text) == nil,
                  "log line \(SafeText.problem(in: text) ?? ""): \(String(reflecting: String(text.prefix(300))))")
        // The handler's metadata and the line's, each checked as a real handler would render it.
        for (key, value) in metadata { check(key, value) }
        for (key, value) in event.metadata ?? [:] { check(key, value) }
    }

    private func check(_ key: String, _ value: Logger.MetadataValue) {
        let rendered = "\(value)"
        if let problem = SafeText.problem(in: rendered) {
            fuzzFail("log metadata \(key) \(problem): \(String(reflecting: String(rendered.prefix(300))))")
        }
    }
}
