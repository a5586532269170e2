import Logging
import ServiceLifecycle
import WireFormat
import ZeroMQ

/// What the broker's control plane listens on and how strict it is.
public struct BrokerConfiguration: Sendable {
    /// ZeroMQ ROUTER endpoint for nodes and tools.
    public var controlEndpoint = "tcp://0.0.0.0:7700"
    /// ZeroMQ PUB endpoint of the tap.
    public var tapEndpoint = "tcp://0.0.0.0:7701"
    /// The reflector's port, told to peers in Welcome.
    public var stunPort: UInt16 = 3478
    /// The relay's capture PUB port, told to peers in Welcome; 0 when the broker did not opt in to capture.
    public var capturePort: UInt16 = 0
    /// The splice port, told to peers in Welcome; 0 when the broker splices nothing.
    public var splicePort: UInt16 = 0
    /// Virtual addresses come from here; each mesh has the whole range to itself.
    public var subnet = try! IPv4Subnet("100.64.0.0/16")
    public var secret: MeshSecret
    /// How often nodes heartbeat, and how long a silent session lives.
    public var heartbeatInterval: Duration = .milliseconds(500)
    public var expiry: Duration = .seconds(2)

    public init(secret: MeshSecret) { self.secret = secret }
}

/// The endpoints actually bound (a `*` port resolved), reported once the control plane is serving.
public struct BoundEndpoints: Sendable {
    public var control: String
    public var tap: String
}

/// The broker's control plane: membership, names, addresses and the tap, on one ZeroMQ thread.
public struct ControlPlane: Service {
    let configuration: BrokerConfiguration
    let logger: Logger
    let relay: RelayDirectory?
    let onReady: @Sendable (BoundEndpoints) -> Void

    /// `relay`: where the control plane tells the broker's ``Relay`` about sessions and signalled connections.
    public init(
        configuration: BrokerConfiguration, logger: Logger, relay: RelayDirectory? = nil,
        onReady: @escaping @Sendable (BoundEndpoints) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.relay = relay
        self.onReady = onReady
    }

    public func run() async throws {
        let loop = SocketLoop<Never>(name: "control-plane")
        let (configuration, logger, relay, onReady) = (configuration, logger, relay, onReady)
        try await cancelWhenGracefulShutdown {
            try await loop.run {
                let handler = try ControlPlaneHandler(configuration: configuration, logger: logger, relay: relay)
                onReady(BoundEndpoints(control: handler.router.lastEndpoint, tap: handler.tap.socket.lastEndpoint))
                return handler
            }
        }
    }
}

/// Runs on the control-plane thread: decodes each request, applies it to the registry, answers, publishes.
final class ControlPlaneHandler: SocketLoopHandler {
    typealias Command = Never

    let router: ZMQSocket
    var tap: TapPublisher
    let configuration: BrokerConfiguration
    let logger: Logger
    let relay: RelayDirectory?
    let badInput: BadInputLog
    var registry: MeshRegistry
    /// Hellos waiting for their Authenticate, by routing id. Bounded: a flood of hellos evicts the oldest.
    var pendingHandshakes: [[UInt8]: PendingHandshake] = [:]
    /// Start barriers waiting for their mesh to fill.
    var waiters: [MemberWaiter] = []
    /// Connections signalled to their target, waiting for its answer.
    var pendingConnections: [UInt64: PendingConnection] = [:]
    /// Connection ids go on from the wall clock (ms × 1024) rather than from 0, so a restarted broker never hands
    /// out the id of a connection its nodes still hold (a relayed one resumes under its old id), and flow reports
    /// for those keep passing the "id was handed out" check. Under 2^53, so JSON readers keep every digit.
    var nextConnectionID: UInt64 = unixMilliseconds() << 10
    /// Connections whose close was published (bounded; see ControlPlane+Flows).
    var closedConnections: Set<ClosedConnection> = []
    /// Each mesh's membership version (see ControlPlane+Membership).
    var membershipVersions: [String: UInt64] = [:]
    let clock = ContinuousClock()
    var nextTick: ContinuousClock.Instant?
    /// When the last tick ran, and until when no session expires: a broker that was not running (stopped, starved
    /// of CPU) heard nobody meanwhile, and the silence it caused is not its nodes'.
    var lastTick: ContinuousClock.Instant?
    var expiryPausedUntil = ContinuousClock.now
    /// A tick this late means the broker itself stalled (they run every 100 ms).
    static let stallThreshold = Duration.milliseconds(500)

    static let maximumPendingHandshakes = 4096
    /// A leave's reason is cut to this many characters for the log and the tap.
    static let maximumLeaveReason = 200
    static let handshakeTimeout = Duration.seconds(10)

    init(configuration: BrokerConfiguration, logger: Logger, relay: RelayDirectory? = nil) throws {
        self.configuration = configuration
        self.logger = logger
        self.relay = relay
        badInput = BadInputLog(logger: logger, port: "control")
        registry = MeshRegistry(subnet: configuration.subnet)
        let context = try ZMQContext()
        router = try ZMQSocket(context, .router)
        try router.setRouterMandatory(true)
        try router.setMaxMessageSize(Int64(ControlMessage.maximumFrameSize))
        try router.setHighWaterMarks(send: 1000, receive: 10000)
        try router.bind(configuration.controlEndpoint)
        // PUB drops for a subscriber past its queue: a stuck tap never slows the broker.
        tap = try TapPublisher(
            context: context, endpoint: configuration.tapEndpoint, highWaterMark: 10000, secret: configuration.secret, logger: logger)
        nextTick = clock.now
        logger.notice(
            "control plane serving",
            metadata: [
                "control": "\(router.lastEndpoint)", "tap": "\(tap.socket.lastEndpoint)",
                "subnet": "\(configuration.subnet)", "expiry": "\(configuration.expiry)",
            ])
    }

    var sockets: [ZMQSocket] { [router, tap.socket] }

    func readable(socketAt index: Int) {
        guard index == 0 else { return tap.answerSubscriptions() }
        do {
            try router.receiveAll { frames in
                guard frames.count == 2 else {
                    return badInput.drop("message with \(frames.count) frames (expected 1 after the routing id)")
                }
                let routingID = frames[0]
                let request: ControlMessage
                do {
                    request = try ControlMessage(frame: frames[1])
                } catch {
                    badInput.drop("\(error)")
                    return send(to: routingID, ControlMessage().reply(.error(.init(.errorBadRequest, "\(error)"))))
                }
                handle(request, from: routingID)
            }
        } catch {
            logger.warning("control socket receive failed: \(error)")
        }
    }

    func handle(_ command: Never) {}

    func tick(now: ContinuousClock.Instant) {
        if let last = lastTick, now - last > Self.stallThreshold {
            // Their heartbeats may still sit in the kernel and libzmq's queues: give them one expiry period.
            logger.warning("the broker stalled for \(now - last); no node expires before its heartbeats had time to arrive")
            expiryPausedUntil = now + configuration.expiry
        }
        lastTick = now
        if now >= expiryPausedUntil {
            for session in registry.expire(silentSince: now - configuration.expiry) {
                sessionEnded(session, kind: .expire)
            }
        }
        pendingHandshakes = pendingHandshakes.filter { now - $0.value.created < Self.handshakeTimeout }
        expirePendingConnections(now: now)
        badInput.flush()
        nextTick = now + .milliseconds(100)
    }

    func shutdown() {
        router.close()
        tap.socket.close()
    }

    /// Replies are best effort: a peer that vanished (EHOSTUNREACH) or stopped reading (EAGAIN) is not waited for.
    func send(to routingID: [UInt8], _ message: ControlMessage) {
        send(to: routingID, frame: message.frame())
    }

    /// Sends an encoded message (one encoding for a push that goes to many).
    func send(to routingID: [UInt8], frame: [UInt8]) {
        do {
            try router.send([routingID, frame])
        } catch {
            logger.debug("reply dropped: \(error)")
        }
    }
}
