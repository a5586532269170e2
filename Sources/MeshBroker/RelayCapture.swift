import FoundationEssentials
import Glibc
import Logging
import WireFormat
import ZeroMQ

/// Where the relay publishes captured payloads, when the broker opted in (``RelayConfiguration/capture``).
public struct RelayCaptureConfiguration: Sendable {
    /// ZeroMQ PUB endpoint of the capture stream.
    public var endpoint: String
    /// Seals each mesh's segments with that mesh's tap key, as the tap does.
    public var secret: MeshSecret
    /// Events queued per subscriber before PUB drops for it (each at most one relay frame: 16 MiB by default).
    public var highWaterMark = Int32(16 << 20 / RelayFrame.maximumFrameSize)

    public init(endpoint: String, secret: MeshSecret) {
        self.endpoint = endpoint
        self.secret = secret
    }
}

/// The relay's payload capture, which exists only when the broker was started with the capture opt-in: every
/// relayed byte goes out on its own PUB socket as a ``CaptureSegment`` in a sealed ``TapEvent`` (per mesh, like
/// the tap's events), so a subscriber with the mesh's secret can rebuild the TCP streams. Runs on the relay
/// thread. PUB drops for a subscriber that falls behind: the capture never slows or blocks the relay.
final class RelayCapture {
    /// One relayed connection as its capture names it.
    struct Connection {
        let mesh: String
        /// Per direction (0 = initiator → acceptor): the event topic (its node is the sender) and the addresses.
        let topics: [[UInt8]]
        let sources: [(address: UInt32, port: UInt32)]
        /// Bytes of each direction captured so far: the next segment's offset.
        var offsets: [UInt64] = [0, 0]
    }

    /// The capture stream's own PUB socket, keys and sequence numbers.
    var publisher: TapPublisher
    var connections: [UInt64: Connection] = [:]

    init(context: ZMQContext, configuration: RelayCaptureConfiguration, logger: Logger) throws {
        publisher = try TapPublisher(
            context: context, endpoint: configuration.endpoint, highWaterMark: configuration.highWaterMark,
            secret: configuration.secret, logger: logger)
        logger.notice(
            """
            payload capture ON (--capture-payloads): relayed payloads are published, sealed per mesh, on \
            \(publisher.socket.lastEndpoint); anyone with a mesh's secret can read that mesh's relayed traffic
            """,
            metadata: ["capture": "\(publisher.socket.lastEndpoint)"])
    }

    /// The relay opened connection `id`: from now on its bytes are captured.
    func opened(_ id: UInt64, _ ends: RelayDirectory.Ends) {
        let key = publisher.key(for: ends.mesh)
        let initiatorPort = UInt32(RelayFrame.initiatorPort(connectionID: id))
        connections[id] = Connection(
            mesh: ends.mesh,
            topics: [ends.initiator.name, ends.acceptor.name].map { Array(key.topic(.capture, node: $0).utf8) },
            sources: [(ends.initiator.address, initiatorPort), (ends.acceptor.address, UInt32(ends.port))])
        publish(id, from: 0, .open, data: Data())
    }

    /// `data` went from side `side` (0 = initiator) to the other.
    func data(_ id: UInt64, from side: Int, _ data: UnsafeRawBufferPointer) {
        publish(id, from: side, .data, data: Data(data))
        connections[id]?.offsets[side] += UInt64(data.count)
    }

    func finished(_ id: UInt64, from side: Int) {
        publish(id, from: side, .fin, data: Data())
    }

    /// The connection ended; `resetBy` is the side that reset it, nil when both sides finished (or it moved to
    /// a direct link, which the capture cannot see).
    func ended(_ id: UInt64, resetBy side: Int?) {
        if let side { publish(id, from: side, .rst, data: Data()) }
        connections[id] = nil
    }

    private func publish(_ id: UInt64, from side: Int, _ kind: CaptureSegment.Kind, data: Data) {
        guard let connection = connections[id] else { return }
        var segment = CaptureSegment()
        segment.kind = kind
        segment.connectionID = id
        (segment.sourceAddress, segment.sourcePort) = connection.sources[side]
        (segment.destinationAddress, segment.destinationPort) = connection.sources[1 - side]
        segment.offset = connection.offsets[side]
        segment.data = data
        var event = TapEvent()
        event.capture = segment
        publisher.publish(event, mesh: connection.mesh, topic: connection.topics[side])
    }

    func close() { publisher.socket.close() }
}
