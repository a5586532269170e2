import Logging

/// Logs dropped bad input without letting a flood flood the log: the first few drops of each second are logged
/// in full, the rest are counted and summarized once per second.
final class BadInputLog {
    private let logger: Logger
    private let port: String
    private var loggedThisSecond = 0
    private var suppressed = 0
    private var windowStart = ContinuousClock.now
    /// Total drops since start, for tests and status.
    private(set) var total = 0

    static let detailedPerSecond = 5

    init(logger: Logger, port: String) {
        self.logger = logger
        self.port = port
    }

    func drop(_ reason: String) {
        total += 1
        flush()
        if loggedThisSecond < Self.detailedPerSecond {
            loggedThisSecond += 1
            logger.warning("dropped bad input on \(port) port: \(reason)")
        } else {
            suppressed += 1
        }
    }

    /// Ends the current one-second window if it is over, summarizing what it suppressed.
    func flush() {
        let now = ContinuousClock.now
        guard now - windowStart >= .seconds(1) else { return }
        if suppressed > 0 {
            logger.warning("dropped \(suppressed) more bad inputs on \(port) port in the last second")
        }
        windowStart = now
        loggedThisSecond = 0
        suppressed = 0
    }
}
