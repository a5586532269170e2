import Logging
import WireFormat
import ZeroMQ

/// Seals and publishes tap events on a PUB socket: the control plane's tap and the relay's payload capture each
/// own one. Each mesh's key is derived once; sequence numbers count per mesh and kind, so a subscriber to some
/// kinds only still sees its gaps. PUB drops for a subscriber past its queue: publishing never blocks.
///
/// Each subscription is answered with an empty message on its topic (``answerSubscriptions()``). A SUB socket
/// misses what is published before its subscription reaches the publisher; that answer tells the subscriber the
/// moment from which it misses nothing, so a tap that says it is watching is.
struct TapPublisher {
    let socket: ZMQSocket
    private let secret: MeshSecret
    private let logger: Logger
    private var keys: [String: TapKey] = [:]
    private var sequences: [TapStream: UInt64] = [:]

    /// Binds a PUB socket at `endpoint` that queues `highWaterMark` events per subscriber.
    init(context: ZMQContext, endpoint: String, highWaterMark: Int32, secret: MeshSecret, logger: Logger) throws {
        socket = try ZMQSocket(context, .publisher)
        try socket.setHighWaterMarks(send: highWaterMark, receive: 1000)
        try socket.setPassEverySubscription(true)
        try socket.bind(endpoint)
        self.secret = secret
        self.logger = logger
    }

    /// The tap key of `mesh`.
    mutating func key(for mesh: String) -> TapKey {
        if let key = keys[mesh] { return key }
        let key = TapKey(secret: secret, mesh: mesh)
        keys[mesh] = key
        return key
    }

    /// Reads the subscriptions that arrived (call when ``socket`` is readable) and answers each with an empty
    /// message on its topic. The subscription is in effect once it was read here, so whatever is published after the
    /// answer reaches that subscriber. Other subscribers to the same topic get the answer too and skip it.
    func answerSubscriptions() {
        do {
            try socket.receiveAll { frames in
                guard let message = frames.first, message.first == 1 else { return }  // 0: a subscription cancelled
                try? socket.send([Array(message.dropFirst()), []])
            }
        } catch {
            logger.debug("reading subscriptions failed: \(error)")
        }
    }

    /// Publishes `event` about `node` under its kind.
    mutating func publish(_ event: TapEvent, mesh: String, node: String) {
        publish(event, mesh: mesh, topic: Array(key(for: mesh).topic(event.tapKind, node: node).utf8))
    }

    /// Publishes `event` under a topic built beforehand (with ``key(for:)``): stamps time, mesh and sequence.
    mutating func publish(_ event: TapEvent, mesh: String, topic: [UInt8]) {
        var event = event
        event.timeUnixMs = unixMilliseconds()
        event.mesh = mesh
        let stream = TapStream(mesh: mesh, kind: event.tapKind)
        event.sequence = (sequences[stream] ?? 0) + 1
        sequences[stream] = event.sequence
        do {
            try socket.send([topic, key(for: mesh).seal(event)])
        } catch {
            logger.debug("tap event dropped: \(error)")
        }
    }
}

/// One mesh's events of one kind: what a sequence number counts.
struct TapStream: Hashable {
    let mesh: String
    let kind: TapKind
}
