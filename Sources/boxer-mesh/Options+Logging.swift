import ArgumentParser
import Logging

/// `--log-level`, shared by every command. Logs go to standard error so standard output stays scriptable.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .notice

    /// Sets up swift-log once per process and returns a logger for `label`.
    func makeLogger(_ label: String) -> Logger {
        _ = LoggingOptions.bootstrap
        var logger = Logger(label: label)
        logger.logLevel = logLevel
        return logger
    }

    /// Runs once, on first use: swift-log may be bootstrapped only once per process.
    private static let bootstrap: Void = LoggingSystem.bootstrap(StreamLogHandler.standardError)
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
