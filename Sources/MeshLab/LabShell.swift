import ChildProcess
import FoundationEssentials

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The one place the lab runs commands (``ChildProcess``, not Foundation's `Process`, which crashes under load on
/// this toolchain); finds the programs it runs.
enum LabShell {
    /// Runs `arguments` (absolute program path first), waits for it, and captures its output.
    ///
    /// Output goes to temporary files rather than pipes (``ChildProcess/run(_:environment:timeout:input:)``), so a
    /// chatty command can never block on a full pipe and a child that inherits the descriptor cannot hold the read
    /// open. Throws only when the program cannot be started; a non-zero exit is reported in the result (see
    /// ``CommandResult/check()``).
    static func run(_ arguments: [String], timeout: Duration? = nil, input: String? = nil) throws -> CommandResult {
        guard !arguments.isEmpty else { throw LabError(.launchFailed, "an empty command cannot run") }
        let output: ChildProcess.Output
        do throws(SpawnError) {
            output = try ChildProcess.run(arguments, timeout: timeout, input: input)
        } catch {
            throw LabError(.launchFailed, "cannot start `\(quoted(arguments))`: \(error.reason)", command: arguments)
        }
        return CommandResult(
            command: arguments,
            status: output.status,
            standardOutput: output.standardOutput,
            standardError: output.standardError,
            timedOut: output.timedOut
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
            return plain ? arg : "'" + arg.replacing("'", with: "'\\''") + "'"
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
            [
                "ip": "iproute2", "tc": "iproute2", "iptables": "iptables", "sysctl": "procps", "python3": "python3",
                "mount": "mount", "unshare": "util-linux", "setpriv": "util-linux", "sh": "dash",
            ][name] ?? name
        throw LabError(.toolMissing, "`\(name)` not found in /usr/sbin, /sbin or PATH (Debian package \(package))")
    }

    static func ip() throws -> String { try tool("ip") }
}
