import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one place the lab runs commands (Foundation `Process`); finds `ip`, `iptables`, `sysctl` and `python3`.
enum LabShell {
    /// Runs `arguments` (absolute program path first), waits for it, and captures its output.
    ///
    /// Output goes to temporary files rather than pipes, so a chatty command can never block on a full pipe and a
    /// child that inherits the descriptor cannot hold the read open. Throws only when the program cannot be started;
    /// a non-zero exit is reported in the result (see ``CommandResult/check()``).
    static func run(_ arguments: [String], timeout: Duration? = nil, input: String? = nil) throws -> CommandResult {
        guard let program = arguments.first else { throw LabError(.launchFailed, "an empty command cannot run") }
        let files = try OutputFiles(tag: "cmd")
        defer { files.remove() }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = Array(arguments.dropFirst())
        process.standardOutput = try files.stdoutWriter()
        process.standardError = try files.stderrWriter()

        var inputPipe: Pipe?
        if input != nil {
            let pipe = Pipe()
            process.standardInput = pipe
            inputPipe = pipe
        } else {
            process.standardInput = FileHandle.nullDevice
        }

        let latch = ExitLatch()
        process.terminationHandler = { latch.finish(status: $0.shellStatus) }
        do {
            try process.run()
        } catch {
            throw LabError(.launchFailed, "cannot start `\(quoted(arguments))`: \(error)", command: arguments)
        }
        if let input, let inputPipe {
            inputPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inputPipe.fileHandleForWriting.close()
        }

        var timedOut = false
        var status: Int32
        if let timeout, let finished = latch.wait(timeout: timeout) {
            status = finished
        } else if timeout == nil {
            status = latch.wait()
        } else {
            timedOut = true
            _ = kill(process.processIdentifier, SIGKILL)
            status = latch.wait()
        }
        return CommandResult(
            command: arguments,
            status: status,
            standardOutput: files.readStdout(),
            standardError: files.readStderr(),
            timedOut: timedOut
        )
    }

    /// Runs `arguments` and throws a ``LabError`` naming the command, its status and stderr unless it exits 0.
    @discardableResult
    static func check(_ arguments: [String], timeout: Duration? = nil) throws -> CommandResult {
        try run(arguments, timeout: timeout).check()
    }

    /// `arguments` as one line a person could paste into a shell.
    static func quoted(_ arguments: [String]) -> String {
        arguments.map { arg in
            let plain = !arg.isEmpty && arg.allSatisfy { $0.isLetter || $0.isNumber || "-_./:=,+@%".contains($0) }
            return plain ? arg : "'" + arg.replacingOccurrences(of: "'", with: "'\\''") + "'"
        }.joined(separator: " ")
    }

    // MARK: Tools

    /// Absolute path of `name`, searched in the sbin folders first (tests often run with a PATH without them).
    static func tool(_ name: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let folders = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] + path.split(separator: ":").map(String.init)
        for folder in folders where !folder.isEmpty {
            let candidate = folder + "/" + name
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        let package =
            ["ip": "iproute2", "iptables": "iptables", "sysctl": "procps", "python3": "python3"][name] ?? name
        throw LabError(.toolMissing, "`\(name)` not found in /usr/sbin, /sbin or PATH (Debian package \(package))")
    }

    static func ip() throws -> String { try tool("ip") }
}

// MARK: - Helpers shared with LabProcess

/// Two temporary files that collect a child's standard output and standard error.
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

    func stdoutWriter() throws -> FileHandle { try FileHandle(forWritingTo: stdoutURL) }
    func stderrWriter() throws -> FileHandle { try FileHandle(forWritingTo: stderrURL) }

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

/// Set once when a child exits; any number of threads can wait for it, with or without a time limit.
final class ExitLatch: @unchecked Sendable {
    private let condition = NSCondition()
    private var status: Int32?

    func finish(status: Int32) {
        condition.lock()
        self.status = status
        condition.broadcast()
        condition.unlock()
    }

    /// The exit status, or nil while the child runs.
    var current: Int32? {
        condition.lock()
        defer { condition.unlock() }
        return status
    }

    /// Waits without limit and returns the exit status.
    func wait() -> Int32 {
        condition.lock()
        defer { condition.unlock() }
        while status == nil { condition.wait() }
        return status!
    }

    /// Waits up to `timeout`; returns the exit status, or nil if the child still runs.
    func wait(timeout: Duration) -> Int32? {
        let deadline = Date(timeIntervalSinceNow: timeout.seconds)
        condition.lock()
        defer { condition.unlock() }
        while status == nil {
            if !condition.wait(until: deadline) { break }
        }
        return status
    }
}

extension Process {
    /// The exit status as a shell reports it: the code, or 128 + signal when a signal ended the process.
    var shellStatus: Int32 {
        terminationReason == .uncaughtSignal ? 128 + terminationStatus : terminationStatus
    }
}

extension Duration {
    /// This duration in seconds, as a `Double`.
    var seconds: Double {
        let parts = components
        return Double(parts.seconds) + Double(parts.attoseconds) / 1e18
    }
}
