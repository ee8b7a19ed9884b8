import ArgumentParser
import Foundation

/// A runtime failure described for people; the message names the device, path or address.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prints one line `blockmirror: error: …` to standard error and exits with status 1.
///
/// Every runtime failure goes through here, so users and scripts see the same shape: what failed
/// and where (the device and offset come from the error's own description).
func exitWithError(_ error: any Error) -> ExitCode {
    let text = "blockmirror: error: \(error)\n"
    FileHandle.standardError.write(Data(text.utf8))
    return ExitCode(1)
}
