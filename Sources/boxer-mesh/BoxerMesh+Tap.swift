import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import MeshNode
import PlainText
import Synchronization
import WireFormat

extension BoxerMesh {
    struct Tap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tap",
            abstract: "Watch a mesh live: joins, leaves, expiries, connections and their flows, one line per event (or relayed traffic into a pcap file).",
            discussion: """
                Lines go to standard output as events happen; --json prints one JSON object per line with the \
                fields time, time_unix_ms, mesh, event (join, leave, expire, connect, upgrade, handoff, handoff-declined, \
                refused, connect-failed, close, flow, dropped), node, address, and as they apply members, connection, \
                peer, peer_address, port, path, setup_ms, reason (why a node left, a connect failed, or an app did not \
                take its upgraded connection's direct socket), side (handoff: which app, connecting or accepting, now \
                holds the direct socket itself), count and kind (dropped: how many events of which kind); close and flow add bytes_to_peer and bytes_from_peer (what the node's app \
                sent to and received from the peer's), duration_ms and rtt_us, flow adds rate_to_peer_bps and \
                rate_from_peer_bps. In a connection event the node is the connecting side. Flow samples come every \
                few seconds per open connection; --no-flows leaves them out. Events are sealed per mesh: only a \
                subscriber with the mesh's secret can read them. Stop with Ctrl-C.
                """)

        @Option(help: ArgumentHelp("Show only events about this node.", valueName: "name"))
        var node: String?

        @Flag(help: "One JSON object per line (for jq).")
        var json = false

        @Flag(help: "Leave out the periodic flow samples (subscribes to the other kinds only).")
        var noFlows = false

        @Option(help: ArgumentHelp("Exit after this many events.", valueName: "n"))
        var count: Int?

        @Option(help: ArgumentHelp(
            """
            Write the mesh's relayed traffic to this pcap file (TCP streams between mesh addresses, for Wireshark or \
            tshark) instead of printing events. Needs a broker started with --capture-payloads; direct links are not \
            captured. With --count, stops after that many captured segments; after Ctrl-C the file is complete.
            """,
            valueName: "file"))
        var pcap: String?

        @OptionGroup var mesh: MeshOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            if let pcap { return try await capture(to: pcap) }
            let logger = logging.makeLogger("boxer-mesh.tap")
            let join = try mesh.joinRequest(nodeName: nil)
            let broker = try mesh.brokerAddress()
            // The handshake proves the secret (a wrong one ends here, clearly) and tells where the tap is.
            let tapPort = try await MeshSession.withSession(
                join, broker: broker, connectTimeout: mesh.connectTimeoutDuration, logger: logger
            ) { session in
                UInt16(session.welcome.tapPort)
            }
            let connectTimeout = mesh.connectTimeoutDuration
            let endpoint = broker.endpoint(port: tapPort)
            let filter = try node.map { try MeshName.validated($0, role: "node name") }
            let remaining = Atomic<Int>(count ?? .max)
            let lastSequence = Mutex<[TapKind: UInt64]>([:])
            let json = json
            let write: @Sendable (TapLine) -> Void = { line in
                // Flushed per line: a pipe reader (jq, a test) sees each event as it happens.
                print(json ? line.json : line.text)
                fflush(nil)
            }
            try await TapSubscriber.run(
                endpoint: endpoint, key: TapKey(secret: join.secret, mesh: join.mesh),
                kinds: noFlows ? [.membership, .connection] : [.membership, .connection, .flow],
                onSubscribed: {
                    // Said once the broker answered the subscriptions: every event from here on is shown. The members
                    // are listed only now, so a node that joins meanwhile is in the list or in the events (or both).
                    Task {
                        do {
                            let members = try await MeshSession.withSession(
                                join, broker: broker, connectTimeout: connectTimeout, logger: logger
                            ) { try await $0.members() }
                            logger.notice(
                                "watching mesh '\(join.mesh)' at \(endpoint); \(members.count) members: \(members.map(\.name).joined(separator: ", "))")
                        } catch {
                            logger.notice("watching mesh '\(join.mesh)' at \(endpoint); its members could not be listed: \(error)")
                        }
                    }
                },
                onEvent: { event in
                    // The broker numbers each mesh's events per kind; a gap means it dropped some for this slow reader.
                    let previous = lastSequence.withLock { $0.updateValue(event.sequence, forKey: event.tapKind) ?? 0 }
                    if previous != 0, event.sequence > previous + 1 {
                        write(TapLine(droppedAfter: previous, before: event))
                    }
                    let line = TapLine(event)
                    if let filter, line.node != filter, line.peer != filter { return true }
                    write(line)
                    return remaining.subtract(1, ordering: .relaxed).newValue > 0
                },
                onMalformed: { logger.warning("skipped a malformed tap message: \($0)") })
        }
    }
}

/// One tap event as the tap prints it. JSON field names are stable: scripts depend on them.
struct TapLine: Encodable {
    var time: String
    var time_unix_ms: UInt64
    var mesh: String
    var event: String
    var node: String
    var address: String?
    var members: UInt32?
    var peer: String?
    var peer_address: String?
    var port: UInt32?
    var path: String?
    var setup_ms: UInt32?
    var reason: String?
    var count: UInt64?
    /// Of a dropped line: which kind of event was dropped (membership, connection, flow).
    var kind: String?
    var connection: UInt64?
    var bytes_to_peer: UInt64?
    var bytes_from_peer: UInt64?
    var duration_ms: UInt64?
    var rtt_us: UInt32?
    var rate_to_peer_bps: UInt64?
    var rate_from_peer_bps: UInt64?
    var side: String?

    init(_ event: TapEvent) {
        time = Self.timestamp(event.timeUnixMs)
        time_unix_ms = event.timeUnixMs
        mesh = event.mesh
        switch event.event {
        case .membership(let membership):
            self.event = switch membership.kind {
            case .join: "join"
            case .leave: "leave"
            case .expire: "expire"
            default: "membership"
            }
            node = membership.member.name
            address = membership.member.ipv4.description
            members = membership.memberCount
            reason = membership.reason.isEmpty ? nil : membership.reason
        case .connection(let connection):
            self.event = switch connection.kind {
            case .open: "connect"
            case .upgrade: "upgrade"
            case .handoff: connection.handoffDeclined ? "handoff-declined" : "handoff"
            case .refused: "refused"
            case .failed: "connect-failed"
            case .close: "close"
            case .flow: "flow"
            default: "connection"
            }
            self.connection = connection.connectionID
            if connection.kind == .close || connection.kind == .flow {
                (bytes_to_peer, bytes_from_peer) = (connection.bytesFromTo, connection.bytesToFrom)
                (duration_ms, rtt_us) = (connection.durationMs, connection.rttUs)
            }
            if connection.kind == .flow {
                (rate_to_peer_bps, rate_from_peer_bps) = (connection.rateFromToBps, connection.rateToFromBps)
            }
            node = connection.from.name
            address = connection.from.ipv4.description
            peer = connection.to.name
            peer_address = connection.to.ipv4.description
            port = connection.port
            path = switch connection.path {
            case .direct: "direct"
            case .relay: "relay"
            case .spliced: "spliced"
            default: nil
            }
            setup_ms = connection.kind == .open ? connection.setupMs : nil
            reason = connection.reason.isEmpty ? nil : connection.reason
            side = connection.kind == .handoff ? connection.handoffSide : nil
        case .capture, nil:
            // Captured payloads come only on the capture port, and go to a pcap file (--pcap), never to lines.
            self.event = "unknown"
            node = ""
        }
    }

    /// The line for events of one kind the broker dropped between two sequence numbers.
    init(droppedAfter previous: UInt64, before event: TapEvent) {
        time = Self.timestamp(event.timeUnixMs)
        time_unix_ms = event.timeUnixMs
        mesh = event.mesh
        self.event = "dropped"
        node = ""
        kind = event.tapKind.rawValue
        count = event.sequence - previous - 1
    }

    static func timestamp(_ unixMilliseconds: UInt64) -> String {
        Date(timeIntervalSince1970: Double(unixMilliseconds) / 1000).formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    var text: String {
        var line = "\(time)  \(event + String(repeating: " ", count: max(0, 7 - event.count)))  \(mesh)/\(node)"
        if let address { line += "  \(address)" }
        if let members { line += "  members=\(members)" }
        if let peer, let peer_address, let port { line += "  -> \(peer)/\(peer_address):\(port)" }
        if let path { line += "  path=\(path)" }
        if let side { line += "  side=\(side)" }
        if let setup_ms { line += "  setup=\(setup_ms)ms" }
        if let reason { line += "  (\(reason))" }
        if let bytes_to_peer, let bytes_from_peer {
            line += "  bytes=\(bytes_to_peer)/\(bytes_from_peer)"
        }
        if let rate_to_peer_bps, let rate_from_peer_bps {
            line += "  rate=\(Self.rate(rate_to_peer_bps))/\(Self.rate(rate_from_peer_bps))"
        }
        if let rtt_us, rtt_us > 0 { line += "  rtt=\(rtt_us)us" }
        if let duration_ms { line += "  duration=\(duration_ms)ms" }
        if let count { line += "  \(count) \(kind ?? "") events dropped: this subscriber fell behind" }
        return line
    }

    /// Bits per second, readable: 950bit/s, 12.3kbit/s, 4.1Mbit/s, 12.2Gbit/s.
    static func rate(_ bps: UInt64) -> String {
        let units = [(1e9, "G"), (1e6, "M"), (1e3, "k")]
        for (scale, unit) in units where Double(bps) >= scale {
            return "\((Double(bps) / scale).fixed(1))\(unit)bit/s"
        }
        return "\(bps)bit/s"
    }

    var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try! encoder.encode(self), as: UTF8.self)
    }
}
