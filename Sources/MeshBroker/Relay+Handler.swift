import FoundationEssentials
import Glibc
import Logging
import WireFormat
import ZeroMQ

/// Runs on the relay thread: attaches nodes by their session, opens relayed connections the control plane
/// signalled, and forwards each frame to the other end of its connection unchanged, keeping count of every
/// direction's unacknowledged bytes. A frame is read by its header alone and sent on as the very message libzmq
/// received (``ZMQMessage``): the broker never copies relayed bytes (issue 14).
final class RelayHandler: SocketLoopHandler {
    typealias Command = Never

    let router: ZMQSocket
    let configuration: RelayConfiguration
    let directory: RelayDirectory
    let logger: Logger
    let badInput: BadInputLog
    /// Only when the broker opted in to payload capture; nil costs one check per frame.
    let capture: RelayCapture?
    /// Attached nodes: routing id → session token, and the newest routing id of each session.
    var attached: [[UInt8]: [UInt8]] = [:]
    var routes: [[UInt8]: [UInt8]] = [:]
    var connections: [UInt64: RelayedConnection] = [:]
    /// Resumes after a broker restart, waiting for the other end of their connection.
    var pendingResumes: [ResumeKey: PendingResume] = [:]
    /// Frames to forward to one node, not sent yet (see ``forward(_:_:to:)``).
    var pending: Batch?

    struct Batch {
        let routingID: [UInt8]
        var frames: [ZMQMessage] = []
        /// Per frame: its connection and the routing id of the node that sent it.
        var senders: [(id: UInt64, sender: [UInt8])] = []
    }
    /// Bytes of ``RelayConfiguration/memoryBudget`` not reserved by an open connection.
    var budgetFree: Int
    var nextTick: ContinuousClock.Instant?
    /// When an idle relay next trims the allocator (``RelayAllocator/trim()``).
    var nextTrim = ContinuousClock.now

    init(configuration: RelayConfiguration, directory: RelayDirectory, logger: Logger) throws {
        self.configuration = configuration
        self.directory = directory
        self.logger = logger
        budgetFree = configuration.memoryBudget
        badInput = BadInputLog(logger: logger, port: "relay")
        let context = try ZMQContext()
        router = try ZMQSocket(context, .router)
        try router.setRouterMandatory(true)
        try router.setMaxMessageSize(Int64(RelayFrame.maximumFrameSize))
        // Sending is bounded by the windows (checked below), not by a frame count: a full queue must never make
        // the relay drop a frame of a stream. Receiving is bounded per node, so a node that ignores its window
        // can only make libzmq read so far ahead before TCP pushes back.
        try router.setHighWaterMarks(send: 0, receive: configuration.receiveHighWaterMark)
        try router.setHeartbeat(intervalMs: 2000, timeoutMs: 10000)
        try router.bind(configuration.endpoint)
        capture = try configuration.capture.map { try RelayCapture(context: context, configuration: $0, logger: logger) }
        nextTick = .now + .seconds(1)
        logger.notice(
            "relay serving",
            metadata: [
                "relay": "\(router.lastEndpoint)", "budget_mib": "\(configuration.memoryBudget >> 20)",
                "window_kib": "\(configuration.maximumWindow >> 10)",
            ])
    }

    var sockets: [ZMQSocket] { [router] + (capture.map { [$0.publisher.socket] } ?? []) }

    func readable(socketAt index: Int) {
        guard index == 0 else { return capture?.publisher.answerSubscriptions() ?? () }
        do {
            try router.receiveAllParts { parts in
                guard parts.count >= 2 else {
                    return badInput.drop("message without a relay frame after the routing id")
                }
                let routingID = [UInt8](parts[0].bytes)
                // A node may send several frames (parts) in one message; each is a RelayFrame of its own.
                for frame in parts[1...] {
                    let header: RelayFrameHeader
                    do {
                        header = try RelayFrameHeader(scanning: frame.bytes)
                    } catch {
                        badInput.drop("\(error)")
                        continue
                    }
                    handle(header, frame: frame, from: routingID)
                }
                flush()
            }
        } catch {
            logger.warning("relay socket receive failed: \(error)")
        }
    }

    func handle(_ command: Never) {}

    /// Once a second: connections whose node left or expired are reset on the other side.
    func tick(now: ContinuousClock.Instant) {
        for (routingID, token) in attached where !directory.isLive(token) {
            attached[routingID] = nil
            if routes[token] == routingID { routes[token] = nil }
        }
        for connection in connections.values {
            let live = connection.ends.map { directory.isLive($0.token) }
            guard live.contains(false) else { continue }
            for (end, isLive) in zip(connection.ends, live) where isLive {
                send(.rst(.with { $0.reason = "the peer left the mesh" }), connection.id, to: end.routingID)
            }
            drop(connection.id, resetBy: live.firstIndex(of: false) ?? 0)
        }
        expireResumes(now: now)
        badInput.flush()
        // Idle, the broker gives back what relaying and the nodes that came and went left in the allocator.
        if connections.isEmpty, now >= nextTrim {
            RelayAllocator.trim()
            nextTrim = now + .seconds(5)
        }
        nextTick = now + .seconds(1)
    }

    func shutdown() {
        router.close()
        capture?.close()
    }

    // MARK: Frames

    func handle(_ header: RelayFrameHeader, frame message: ZMQMessage, from routingID: [UInt8]) {
        // Only the small frames are decoded or kept as bytes; data goes on as the message it came in.
        var frame: [UInt8] { [UInt8](message.bytes) }
        if header.kind == .hello { return hello(frame, from: routingID) }
        guard let token = attached[routingID] else {
            badInput.drop("relay frame from a node that is not attached")
            return send(Self.unknownState("not attached: send hello with your session first"), header.connectionID, to: routingID)
        }
        if header.kind == .open { return open(header.connectionID, token: token, from: routingID) }
        if header.kind == .resume { return resume(header.connectionID, frame: frame, token: token, from: routingID) }
        guard var connection = connections[header.connectionID] else {
            return notOpen(header, frame: message, token: token, from: routingID)
        }
        guard let side = connection.ends.firstIndex(where: { $0.token == token }) else {
            badInput.drop("relay frame for connection \(header.connectionID) from a node that is not part of it")
            return
        }
        let other = 1 - side
        connection.ends[side].routingID = routingID  // a node that reconnected
        switch header.kind {
        case .data:
            connection.unacknowledged[side] += header.payload.count
            guard !connection.finished[side], connection.unacknowledged[side] <= connection.window else {
                return violation(connection, "data beyond its window or after its end")
            }
            capture?.data(connection.id, from: side, UnsafeRawBufferPointer(rebasing: message.bytes[header.payload]))
        case .credit(let credit):
            connection.unacknowledged[other] -= Int(credit)
            guard connection.unacknowledged[other] >= 0 else { return violation(connection, "credit for bytes never sent") }
        case .fin, .switchOffset:
            connection.finished[side] = true
            if header.kind == .fin { capture?.finished(connection.id, from: side) }
        case .rst:
            forward(message, connection, to: other)
            flush()
            return drop(connection.id, resetBy: side)
        case .punch:
            break
        case .hello, .open, .resume:
            return  // handled above
        }
        connections[connection.id] = connection
        forward(message, connection, to: other)
        if connection.finished[0] && connection.finished[1] { drop(connection.id) }
    }

    /// A node proves its control-plane session; from then on it takes part in relayed connections.
    private func hello(_ frame: [UInt8], from routingID: [UInt8]) {
        guard let decoded = try? RelayFrame(frame: frame), case .hello(let hello) = decoded.body else {
            return badInput.drop("malformed relay hello")
        }
        let token = [UInt8](hello.session)
        guard directory.isLive(token) else {
            return send(Self.unknownState("no such session (expired, or the broker restarted): join again"), 0, to: routingID)
        }
        if let previous = attached[routingID], previous != token { attached[routingID] = nil }
        attached[routingID] = token
        routes[token] = routingID
        send(.hello(.init()), 0, to: routingID)
    }

    /// The initiator relays a connection the control plane signalled: reserve a window, tell both ends.
    private func open(_ id: UInt64, token: [UInt8], from routingID: [UInt8]) {
        func refuse(_ reason: String) {
            logger.info("relay open refused", metadata: ["connection": "\(id)", "reason": "\(reason)"])
            send(.rst(.with { $0.reason = reason }), id, to: routingID)
        }
        guard connections[id] == nil else { return refuse("connection \(id) is already relayed") }
        guard let pairing = directory.pairing(id), pairing.initiator == token else {
            return refuse("the broker signalled no connection \(id) from this node")
        }
        guard let acceptorRoute = routes[pairing.acceptor] else { return refuse("the peer is not attached to the relay") }
        guard let window = reserveWindow() else { return refuse("relay full: its memory budget is taken") }
        let connection = RelayedConnection(
            id: id, window: window,
            ends: [.init(token: token, routingID: routingID), .init(token: pairing.acceptor, routingID: acceptorRoute)])
        connections[id] = connection
        directory.markRelayed(id)
        capture?.opened(id, pairing.ends)
        let open = RelayFrame.with(id, .open(.with { $0.window = UInt32(window) })).frame()
        flush()
        guard (try? router.send([acceptorRoute, open])) != nil else {
            drop(id)
            return refuse("the peer is not attached to the relay")
        }
        guard (try? router.send([routingID, open])) != nil else {
            send(.rst(.with { $0.reason = "the connecting node left" }), id, to: acceptorRoute)
            return drop(id)
        }
        logger.info("relaying", metadata: ["connection": "\(id)", "window": "\(window)", "relayed": "\(connections.count)"])
    }

    /// A frame for a connection the relay does not carry (any more). A reset of a signalled connection still
    /// reaches the other node (a connecting node that gave up); data is answered with a reset; the rest (late
    /// credits, punch signals of a finished connection) is dropped.
    private func notOpen(_ header: RelayFrameHeader, frame: ZMQMessage, token: [UInt8], from routingID: [UInt8]) {
        switch header.kind {
        case .rst:
            guard let pairing = directory.pairing(header.connectionID), pairing.ended == nil else { return }
            let peer = pairing.initiator == token ? pairing.acceptor : pairing.acceptor == token ? pairing.initiator : nil
            if let peer, let route = routes[peer] {
                flush()
                try? router.send([ZMQMessage(route), frame])
            }
        case .data:
            send(Self.unknownState("the relay carries no connection \(header.connectionID)"), header.connectionID, to: routingID)
        default:
            break
        }
    }

    private func violation(_ connection: RelayedConnection, _ what: String) {
        badInput.drop("connection \(connection.id): \(what); reset")
        for end in connection.ends {
            send(.rst(.with { $0.reason = "relay protocol violation: \(what)" }), connection.id, to: end.routingID)
        }
        drop(connection.id)
    }

    // MARK: Sending and bookkeeping

    /// Queues `frame` for the other end; consecutive frames for one node go out together as one multipart
    /// message (one wakeup for libzmq's I/O thread and for the receiving node instead of one per frame).
    private func forward(_ frame: ZMQMessage, _ connection: RelayedConnection, to end: Int) {
        let target = connection.ends[end].routingID
        if let pending, pending.routingID != target { flush() }
        if pending == nil { pending = Batch(routingID: target) }
        pending?.frames.append(frame)
        pending?.senders.append((connection.id, connection.ends[1 - end].routingID))
    }

    /// Sends the queued frames. When their node is gone (EHOSTUNREACH) their streams cannot go on: each
    /// connection is reset towards its sender.
    func flush() {
        guard let batch = pending else { return }
        pending = nil
        do {
            try router.send([ZMQMessage(batch.routingID)] + batch.frames)
        } catch {
            for (id, sender) in batch.senders where connections[id] != nil {
                logger.info("relay peer unreachable; reset", metadata: ["connection": "\(id)", "error": "\(error)"])
                send(.rst(.with { $0.reason = "the peer is unreachable" }), id, to: sender)
                drop(id)
            }
        }
    }

    /// A reset saying this relay holds no state for the frame's session or connection (it restarted): the node
    /// resumes the connection instead of resetting its app's.
    static func unknownState(_ reason: String) -> RelayFrame.OneOf_Body {
        .rst(.with {
            $0.reason = reason
            $0.unknown = true
        })
    }

    func send(_ body: RelayFrame.OneOf_Body, _ id: UInt64, to routingID: [UInt8]) {
        flush()  // frames of one connection keep their order
        do {
            try router.send([routingID, RelayFrame.with(id, body).frame()])
        } catch {
            logger.debug("relay frame dropped: \(error)")
        }
    }

    /// Forgets a connection that ended. Unless both its directions finished, it was reset (by side `resetBy`,
    /// as far as the capture tells).
    func drop(_ id: UInt64, resetBy side: Int = 0) {
        guard let connection = connections.removeValue(forKey: id) else { return }
        capture?.ended(id, resetBy: connection.finished == [true, true] ? nil : side)
        budgetFree += 2 * connection.window
        directory.markEnded(id)
    }

    /// Reserves both windows of a new connection from the budget (``RelayConfiguration/window(free:)``); nil when
    /// the budget is full.
    func reserveWindow() -> Int? {
        guard let window = configuration.window(free: budgetFree) else { return nil }
        budgetFree -= 2 * window
        return window
    }
}

/// One relayed connection as the broker sees it: its two ends and, per direction, the bytes sent and not yet
/// given back as credit (never more than `window`).
struct RelayedConnection {
    struct End {
        let token: [UInt8]
        var routingID: [UInt8]
    }

    let id: UInt64
    let window: Int
    /// [initiator, acceptor]; direction `i` is the one end `i` sends.
    var ends: [End]
    var unacknowledged = [0, 0]
    /// Direction `i` ended on the relay (fin, or moved to a direct link).
    var finished = [false, false]
}
