#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A pthread mutex with one condition variable. Timed waits use the monotonic clock, so changing the wall clock
/// cannot shorten or stretch them.
package final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    package init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with the mutex held.
    package func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Wakes every thread in ``wait()`` or ``wait(until:)``. Call with the mutex held.
    package func broadcast() {
        pthread_cond_broadcast(condition)
    }

    /// Wakes one thread in ``wait()`` or ``wait(until:)``. Call with the mutex held.
    package func signal() {
        pthread_cond_signal(condition)
    }

    /// Releases the mutex until woken (or woken spuriously), then takes it again. Call with the mutex held.
    package func wait() {
        pthread_cond_wait(condition, mutex)
    }

    /// Like ``wait()``, but returns false once `deadline` (from ``deadline(after:)``) has passed.
    package func wait(until deadline: timespec) -> Bool {
        var deadline = deadline
        return pthread_cond_timedwait(condition, mutex, &deadline) != ETIMEDOUT
    }

    /// The monotonic-clock time `duration` from now, for ``wait(until:)``.
    package static func deadline(after duration: Duration) -> timespec {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let parts = max(duration, .zero).components
        let nanoseconds = Int(now.tv_nsec) + Int(parts.attoseconds / 1_000_000_000)
        now.tv_sec += Int(parts.seconds) + nanoseconds / 1_000_000_000
        now.tv_nsec = nanoseconds % 1_000_000_000
        return now
    }
}
