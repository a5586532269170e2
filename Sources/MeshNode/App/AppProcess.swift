import ChildProcess
import FoundationEssentials
import Glibc

/// The app a node runs: a ``ChildProcess`` (posix_spawnp, reaped on a thread of its own) with the node's signals
/// reset.
public final class AppProcess: Sendable {
    /// The app's process id.
    public let pid: pid_t
    private let child: ChildProcess

    /// Starts `arguments[0]` (looked up in PATH) with `environment`, inheriting standard input, and output unless
    /// `output` says where it goes.
    /// Signals the node ignores or relays (``SignalRelay``) are reset to their defaults in the app, with nothing
    /// blocked: an ignored disposition would otherwise survive exec and the app could not be interrupted.
    public init(arguments: [String], environment: [String: String], output: AppOutput? = nil) throws(LaunchError) {
        do throws(SpawnError) {
            child = try ChildProcess(
                arguments,
                environment: environment,
                standardOutput: output.map { .descriptor($0.standardOutput) } ?? .inherit,
                standardError: output.map { .descriptor($0.standardError) } ?? .inherit,
                resettingSignals: SignalRelay.relayed + [SIGPIPE]
            )
        } catch {
            throw LaunchError(program: error.program, code: error.code)
        }
        pid = child.pid
    }

    /// Sends `signal` to the app.
    public func send(_ signal: Int32) {
        child.send(signal)
    }

    /// Waits for the app to end; returns its exit status the way a shell reports it (128+N for signal N).
    public func waitForExit() async -> Int32 {
        await child.exitStatus()
    }
}

/// Where an app's standard output and error go: descriptors of the node's process, duplicated into the app (the
/// caller keeps and closes its own).
public struct AppOutput: Sendable {
    public var standardOutput: Int32
    public var standardError: Int32

    public init(standardOutput: Int32, standardError: Int32) {
        self.standardOutput = standardOutput
        self.standardError = standardError
    }
}

/// The app could not be started.
public struct LaunchError: Error, CustomStringConvertible, Sendable {
    /// The program as given; empty when the command was empty.
    public var program: String
    /// The errno that says why (`ENOENT`, `EACCES`, …).
    public var code: Int32

    public var description: String {
        program.isEmpty ? "no command given" : "cannot run '\(program)': \(String(cString: strerror(code)))"
    }

    /// The status a shell uses for this failure: 127 not found, 126 not executable.
    public var exitStatus: Int32 { code == ENOENT ? 127 : 126 }
}
