#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A program started with `posix_spawnp` and waited for with `waitpid` on a thread of its own.
///
/// Foundation's `Process` is not used: on this toolchain its `run()` crashes now and then while many descriptors are
/// open (swift-corelibs-foundation PR #5472).
///
/// The child gets exactly the descriptors 0, 1 and 2 (per ``Redirection``); every other descriptor of this process
/// is closed in it, inheritable or not. It starts with no signal blocked, whatever the starting thread blocks
/// (Dispatch's worker threads, which run Swift concurrency, block nearly all).
///
/// A single thread reaps the child; any number of callers can ask for its status, blocking (``wait()``,
/// ``wait(timeout:)``) or async (``exitStatus()``). Statuses are reported the way a shell does: the exit code, or
/// 128 + N when signal N ended the child (``unknownStatus`` if something else reaped it, as the kernel does while
/// SIGCHLD is ignored).
///
/// Linux only (glibc or musl).
///
/// Releasing a `ChildProcess` neither kills nor abandons the child: it is still reaped when it exits.
public final class ChildProcess: Sendable {
    /// The child's process id.
    public let pid: pid_t
    /// The program and its arguments, as given.
    public let arguments: [String]

    /// The status reported when the child's real status could not be learned: -1.
    public static let unknownStatus: Int32 = ExitWatcher.unknownStatus

    private let watcher: ExitWatcher

    /// Starts `arguments[0]` with the other arguments.
    ///
    /// - Parameters:
    ///   - arguments: the program, then its arguments. A program without `/` is looked up in this process's `PATH`.
    ///   - environment: the child's whole environment; nil passes this process's environment.
    ///   - standardInput: where the child reads from.
    ///   - standardOutput: where the child writes its output.
    ///   - standardError: where the child writes its errors.
    ///   - resettingSignals: signals whose disposition is reset to the default in the child. Needed for signals this
    ///     process ignores: an ignored disposition survives `exec` (a caught one is reset by `exec` anyway).
    /// - Throws: ``SpawnError`` naming the program and saying why it could not start.
    public convenience init(
        _ arguments: [String],
        environment: [String: String]? = nil,
        standardInput: Redirection = .inherit,
        standardOutput: Redirection = .inherit,
        standardError: Redirection = .inherit,
        resettingSignals: [Int32] = []
    ) throws(SpawnError) {
        let pid = try Self.spawn(
            arguments,
            environment: environment,
            streams: [standardInput, standardOutput, standardError],
            resettingSignals: resettingSignals
        )
        try self.init(adopting: pid, arguments: arguments)
    }

    /// Takes over a child this process started some other way (a fork that must set the child up before exec, as
    /// the node's seccomp supervisor does): it is waited for and reaped like a spawned one.
    /// - Throws: ``SpawnError`` when no thread can be started to wait for it; the child is then killed and reaped.
    public init(adopting pid: pid_t, arguments: [String]) throws(SpawnError) {
        let watcher = ExitWatcher(pid: pid)
        let started = watcher.start()
        guard started == 0 else {
            // Nothing could ever wait for it: end it now rather than leave it unreaped.
            kill(pid, SIGKILL)
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            throw SpawnError(program: arguments[0], code: started, step: "starting a thread to wait for it")
        }
        self.pid = pid
        self.arguments = arguments
        self.watcher = watcher
    }

    /// True until the child has exited (and been reaped).
    public var isRunning: Bool { watcher.current == nil }

    /// The exit status once the child has exited, nil while it runs.
    public var status: Int32? { watcher.current }

    /// Sends `signal` to the child. Returns false (and sends nothing) once the child has been reaped, so a signal
    /// never reaches another process that got the same pid later.
    @discardableResult
    public func send(_ signal: Int32) -> Bool {
        watcher.signal(signal)
    }

    /// Suspends until the child exits and returns its status (128 + N for signal N). Does not block a thread of
    /// Swift's cooperative pool. Ignores task cancellation: to stop waiting, end the child with ``send(_:)``.
    public func exitStatus() async -> Int32 {
        await watcher.exitStatus()
    }

    /// Blocks the calling thread until the child exits and returns its status (128 + N for signal N).
    public func wait() -> Int32 {
        watcher.wait()
    }

    /// Blocks the calling thread up to `timeout`; returns the child's status, or nil if it still runs.
    public func wait(timeout: Duration) -> Int32? {
        watcher.wait(timeout: timeout)
    }
}
