import Synchronization
import Testing
import ZeroMQ

/// The commands a ``Recorder`` was handed, with when.
private final class Seen: Sendable {
    let entries = Mutex<[(command: Int, at: ContinuousClock.Instant)]>([])

    /// The entries once there are `count`, or at `timeout`.
    func arrived(count: Int, within timeout: Duration) async -> [(command: Int, at: ContinuousClock.Instant)] {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline, entries.withLock({ $0.count }) < count { try? await Task.sleep(for: .milliseconds(5)) }
        return entries.withLock { $0 }
    }
}

/// Records the commands a ``SocketLoop`` hands it, with when.
private final class Recorder: SocketLoopHandler {
    typealias Command = Int
    let seen: Seen
    init(_ seen: Seen) { self.seen = seen }
    var sockets: [ZMQSocket] { [] }
    var nextTick: ContinuousClock.Instant? { nil }
    func readable(socketAt index: Int) {}
    func handle(_ command: Int) { let now = ContinuousClock.now; seen.entries.withLock { $0.append((command, now)) } }
    func tick(now: ContinuousClock.Instant) {}
    func shutdown() {}
}

@Suite("Commands posted to a socket loop with a delay")
struct SocketLoopTests {
    /// Runs a loop with a ``Recorder`` for `body`, then stops it.
    private func withLoop(
        _ body: (SocketLoop<Int>, Seen) async throws -> Void
    ) async throws {
        let loop = SocketLoop<Int>(name: "loop-test")
        let seen = Seen()
        let running = Task { try await loop.run { Recorder(seen) } }
        defer { loop.stop(); running.cancel() }
        try await body(loop, seen)
    }

    @Test("commands that may wait are handled together once the first one's delay is up, in order, not before")
    func waitTogether() async throws {
        try await withLoop { loop, seen in
            let posted = ContinuousClock.now
            #expect(loop.post(1, within: .milliseconds(300)))
            try await Task.sleep(for: .milliseconds(50))
            #expect(loop.post(2, within: .milliseconds(300)))
            #expect(loop.post(3, within: .seconds(60)))  // rides with the first: one timer for all
            let handled = await seen.arrived(count: 3, within: .seconds(10))
            #expect(handled.map(\.command) == [1, 2, 3])
            for entry in handled { #expect(entry.at - posted >= .milliseconds(300), "nothing is handled before the first delay is up") }
        }
    }

    @Test("a shorter delay posted later brings the whole batch forward")
    func shorterDelayFirst() async throws {
        try await withLoop { loop, seen in
            let posted = ContinuousClock.now
            #expect(loop.post(1, within: .seconds(60)))
            #expect(loop.post(2, within: .milliseconds(10)))
            let handled = await seen.arrived(count: 2, within: .seconds(10))
            #expect(handled.map(\.command) == [1, 2], "handled together, long before the minute is up")
            #expect(ContinuousClock.now - posted < .seconds(30))
        }
    }

    @Test("a command that may not wait takes those waiting before it along, in the order they were posted")
    func urgentTakesAlong() async throws {
        try await withLoop { loop, seen in
            #expect(loop.post(1, within: .seconds(60)))
            #expect(loop.post(2, within: .seconds(60)))
            #expect(loop.post(3))
            let handled = await seen.arrived(count: 3, within: .seconds(10))
            #expect(handled.map(\.command) == [1, 2, 3], "handled at once, long before the minute is up")
            #expect(loop.post(4, within: .milliseconds(10)), "the next wait starts afresh")
            #expect(await seen.arrived(count: 4, within: .seconds(10)).map(\.command) == [1, 2, 3, 4])
        }
    }
}
