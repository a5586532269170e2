import FoundationEssentials
import Glibc
import Logging
import WireFormat
import ZeroMQ

/// What the ``RelayPump`` asks of the world outside it. The relay loop gives the real ones (the DEALER, the
/// session, ``DirectPath`` on its pool); tests give fakes and feed the results back by hand.
struct RelayPumpEffects {
    /// Sends frames to the broker's relay as one message.
    var send: ([ZMQMessage]) -> Void
    /// This node's session, for the relay's hello.
    var session: () -> Data
    /// Learns a fresh punch port for an upgrade attempt of a connection; the result comes back as
    /// ``RelayCommand/gathered(_:attempt:_:)``.
    var gather: (_ id: UInt64, _ attempt: UInt32) -> Void
    /// Punches (or dials the splice port) and proves for an upgrade attempt; the result comes back as
    /// ``RelayCommand/punched(_:attempt:_:)``.
    var punch: (_ id: UInt64, _ attempt: UInt32, _ request: UpgradePunch) -> Void
    /// A connection moved to a direct link (the direct socket is valid during the call).
    var upgraded: (UInt64, RelayStreamContext, Int32?) -> Void
    /// Offers an upgraded connection's direct socket and the node's end of the app's loopback socket to the app
    /// (``HandoffDesk``), without waiting; says whether the offer went out. The answer comes back as
    /// ``RelayCommand/handoffAnswered(_:)``.
    var handOff: (_ id: UInt64, _ direct: Int32, _ pair: Int32) -> HandoffOffer
    /// How a handoff went (sockets valid during the call).
    var handoff: (UInt64, RelayStreamContext, HandoffEvent) -> Void
    /// The broker's relay said hello: the node is attached (each time it attaches again, too).
    var attached: () -> Void = {}
}

/// One upgrade attempt's new socket, proving the connection's token on it: punched from our fresh port to the
/// peer's, or dialled to the broker's splice port, which joins it to the peer's.
struct UpgradePunch: Sendable {
    enum Route: Sendable {
        case punch(port: UInt16, peer: Endpoint)
        case splice(Endpoint, SpliceHello)
    }

    let route: Route
    let proof: DirectPath.Proof
    let deadline: ContinuousClock.Instant
}

/// The relay's thread on a node: the DEALER to the broker's relay and the pump's sockets, polled together.
final class RelayLoop: SocketLoopHandler {
    typealias Command = RelayCommand

    private let dealer: ZMQSocket
    private let logger: Logger
    private var pump: RelayPump!

    init(
        options: RelayOptions, expectations: RelayExpectations, logger: Logger,
        effects: (_ send: @escaping ([ZMQMessage]) -> Void) -> RelayPumpEffects
    ) throws {
        self.logger = logger
        dealer = try ZMQSocket(ZMQContext(), .dealer)
        try dealer.setMaxMessageSize(Int64(RelayFrame.maximumFrameSize))
        // Unlimited queues: every byte in them is within some connection's window, which bounds them.
        try dealer.setHighWaterMarks(send: 0, receive: 0)
        try dealer.setHeartbeat(
            intervalMs: Int32(Timing.Wire.relayHeartbeat.milliseconds), timeoutMs: Int32(Timing.Wire.relayHeartbeatTimeout.milliseconds))
        try dealer.connect(options.endpoint)
        let (dealer, sendLogger) = (dealer, logger)
        pump = RelayPump(
            options: options,
            effects: effects { frames in
                do {
                    try dealer.send(frames)
                } catch {
                    sendLogger.warning("relay send failed: \(error)")
                }
            },
            expectations: expectations, logger: logger)
    }

    var sockets: [ZMQSocket] { [dealer] }
    var descriptors: [PolledDescriptor] { pump.descriptors }
    var nextTick: ContinuousClock.Instant? { pump.nextTick }

    func readable(socketAt index: Int) {
        do {
            // One message may hold several frames (the broker batches what it forwards to us).
            try dealer.receiveAllParts { frames in for frame in frames { pump.received(frame) } }
        } catch {
            logger.warning("relay receive failed: \(error)")
        }
    }

    func handle(_ command: RelayCommand) { pump.handle(command) }
    func tick(now: ContinuousClock.Instant) { pump.tick(now: now) }
    func ready(descriptor: Int32, events: Int16) { pump.ready(descriptor: descriptor, events: events) }

    func shutdown() {
        pump.shutdown()
        dealer.close()
    }
}
