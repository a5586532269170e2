import ChildProcess
import ZeroMQ
import FoundationEssentials
import Glibc
import Synchronization

/// The node's threads for blocking work (punching, reflector exchanges, dialling the app's listener): a bounded
/// set of named threads that grows on demand and shrinks when idle, so blocking calls never hold Swift's
/// cooperative pool and a burst of connections cannot start unbounded threads. Work beyond the bound waits its
/// turn. Cancelling the awaiting task skips work that has not started and tells running work through its
/// ``CancellationFlag``.
public final class BlockingPool: @unchecked Sendable {
    /// Set when the task waiting for a piece of work was cancelled; long work checks it between steps.
    public final class CancellationFlag: Sendable {
        private let flag = Atomic(false)
        public var isCancelled: Bool { flag.load(ordering: .acquiring) }
        func cancel() { flag.store(true, ordering: .releasing) }
    }

    /// The pool the node's blocking steps share.
    static let shared = BlockingPool(name: "mesh-blocking", limit: 128)

    let name: String
    let limit: Int
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private var queue: [@Sendable () -> Void] = []
    private var threads = 0
    private var idle = 0
    private var started = 0

    public init(name: String, limit: Int) {
        precondition(limit > 0, "a blocking pool needs at least one thread")
        self.name = name
        self.limit = limit
    }

    /// Runs `body` on one of the pool's threads and returns its result. Throws `CancellationError` when the
    /// calling task was cancelled before the work started.
    public func run<T: Sendable>(_ body: @escaping @Sendable (CancellationFlag) throws -> T) async throws -> T {
        let flag = CancellationFlag()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                start {
                    guard !flag.isCancelled else { return continuation.resume(throwing: CancellationError()) }
                    continuation.resume(with: Result { try body(flag) })
                }
            }
        } onCancel: {
            flag.cancel()
        }
    }

    /// Runs `job` on one of the pool's threads; nothing waits for it.
    func start(_ job: @escaping @Sendable () -> Void) {
        let spawn: Int? = lock.withLock {
            queue.append(job)
            // One job needs one thread: waking every idle one would cost each a context switch for nothing.
            lock.signal()
            guard idle < queue.count, threads < limit else { return nil }
            threads += 1
            started += 1
            return started
        }
        guard let number = spawn else { return }
        startThread(named: "\(name)-\(number)") { [self] in
            while let job = nextJob() { job() }
        }
    }

    /// The next piece of work, or nil when none came for ``Timing/Choice/poolIdle`` (the thread then ends).
    private func nextJob() -> (@Sendable () -> Void)? {
        lock.withLock {
            let deadline = ConditionLock.deadline(after: Timing.Choice.poolIdle)
            while queue.isEmpty {
                idle += 1
                let woken = lock.wait(until: deadline)
                idle -= 1
                if !woken && queue.isEmpty {
                    threads -= 1
                    return nil
                }
            }
            return queue.removeFirst()
        }
    }
}

