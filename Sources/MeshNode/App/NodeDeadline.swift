import FoundationEssentials
import Glibc
import Logging
import PlainText
import Synchronization

/// When a node's app must be gone: a function invocation's deadline. The app gets SIGTERM `grace` before it, and
/// SIGKILL if it still runs at ``killTime``; the node then leaves the mesh saying why. What is left of the grace after
/// SIGKILL (2 s, or half the grace if that is less) is for leaving the mesh and for the caller's report. A join or
/// start barrier still under way when SIGTERM would be due ends the run with ``DeadlineReached``.
public final class NodeDeadline: Sendable {
    /// The deadline itself.
    public let instant: ContinuousClock.Instant
    /// How long before the deadline the app gets SIGTERM.
    public let grace: Duration
    private let stopped = Atomic<Bool>(false)

    public init(_ instant: ContinuousClock.Instant, grace: Duration) {
        self.instant = instant
        self.grace = grace
    }

    /// When the app gets SIGTERM.
    public var stopTime: ContinuousClock.Instant { instant - grace }

    /// When the app gets SIGKILL if SIGTERM did not end it.
    public var killTime: ContinuousClock.Instant { instant - min(grace / 2, .seconds(2)) }

    /// Whether the deadline stopped the app (its SIGTERM went out).
    public var stoppedTheApp: Bool { stopped.load(ordering: .acquiring) }

    /// What the node tells the mesh when it leaves because of the deadline.
    var leaveReason: String { "deadline: the app was stopped \(grace.secondsText) s before the function's deadline" }

    /// Sends the app SIGTERM at ``stopTime`` and SIGKILL at ``killTime``; returns early when cancelled (the app
    /// ended by itself).
    func enforce(on app: AppProcess, logger: Logger) async {
        guard (try? await Task.sleep(until: stopTime, clock: .continuous)) != nil else { return }
        stopped.store(true, ordering: .releasing)
        logger.notice("the function's deadline is \(grace.secondsText) s away: stopping the app (SIGTERM)")
        app.send(SIGTERM)
        guard (try? await Task.sleep(until: killTime, clock: .continuous)) != nil else { return }
        logger.warning("the app outlived SIGTERM and the deadline is near: killing it (SIGKILL)")
        app.send(SIGKILL)
    }

    /// Runs `body` (joining, waiting for members) until it returns or `deadline`'s SIGTERM time comes, which cancels
    /// it and throws ``DeadlineReached``. Without a deadline, just runs `body`.
    static func bounding<T: Sendable>(
        _ deadline: NodeDeadline?, _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        guard let deadline else { return try await body() }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(until: deadline.stopTime, clock: .continuous)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else { throw DeadlineReached(grace: deadline.grace) }
            return value
        }
    }
}

/// The function's deadline came near before the app started: the node was still joining or waiting for members.
public struct DeadlineReached: Error, CustomStringConvertible, Sendable {
    public var grace: Duration

    public var description: String {
        "the app never started: \(grace.secondsText) s before the function's deadline the node was still joining or waiting for members"
    }
}

extension Duration {
    /// Seconds with one decimal, for messages ("10.0", "2.5").
    public var secondsText: String {
        let (whole, attoseconds) = components
        return (Double(whole) + Double(attoseconds) / 1e18).fixed(1)
    }
}
