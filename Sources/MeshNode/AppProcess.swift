import Foundation

/// The app a node runs: spawned with posix_spawnp, waited for on its own thread (waitpid blocks).
public final class AppProcess: Sendable {
    public let pid: pid_t

    /// Starts `arguments[0]` (looked up in PATH) with `environment`, inheriting standard input and output.
    /// Signals the node ignores or relays (``SignalRelay``) are reset to their defaults in the app, with nothing
    /// blocked: an ignored disposition would otherwise survive exec and the app could not be interrupted.
    public init(arguments: [String], environment: [String: String]) throws(LaunchError) {
        guard let program = arguments.first else { throw LaunchError(program: "", code: EINVAL) }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in SignalRelay.relayed + [SIGPIPE] { sigaddset(&defaults, signal) }
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let result = posix_spawnp(&pid, program, nil, &attributes, argv, envp)
        guard result == 0 else { throw LaunchError(program: program, code: result) }
        self.pid = pid
    }

    /// Sends `signal` to the app.
    public func send(_ signal: Int32) {
        kill(pid, signal)
    }

    /// Waits for the app to end; returns its exit status the way a shell reports it (128+N for signal N).
    public func waitForExit() async -> Int32 {
        let pid = pid
        return await withCheckedContinuation { continuation in
            Thread {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                let signal = status & 0x7f
                continuation.resume(returning: signal == 0 ? (status >> 8) & 0xff : 128 + signal)
            }.start()
        }
    }
}

/// The app could not be started.
public struct LaunchError: Error, CustomStringConvertible, Sendable {
    public var program: String
    public var code: Int32

    public var description: String {
        program.isEmpty ? "no command given" : "cannot run '\(program)': \(String(cString: strerror(code)))"
    }

    /// The status a shell uses for this failure: 127 not found, 126 not executable.
    public var exitStatus: Int32 { code == ENOENT ? 127 : 126 }
}
