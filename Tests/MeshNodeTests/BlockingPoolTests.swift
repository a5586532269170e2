import Foundation
import Synchronization
import Testing

@testable import MeshNode

@Suite("Blocking pool: bounded, named, cancellation-aware")
struct BlockingPoolTests {
    @Test("never more threads than its bound: the rest wait their turn, and all of it runs")
    func bounded() async throws {
        let pool = BlockingPool(name: "test-bound", limit: 2)
        let started = DispatchSemaphore(value: 0)
        let gate = DispatchSemaphore(value: 0)
        let running = Shared((now: 0, most: 0))
        let jobs = (0..<6).map { index in
            Task {
                try await pool.run { _ in
                    running.withLock { $0.now += 1; $0.most = max($0.most, $0.now) }
                    started.signal()
                    gate.wait()
                    running.withLock { $0.now -= 1 }
                    return index
                }
            }
        }
        #expect(await started.waitOffPool())
        #expect(await started.waitOffPool())
        #expect(await started.waitOffPool(timeout: 0.3) == false, "a third job started beside two blocked ones")
        for _ in 0..<6 { gate.signal() }
        var results: [Int] = []
        for job in jobs { results.append(try await job.value) }
        #expect(results == Array(0..<6))
        #expect(running.withLock { $0.most } == 2)
    }

    @Test("cancelling the waiting task skips work that has not started, and tells running work")
    func cancellation() async throws {
        let pool = BlockingPool(name: "test-cancel", limit: 1)
        let started = DispatchSemaphore(value: 0)
        let gate = DispatchSemaphore(value: 0)
        let seen = Shared((skippedRan: false, toldRunning: false))
        let blocker = Task {
            try await pool.run { flag in
                started.signal()
                gate.wait()
                seen.withLock { $0.toldRunning = flag.isCancelled }
            }
        }
        #expect(await started.waitOffPool())
        let queued = Task { try await pool.run { _ in seen.withLock { $0.skippedRan = true } } as Void }
        queued.cancel()
        blocker.cancel()
        gate.signal()
        try await blocker.value
        await #expect(throws: CancellationError.self) { try await queued.value }
        #expect(seen.withLock { $0.skippedRan } == false, "cancelled work ran anyway")
        #expect(seen.withLock { $0.toldRunning }, "running work did not hear of the cancellation")
    }

    @Test("its threads carry the pool's name")
    func names() async throws {
        let pool = BlockingPool(name: "test-names", limit: 1)
        // The kernel's name of the running thread (what ps, top and gdb show).
        let name = try await pool.run { _ in (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "" }
        #expect(name.hasPrefix("test-names-"))
    }
}

/// A value the test and the pool's threads share.
final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { value.withLock { body(&$0) } }
}

extension DispatchSemaphore {
    /// Waits on a thread of its own: blocking a cooperative thread here would starve the tasks that signal.
    func waitOffPool(timeout seconds: Double = 10) async -> Bool {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: self.wait(timeout: .now() + seconds) == .success) }.start()
        }
    }
}
