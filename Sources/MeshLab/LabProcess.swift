import ChildProcess
import FoundationEssentials

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
    /// The program's pid. `ip netns exec` (and a function host's launcher) execs the program, so this is the program
    /// itself: signal it directly.
    public let pid: Int32
    /// The file that collects standard output.
    public var standardOutputURL: URL { files.stdoutURL }
    /// The file that collects standard error.
    public var standardErrorURL: URL { files.stderrURL }

    private let child: ChildProcess
    private let files: OutputFiles

    /// Starts `command`, which runs `arguments` in `host` (``NATLab/netnsExec(_:_:)``).
    init(host: LabHost, namespace: String, command: [String], arguments: [String], environment: [String: String]) throws {
        let files = try OutputFiles(
            tag: "\(namespace)-\(arguments.first.flatMap { $0.split(separator: "/").last.map(String.init) } ?? "")"
        )
        do throws(SpawnError) {
            child = try ChildProcess(
                command,
                environment: ProcessInfo.processInfo.environment.merging(environment) { _, new in new },
                standardInput: .null,
                standardOutput: .file(files.stdoutURL.path),
                standardError: .file(files.stderrURL.path)
            )
        } catch {
            files.remove()
            throw LabError(
                .launchFailed,
                "cannot start `\(LabShell.quoted(arguments))` in \(namespace): \(error.reason)",
                command: arguments
            )
        }
        self.host = host
        self.arguments = arguments
        self.pid = child.pid
        self.files = files
    }

    deinit {
        if child.send(SIGKILL) {
            _ = child.wait(timeout: .seconds(2))
        }
        files.remove()
    }

    /// True until the program has exited.
    public var isRunning: Bool { child.isRunning }

    /// The exit status once the program has exited (128 + signal if a signal ended it), nil while it runs.
    public var exitStatus: Int32? { child.status }

    /// What the program has written to standard output so far.
    public var standardOutput: String { files.readStdout() }

    /// What the program has written to standard error so far.
    public var standardError: String { files.readStderr() }

    /// Sends SIGTERM.
    public func terminate() { kill(SIGTERM) }

    /// Sends `signal` (SIGKILL unless told) to the program, if it still runs.
    public func kill(_ signal: Int32 = SIGKILL) {
        child.send(signal)
    }

    /// Waits up to `timeout` for the program to exit; returns its exit status, or nil if it still runs.
    @discardableResult
    public func waitUntilExit(timeout: Duration) -> Int32? {
        child.wait(timeout: timeout)
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

/// Two temporary files that collect a child's standard output and standard error; readable while it runs.
struct OutputFiles: Sendable {
    let stdoutURL: URL
    let stderrURL: URL

    init(tag: String, directory: URL = FileManager.default.temporaryDirectory) throws {
        let safeTag = String(tag.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" })
        let base = "boxer-mesh-lab-\(safeTag)-\(UUID().uuidString.prefix(8))"
        stdoutURL = directory.appendingPathComponent(base + ".out")
        stderrURL = directory.appendingPathComponent(base + ".err")
        for url in [stdoutURL, stderrURL] {
            guard FileManager.default.createFile(atPath: url.path, contents: nil) else {
                throw LabError(.launchFailed, "cannot create output file \(url.path)")
            }
        }
    }

    func readStdout() -> String { Self.read(stdoutURL) }
    func readStderr() -> String { Self.read(stderrURL) }

    func remove() {
        try? FileManager.default.removeItem(at: stdoutURL)
        try? FileManager.default.removeItem(at: stderrURL)
    }

    private static func read(_ url: URL) -> String {
        guard let data = FileManager.default.contents(atPath: url.path) else { return "" }
        return String(decoding: data, as: UTF8.self)
    }
}

/// The C `kill(2)`, under a name that a method called `kill` does not hide.
func posixKill(_ pid: Int32, _ signal: Int32) {
    _ = kill(pid, signal)
}
