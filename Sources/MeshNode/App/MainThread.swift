import Glibc

/// How the executables start: their async work runs on the concurrency pool while the main thread only waits for
/// signals.
public enum MainThread {
    /// Runs `body` on the concurrency pool and exits with the status it returns; never returns.
    ///
    /// This is what Swift's async `main` does, minus one cost: that one ends the main thread with `dispatch_main`,
    /// which calls `pthread_exit`, which loads libgcc_s and unwinds the main thread's stack through the
    /// executable's unwind tables, about 0.7 MiB that then stay resident for the node's whole life. The main thread
    /// ends where `dispatch_main` leaves it, in `sigsuspend` with no signal blocked, so process signals reach the
    /// node's signal sources exactly as before.
    public static func run(_ body: @escaping @Sendable () async -> Int32) -> Never {
        Task.detached {
            exit(await body())
        }
        var none = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, nil)
        while true { sigsuspend(&none) }
    }
}
