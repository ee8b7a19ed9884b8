import BlockIO

/// A control-socket failure, described for people.
public struct ControlError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    /// The mirror is not running: no control socket, or a stale one of a dead daemon.
    public let notRunning: Bool
    /// The daemon did not answer within the timeout.
    public let timedOut: Bool
    public init(_ description: String, notRunning: Bool = false, timedOut: Bool = false) {
        self.description = description
        self.notRunning = notRunning
        self.timedOut = timedOut
    }
}

extension Errno {
    /// The C library's message in lower case, to follow a colon in an error ("permission denied").
    var phrase: String { description.lowercased() }
}
