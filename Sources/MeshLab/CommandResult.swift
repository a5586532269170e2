import FoundationEssentials
import Glibc
import PlainText

/// How a finished command ended and what it printed.
public struct CommandResult: Sendable, CustomStringConvertible {
    /// The command's arguments, the program first.
    public var command: [String]
    /// The exit status; 128 + signal number when a signal ended the command (as shells report it).
    public var status: Int32
    /// Everything the command wrote to standard output.
    public var standardOutput: String
    /// Everything the command wrote to standard error.
    public var standardError: String
    /// True when the command ran past its time limit and was killed.
    public var timedOut: Bool

    public init(command: [String], status: Int32, standardOutput: String, standardError: String, timedOut: Bool) {
        self.command = command
        self.status = status
        self.standardOutput = standardOutput
        self.standardError = standardError
        self.timedOut = timedOut
    }

    /// True when the command exited with status 0 within its time limit.
    public var succeeded: Bool { status == 0 && !timedOut }

    /// Returns `self` if the command succeeded, otherwise throws a ``LabError`` that names the command,
    /// its exit status and its standard error.
    @discardableResult
    public func check() throws -> CommandResult {
        guard !succeeded else { return self }
        let why = timedOut ? "timed out and was killed" : "exited with status \(status)"
        let stderr = standardError.trimmingWhitespace()
        var message = "command `\(LabShell.quoted(command))` \(why)"
        if !stderr.isEmpty { message += ": \(stderr)" }
        throw LabError(.commandFailed, message, command: command, status: status, standardError: standardError)
    }

    public var description: String {
        "`\(LabShell.quoted(command))` → status \(status)\(timedOut ? " (timed out)" : "")"
    }
}
