import FoundationEssentials
import Glibc

/// An error from the NAT lab: what went wrong, in words a person can act on.
///
/// When a command failed, ``command``, ``status`` and ``standardError`` say which one, how it ended and what it said.
public struct LabError: Error, Sendable, CustomStringConvertible, LocalizedError {
    /// The kind of failure, for code that wants to react to one kind.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case notRoot, invalidPrefix, invalidConfig, toolMissing
            case commandFailed, launchFailed, noSuchNamespace, stateFile, functionLimits
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The lab needs root: network namespaces, veth pairs and iptables.
        public static let notRoot = Code(.notRoot)
        /// The namespace prefix is empty, too long or has characters other than `[a-z0-9]`.
        public static let invalidPrefix = Code(.invalidPrefix)
        /// A ``LabConfig`` value is out of range.
        public static let invalidConfig = Code(.invalidConfig)
        /// `ip`, `iptables`, `sysctl` or (for a delay) `python3` is not installed.
        public static let toolMissing = Code(.toolMissing)
        /// A command ran and exited with a non-zero status.
        public static let commandFailed = Code(.commandFailed)
        /// A command could not be started at all.
        public static let launchFailed = Code(.launchFailed)
        /// The host's namespace does not exist (no lab up, or not that many functions).
        public static let noSuchNamespace = Code(.noSuchNamespace)
        /// The state file could not be read or written.
        public static let stateFile = Code(.stateFile)
        /// A function host's limits could not be set up (no cgroup v1, a cgroup refused a value).
        public static let functionLimits = Code(.functionLimits)

        public var description: String { String(describing: base) }
    }

    /// The kind of failure.
    public var code: Code
    /// A sentence that says what went wrong (and, for a failed command, which one and what it printed).
    public var message: String
    /// The failed command's arguments, when a command failed.
    public var command: [String]?
    /// The failed command's exit status (128 + signal when a signal ended it), when a command failed.
    public var status: Int32?
    /// What the failed command wrote to standard error, when a command failed.
    public var standardError: String?

    public init(
        _ code: Code,
        _ message: String,
        command: [String]? = nil,
        status: Int32? = nil,
        standardError: String? = nil
    ) {
        self.code = code
        self.message = message
        self.command = command
        self.status = status
        self.standardError = standardError
    }

    public var description: String { message }
    public var errorDescription: String? { message }

    /// The error for "this needs root".
    static let notRootError = LabError(.notRoot, "the lab needs root (network namespaces, iptables)")

    /// The same error with `context` put in front of its message.
    func adding(context: String) -> LabError {
        var copy = self
        copy.message = "\(context): \(message)"
        return copy
    }
}
