import Foundation

/// Runs `mdadm` and says, in one line, what failed.
public struct MDAdm: Sendable {
    /// What a run printed.
    public struct Output: Sendable {
        public var stdout: String
        public var stderr: String
    }

    /// The mdadm executable.
    public let path: String

    /// `mdadm` from `$MDADM`, else the first of /sbin, /usr/sbin, /usr/bin, /bin that exists.
    public init() throws(MDError) {
        if let configured = ProcessInfo.processInfo.environment["MDADM"], !configured.isEmpty {
            path = configured
            return
        }
        for directory in ["/sbin", "/usr/sbin", "/usr/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: directory + "/mdadm") {
            path = directory + "/mdadm"
            return
        }
        throw MDError("mdadm not found (install the mdadm package, or set MDADM)")
    }

    /// Runs `mdadm ARGUMENTS`; a non-zero status is an error quoting mdadm's own message.
    @discardableResult
    public func run(_ arguments: [String]) throws(MDError) -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["MDADM_NO_UDEV"] = environment["MDADM_NO_UDEV"] ?? (FileManager.default.fileExists(atPath: "/run/udev/control") ? nil : "1")
        process.environment = environment
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch { throw MDError("cannot run \(path): \(error.localizedDescription)") }
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let message = (stderr + stdout).split(separator: "\n").last.map(String.init) ?? "exit status \(process.terminationStatus)"
            throw MDError("mdadm \(arguments.joined(separator: " ")) failed: \(message)")
        }
        return Output(stdout: stdout, stderr: stderr)
    }
}

/// An md-backend failure, described for people.
public struct MDError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
