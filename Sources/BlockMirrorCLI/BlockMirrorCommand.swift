import ArgumentParser

/// The `blockmirror` command: mdadm-like verbs over the mirror engine and its NBD exports.
public struct BlockMirrorCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "blockmirror",
        abstract: "A userspace block mirror: live migration of block devices over NBD.",
        discussion: """
            Exit status: 0 success; 1 a runtime error (a device missing, in use, unreadable; \
            a socket in use; no such mirror); 3 check found mismatches; 64 a usage error.
            """,
        version: "0.1.0",
        subcommands: [BuildCommand.self, MigrateCommand.self, AddCommand.self, FailCommand.self, RemoveCommand.self, StatusCommand.self,
                      DetailCommand.self, ListCommand.self, WaitCommand.self, CheckCommand.self, SpeedCommand.self, CompleteCommand.self,
                      ReverseCommand.self, StopCommand.self,
                      VerifyCommand.self, ExamineCommand.self, ServeCommand.self])

    public init() {}
}

/// Options every long-running verb shares.
struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: LogLevelArgument = .init(.info)
}
