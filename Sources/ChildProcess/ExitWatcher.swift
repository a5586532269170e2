#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Waits for one child on a thread of its own (waitpid blocks; Swift's cooperative pool must not) and hands its exit
/// status to any number of waiters: blocking ones, with or without a time limit, and async ones.
///
/// The thread is the only place the child is reaped. It first waits without reaping (`waitid` with `WNOWAIT`), then
/// reaps while holding the lock that ``signal(_:)`` holds too: a signal is therefore never sent to a pid the kernel
/// has already freed and may have given to another process.
final class ExitWatcher: @unchecked Sendable {
    /// The status reported when the child's status cannot be learned: something else reaped it (for example while
    /// SIGCHLD is ignored, which makes the kernel reap children itself).
    static let unknownStatus: Int32 = -1

    let pid: pid_t
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private var status: Int32?
    private var waiters: [CheckedContinuation<Int32, Never>] = []

    init(pid: pid_t) {
        self.pid = pid
    }

    /// Starts the thread that waits for the child. Returns 0, or the errno of `pthread_create`.
    func start() -> Int32 {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, 256 * 1024)  // it only waits; the default 8 MiB is wasted address space
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, &attributes, { context in
            Unmanaged<ExitWatcher>.fromOpaque(context!).takeRetainedValue().reap()
            return nil
        }, context)
        if result != 0 { Unmanaged<ExitWatcher>.fromOpaque(context).release() }
        return result
    }

    /// The exit status, or nil while the child runs.
    var current: Int32? {
        lock.withLock { status }
    }

    /// Sends `signal` unless the child has been reaped. Returns whether it was sent.
    func signal(_ signal: Int32) -> Bool {
        lock.withLock { status == nil && kill(pid, signal) == 0 }
    }

    /// Blocks until the child has exited and returns its status.
    func wait() -> Int32 {
        lock.withLock {
            while status == nil { lock.wait() }
            return status!
        }
    }

    /// Blocks up to `timeout`; returns the status, or nil if the child still runs.
    func wait(timeout: Duration) -> Int32? {
        let deadline = ConditionLock.deadline(after: timeout)
        return lock.withLock {
            while status == nil, lock.wait(until: deadline) {}
            return status
        }
    }

    /// Suspends until the child has exited and returns its status. Ignores task cancellation.
    func exitStatus() async -> Int32 {
        await withCheckedContinuation { continuation in
            let known: Int32? = lock.withLock {
                if status == nil { waiters.append(continuation) }
                return status
            }
            if let known { continuation.resume(returning: known) }
        }
    }

    /// The thread's body: wait for the exit, reap, publish.
    private func reap() {
        var info = siginfo_t()
        var waited: Int32
        repeat {
            waited = waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT)
        } while waited < 0 && errno == EINTR
        let resumed: [CheckedContinuation<Int32, Never>]
        let final: Int32
        (resumed, final) = lock.withLock {
            var raw: Int32 = 0
            var reaped: pid_t
            repeat {
                reaped = waitpid(pid, &raw, 0)  // a zombie by now: returns at once
            } while reaped < 0 && errno == EINTR
            status = reaped == pid ? Self.shellStatus(raw) : Self.unknownStatus
            lock.broadcast()
            defer { waiters = [] }
            return (waiters, status!)
        }
        for waiter in resumed { waiter.resume(returning: final) }
    }

    /// A `waitpid` status the way a shell reports it: the exit code, or 128 + N when signal N ended the process.
    static func shellStatus(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }
}
