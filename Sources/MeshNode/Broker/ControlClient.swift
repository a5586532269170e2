import FoundationEssentials
import Glibc
import Logging
import Synchronization
import WireFormat
import ZeroMQ

/// A request/response connection to the broker's control plane: one DEALER socket on its own thread; each
/// request waits for the reply carrying its request id, or for its deadline.
public final class ControlClient: Sendable {
    enum Command: Sendable {
        case request(ControlMessage, deadline: ContinuousClock.Instant, CheckedContinuation<ControlMessage, Error>)
        case post(ControlMessage)
        case cancel(UInt64)
    }

    /// Receives messages the broker sends unasked (request id 0), such as an announced inbound connection.
    private let pushHandler = Mutex(PushHandler { _ in })

    /// The handler inside a struct, never a bare closure in the Mutex: `withLock` hands its value on as a generic
    /// `inout`, and a bare function value comes back wrapped in two more reabstraction thunks on every access. One
    /// access per push made each push's call one level deeper: a node that accepted some ten thousand connections
    /// spent its CPU walking thunks and then overflowed its stack (issue 13's redis-benchmark -k 0 hang).
    private struct PushHandler: Sendable {
        let handle: @Sendable (ControlMessage) -> Void
    }

    let endpoint: String
    private let loop: SocketLoop<Command>
    private let nextRequestID = Atomic<UInt64>(1)

    init(endpoint: String) {
        self.endpoint = endpoint
        loop = SocketLoop(name: "control-client") { orphans in
            for case .request(_, _, let continuation) in orphans {
                continuation.resume(throwing: ControlError.closed)
            }
        }
    }

    /// Connects to `endpoint` and runs `body` with the client; the connection closes when `body` returns.
    public static func withConnection<T: Sendable>(
        to endpoint: String, _ body: (ControlClient) async throws -> T
    ) async throws -> T {
        let client = ControlClient(endpoint: endpoint)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await client.loop.run { try ControlClientHandler(endpoint: endpoint) { client.pushHandler.withLock { $0 }.handle($0) } }
            }
            defer { client.loop.stop() }
            let result = try await body(client)
            client.loop.stop()
            try await group.waitForAll()
            return result
        }
    }

    /// Sets what happens with messages the broker sends unasked.
    public func onPush(_ handler: @escaping @Sendable (ControlMessage) -> Void) {
        pushHandler.withLock { $0 = PushHandler(handle: handler) }
    }

    /// Sends `message` and returns the reply. A broker ErrorReply is thrown as ``BrokerRefusal``.
    public func request(_ message: ControlMessage, timeout: Duration) async throws -> ControlMessage {
        var message = message
        let id = nextRequestID.add(1, ordering: .relaxed).oldValue
        message.requestID = id
        let deadline = ContinuousClock.now + timeout
        let reply = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                if !loop.post(.request(message, deadline: deadline, continuation)) {
                    continuation.resume(throwing: ControlError.closed)
                }
            }
        } onCancel: {
            loop.post(.cancel(id))
        }
        if case .error(let refusal) = reply.body {
            throw BrokerRefusal(code: refusal.code, message: refusal.message)
        }
        return reply
    }

    /// Sends `message`, which the broker does not answer (a report), and returns at once; with `delay`, within that
    /// time, together with other reports (one wake-up of this thread and of the broker for all of them), and before
    /// any message sent after it. A refusal the broker sends anyway (no session) is dropped with the replies nobody
    /// waits for.
    public func post(_ message: ControlMessage, within delay: Duration? = nil) {
        var message = message
        message.requestID = nextRequestID.add(1, ordering: .relaxed).oldValue
        if let delay { loop.post(.post(message), within: delay) } else { loop.post(.post(message)) }
    }
}

/// The broker answered with an error.
public struct BrokerRefusal: Error, CustomStringConvertible, Sendable {
    public var code: Boxermesh_V1_ErrorCode
    public var message: String
    public var description: String { message }
}

/// The control connection failed locally.
public enum ControlError: Error, CustomStringConvertible, Sendable {
    /// No reply before the deadline.
    case timeout
    /// The client is shutting down.
    case closed
    /// The broker's reply made no sense.
    case protocolViolation(String)
    /// The session was lost after this node began to leave the mesh: it does not join again.
    case left

    public var description: String {
        switch self {
        case .timeout: "the broker did not answer in time"
        case .closed: "the control connection is closed"
        case .protocolViolation(let what): "the broker broke the protocol: \(what)"
        case .left: "this node has left the mesh"
        }
    }
}

/// Runs on the client's thread: owns the DEALER and the table of requests waiting for replies.
final class ControlClientHandler: SocketLoopHandler {
    typealias Command = ControlClient.Command

    private let dealer: ZMQSocket
    private let onPush: @Sendable (ControlMessage) -> Void
    private var pending: [UInt64: (deadline: ContinuousClock.Instant, continuation: CheckedContinuation<ControlMessage, Error>)] = [:]

    init(endpoint: String, onPush: @escaping @Sendable (ControlMessage) -> Void) throws {
        self.onPush = onPush
        dealer = try ZMQSocket(ZMQContext(), .dealer)
        try dealer.setMaxMessageSize(Int64(ControlMessage.maximumFrameSize))
        try dealer.setHighWaterMarks(send: 1000, receive: 1000)
        try dealer.connect(endpoint)
    }

    var sockets: [ZMQSocket] { [dealer] }

    var nextTick: ContinuousClock.Instant? { pending.values.map(\.deadline).min() }

    func handle(_ command: Command) {
        switch command {
        case .request(let message, let deadline, let continuation):
            do {
                try dealer.send([message.frame()])
                pending[message.requestID] = (deadline, continuation)
            } catch {
                continuation.resume(throwing: error)
            }
        case .post(let message):
            // Only reports go this way: one the send queue has no room for is lost, not waited for.
            _ = try? dealer.send([message.frame()])
        case .cancel(let id):
            pending.removeValue(forKey: id)?.continuation.resume(throwing: CancellationError())
        }
    }

    func readable(socketAt index: Int) {
        // Replies nobody waits for any more (timed out, cancelled, or a malformed frame) are dropped.
        while let frames = try? dealer.receive() {
            guard frames.count == 1, let reply = try? ControlMessage(frame: frames[0]) else { continue }
            if reply.requestID == 0 {
                onPush(reply)
            } else {
                pending.removeValue(forKey: reply.requestID)?.continuation.resume(returning: reply)
            }
        }
    }

    func tick(now: ContinuousClock.Instant) {
        for (id, entry) in pending where entry.deadline <= now {
            pending[id] = nil
            entry.continuation.resume(throwing: ControlError.timeout)
        }
    }

    func shutdown() {
        for entry in pending.values { entry.continuation.resume(throwing: ControlError.closed) }
        pending.removeAll()
        dealer.close()
    }
}
