import CZeroMQ
import FoundationEssentials
import Glibc
import Synchronization

/// What runs on a ``SocketLoop`` thread: it owns the sockets, reacts to input, commands and its timer.
/// Everything here is called on the loop thread only, so handlers keep plain mutable state.
public protocol SocketLoopHandler<Command>: AnyObject {
    associatedtype Command: Sendable
    /// The sockets to watch for input, in a fixed order (the index is passed to ``readable(socketAt:)``).
    var sockets: [ZMQSocket] { get }
    /// `sockets[index]` has input. Drain it (``ZMQSocket/receive()`` until nil).
    func readable(socketAt index: Int)
    /// A command posted from another thread with ``SocketLoop/post(_:)``.
    func handle(_ command: Command)
    /// When ``tick(now:)`` should run next; nil for no timer.
    var nextTick: ContinuousClock.Instant? { get }
    func tick(now: ContinuousClock.Instant)
    /// The loop is ending: answer whatever still waits, close sockets.
    func shutdown()
    /// Plain file descriptors to poll besides the sockets, asked for before every poll (default: none).
    var descriptors: [PolledDescriptor] { get }
    /// A descriptor from ``descriptors`` is ready: `events` holds what poll reported (POLLIN, POLLOUT, POLLERR,
    /// POLLHUP).
    func ready(descriptor: Int32, events: Int16)
}

/// A plain file descriptor (a TCP socket, a pipe) for a ``SocketLoop`` to poll, and what to wait for.
public struct PolledDescriptor: Sendable, Equatable {
    public var fd: Int32
    /// POLLIN, POLLOUT or both.
    public var events: Int16

    public init(fd: Int32, events: Int16) {
        self.fd = fd
        self.events = events
    }
}

extension SocketLoopHandler {
    public var descriptors: [PolledDescriptor] { [] }
    public func ready(descriptor: Int32, events: Int16) {}
}

/// A dedicated thread that owns ZeroMQ sockets and polls them, so blocking zmq calls never touch Swift's
/// cooperative thread pool. Other threads talk to it with ``post(_:)``; a self-pipe wakes the poll.
public final class SocketLoop<Command: Sendable>: Sendable {
    private let name: String
    private let mailbox = Mutex(Mailbox())
    private struct Mailbox {
        var commands: [Command] = []
        var stopping = false
        /// When commands posted with a delay must be handled; nil while none waits.
        var due: ContinuousClock.Instant?
        /// A command without a delay waits: everything queued goes now.
        var urgent = false

        /// Whether the queued commands go to the handler at `now`.
        func ready(at now: ContinuousClock.Instant) -> Bool { stopping || urgent || due.map { now >= $0 } ?? true }
    }
    /// Wakes the loop's poll from other threads.
    private let wake: WakePipe
    private let abandon: @Sendable ([Command]) -> Void

    public init(name: String, abandon: @escaping @Sendable ([Command]) -> Void = { _ in }) {
        self.name = name
        self.abandon = abandon
        do {
            wake = try WakePipe()
        } catch {
            // Only fails when the process is out of descriptors: nothing sensible is left to do then.
            preconditionFailure("\(error)")
        }
    }

    /// Queues `command` for the handler and wakes the loop. Returns false (and drops it) once the loop is stopping;
    /// a command accepted here is always handed to the handler or to `abandon`.
    @discardableResult
    public func post(_ command: Command) -> Bool {
        let accepted = mailbox.withLock { box in
            guard !box.stopping else { return false }
            box.commands.append(command)
            box.urgent = true
            return true
        }
        if accepted { wake.wake() }
        return accepted
    }

    /// Queues `command` for the handler within `delay`, after those queued before it; sooner when another command
    /// or an earlier delay runs out first. Only a command that brings the batch's time forward wakes the loop (to
    /// time it), so many go in one wake-up. For messages nobody waits for (reports). Returns false as ``post(_:)``.
    @discardableResult
    public func post(_ command: Command, within delay: Duration) -> Bool {
        let (accepted, arm) = mailbox.withLock { box -> (Bool, Bool) in
            guard !box.stopping else { return (false, false) }
            box.commands.append(command)
            let due = ContinuousClock.now + delay
            // A batch already due sooner takes it along; one due later is brought forward, which wakes the loop.
            if let waiting = box.due, waiting <= due { return (true, false) }
            box.due = due
            return (true, true)
        }
        if arm { wake.wake() }
        return accepted
    }

    /// Asks the loop to end; ``run(_:)`` returns once the handler has shut down.
    public func stop() {
        mailbox.withLock { $0.stopping = true }
        wake.wake()
    }

    /// Starts the thread, builds the handler there with `makeHandler`, and runs until ``stop()`` or until the
    /// surrounding task is cancelled. Throws what `makeHandler` throws (a failed bind, say).
    public func run<Handler: SocketLoopHandler<Command> & SendableMetatype>(
        _ makeHandler: @escaping @Sendable () throws -> Handler
    ) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                startThread(named: name) { [self] in
                    do {
                        let handler = try makeHandler()
                        loop(handler)
                        continuation.resume()
                    } catch {
                        let orphans = mailbox.withLock { box in
                            box.stopping = true
                            defer { box.commands.removeAll() }
                            return box.commands
                        }
                        abandon(orphans)
                        continuation.resume(throwing: error)
                    }
                }
            }
        } onCancel: {
            stop()
        }
    }

    private func loop<Handler: SocketLoopHandler<Command>>(_ handler: Handler) {
        let sockets = handler.sockets
        var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        items.append(zmq_pollitem_t(socket: nil, fd: wake.readEnd, events: Int16(ZMQ_POLLIN), revents: 0))
        let clock = ContinuousClock()
        var extra: [PolledDescriptor] = []
        while true {
            // Descriptors go after the sockets and before the wake pipe, which always stays last.
            let wanted = handler.descriptors
            if wanted != extra {
                items.removeSubrange(sockets.count..<(items.count - 1))
                items.insert(
                    contentsOf: wanted.map { zmq_pollitem_t(socket: nil, fd: $0.fd, events: Self.zmqEvents($0.events), revents: 0) },
                    at: sockets.count)
                extra = wanted
            }
            let due = mailbox.withLock { $0.due }
            let timeout = [handler.nextTick, due].compactMap { $0 }.min().map { Int(clock.now.duration(to: $0).pollTimeout) } ?? -1
            let ready = zmq_poll(&items, Int32(items.count), timeout)
            if ready < 0 && zmq_errno() != EINTR { break }
            // Commands first: one posted before a message was sent to us (the node expects a relayed connection,
            // then answers the broker, whose open follows) must be handled before that message is read.
            if items[items.count - 1].revents & Int16(ZMQ_POLLIN) != 0 { wake.drain() }
            let now = clock.now
            let (commands, stopping) = mailbox.withLock { box -> ([Command], Bool) in
                guard box.ready(at: now) else { return ([], false) }
                defer { (box.commands, box.urgent, box.due) = ([], false, nil) }
                return (box.commands, box.stopping)
            }
            for command in commands { handler.handle(command) }
            if stopping { break }
            for index in sockets.indices where items[index].revents & Int16(ZMQ_POLLIN) != 0 {
                handler.readable(socketAt: index)
            }
            for (offset, descriptor) in extra.enumerated() where items[sockets.count + offset].revents != 0 {
                handler.ready(descriptor: descriptor.fd, events: Self.pollEvents(items[sockets.count + offset].revents))
            }
            if let next = handler.nextTick, clock.now >= next { handler.tick(now: clock.now) }
        }
        handler.shutdown()
    }

    /// zmq_poll speaks its own flags for plain descriptors too (ZMQ_POLLOUT is 2, POLLOUT is 4).
    static func zmqEvents(_ events: Int16) -> Int16 {
        var flags: Int32 = 0
        if Int32(events) & Int32(POLLIN) != 0 { flags |= ZMQ_POLLIN }
        if Int32(events) & Int32(POLLOUT) != 0 { flags |= ZMQ_POLLOUT }
        return Int16(flags)
    }

    /// zmq_poll's result flags back as poll's; ZMQ_POLLERR stands for POLLERR and POLLHUP.
    static func pollEvents(_ revents: Int16) -> Int16 {
        var flags: Int32 = 0
        if Int32(revents) & ZMQ_POLLIN != 0 { flags |= Int32(POLLIN) }
        if Int32(revents) & ZMQ_POLLOUT != 0 { flags |= Int32(POLLOUT) }
        if Int32(revents) & ZMQ_POLLERR != 0 { flags |= Int32(POLLERR) }
        return Int16(flags)
    }
}
