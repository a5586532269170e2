import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A program running inside one lab host (started by ``NATLab/spawn(_:_:environment:)``).
///
/// Standard output and standard error go to two files that can be read while the program runs
/// (``standardOutput``, ``waitForOutput(containing:timeout:)``). Standard input is `/dev/null`.
/// When the last reference goes away, a program still running is killed and its output files are removed.
public final class LabProcess: @unchecked Sendable {
    /// The host the program runs in.
    public let host: LabHost
    /// The program and its arguments, as given to `spawn`.
    public let arguments: [String]
    /// The program's pid. `ip netns exec` execs the program, so this is the program itself: signal it directly.
    public let pid: Int32
    /// The file that collects standard output.
    public var standardOutputURL: URL { files.stdoutURL }
    /// The file that collects standard error.
    public var standardErrorURL: URL { files.stderrURL }

    private let process: Process
    private let files: OutputFiles
    private let latch: ExitLatch

    init(host: LabHost, namespace: String, arguments: [String], environment: [String: String]) throws {
        let ip = try LabShell.ip()
        let files = try OutputFiles(
            tag: "\(namespace)-\(arguments.first.map { ($0 as NSString).lastPathComponent } ?? "")"
        )
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ip)
        process.arguments = ["netns", "exec", namespace] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try files.stdoutWriter()
        process.standardError = try files.stderrWriter()
        let latch = ExitLatch()
        process.terminationHandler = { latch.finish(status: $0.shellStatus) }
        do {
            try process.run()
        } catch {
            files.remove()
            throw LabError(
                .launchFailed,
                "cannot start `\(LabShell.quoted(arguments))` in \(namespace): \(error)",
                command: arguments
            )
        }
        self.host = host
        self.arguments = arguments
        self.pid = process.processIdentifier
        self.process = process
        self.files = files
        self.latch = latch
    }

    deinit {
        if latch.current == nil {
            posixKill(pid, SIGKILL)
            _ = latch.wait(timeout: .seconds(2))
        }
        files.remove()
    }

    /// True until the program has exited.
    public var isRunning: Bool { latch.current == nil }

    /// The exit status once the program has exited (128 + signal if a signal ended it), nil while it runs.
    public var exitStatus: Int32? { latch.current }

    /// What the program has written to standard output so far.
    public var standardOutput: String { files.readStdout() }

    /// What the program has written to standard error so far.
    public var standardError: String { files.readStderr() }

    /// Sends SIGTERM.
    public func terminate() { kill(SIGTERM) }

    /// Sends `signal` (SIGKILL unless told) to the program, if it still runs.
    public func kill(_ signal: Int32 = SIGKILL) {
        guard isRunning else { return }
        posixKill(pid, signal)
    }

    /// Waits up to `timeout` for the program to exit; returns its exit status, or nil if it still runs.
    @discardableResult
    public func waitUntilExit(timeout: Duration) -> Int32? {
        latch.wait(timeout: timeout)
    }

    /// Waits until standard output contains `text` (true), or until `timeout` passes or the program exits
    /// without printing it (false). Polls the output file every 10 ms.
    public func waitForOutput(containing text: String, timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if standardOutput.contains(text) { return true }
            if !isRunning { return standardOutput.contains(text) }
            if ContinuousClock.now >= deadline { return false }
            usleep(10_000)
        }
    }
}

/// The C `kill(2)`, under a name that a method called `kill` does not hide.
func posixKill(_ pid: Int32, _ signal: Int32) {
    _ = kill(pid, signal)
}
