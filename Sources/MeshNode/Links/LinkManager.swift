import FoundationEssentials
import Glibc
import Logging
import Synchronization
import WireFormat

/// A verified mesh connection, ready to hand to the app: the kernel socket and the mesh addresses the app sees.
struct Link: Sendable {
    let fd: Int32
    var connection: Boxermesh_V1_ShimConnection
}

/// Which paths this node's connections may take.
public enum PathPolicy: String, Sendable, CaseIterable {
    /// Punch within a deadline derived from the round trip to the broker; relay if no direct link is up by then.
    case auto
    /// Direct links only: the relay is forbidden (a connection fails when punching does).
    case direct
    /// Always relay through the broker (no punching).
    case relay
}

/// How this node chooses a connection's path.
public struct LinkPolicy: Sendable {
    public var path = PathPolicy.auto
    /// How long the connecting side punches before it relays (auto) or fails (direct). nil: auto derives it from
    /// the broker round trip, max(1 s, 4 × RTT); direct waits 5 s.
    public var punchTimeout: Duration?
    /// At most this many spare direct links kept ready towards each peer the app connects to (0: none): a connect
    /// to such a peer needs no broker round trip and no punch.
    public var sparesPerPeer: Int

    public init(path: PathPolicy = .auto, punchTimeout: Duration? = nil, sparesPerPeer: Int = 8) {
        self.path = path
        self.punchTimeout = punchTimeout
        self.sparesPerPeer = sparesPerPeer
    }
}

/// Builds this node's mesh connections — outbound ones the app asks for through the shim
/// (`LinkManager+Connect.swift`), inbound ones the broker announces (`LinkManager+Accept.swift`) — and keeps only
/// policy: whether to punch or relay, and for how long. Punching and proving is ``DirectPath``'s job, relaying
/// ``RelayClient``'s. A direct link hands the app the kernel socket itself, so no byte of its traffic passes
/// through the node; a relayed one hands it one end of a loopback pair that the relay pump moves to a direct
/// link later.
final class LinkManager: Sendable {
    let session: MeshSession
    let direct: DirectPath
    let logger: Logger
    let relay: RelayClient?
    let policy: LinkPolicy
    let flows: FlowMonitor?
    /// Spare links this node made to its peers, and those its peers made to it.
    let spares: SparePool
    let inbox = SpareInbox()
    let state = Mutex(State())

    /// Signal connections come from here, so the shim can tell them from the app's own local clients.
    static let signalSource = IPv4Address(127, 77, 0, 1)

    struct State {
        /// Ports the app listens on, with how many listen() registrations each has.
        var listeners: [UInt16: Int] = [:]
        /// When the kernel last showed a listener on each of them.
        var listenerSeen: [UInt16: ContinuousClock.Instant] = [:]
        /// Inbound links waiting for the app's accept(), by (port, signal connection's source port).
        var accepted: [AcceptKey: ParkedLink] = [:]
        /// Peers a relayed connection was upgraded with: punching works between us now.
        var punchable: Set<IPv4Address> = []
        /// Peers punching failed with lately, and when: new connections to them relay at once (their relayed
        /// connections keep trying to upgrade, and a success clears the mark).
        var unpunchable: [IPv4Address: ContinuousClock.Instant] = [:]
        /// Connections whose offer came early and which the broker then withdrew (ConnectWithdrawn), and when:
        /// the connect punching for one stops. Kept a while, as the push may come before the connect has its offer.
        var withdrawn: [UInt64: (error: SocketError, at: ContinuousClock.Instant)] = [:]
        /// When each peer last took a connection on each port: a spare's claim for such a port skips its answer.
        var accepting: [PeerPort: ContinuousClock.Instant] = [:]
        /// When the newest endpoint for inbound connections is (or was) learned; nil before the first.
        var advertisedAt: ContinuousClock.Instant?
    }

    struct PeerPort: Hashable {
        let peer: IPv4Address
        let port: UInt16
    }

    struct AcceptKey: Hashable {
        let port: UInt16
        let signalPort: UInt16
    }

    /// An inbound link waiting for the app's accept(), and the signal connection that wakes the app.
    struct ParkedLink {
        let link: Link
        let signalFD: Int32
        let deadline: ContinuousClock.Instant
        /// The signal is still connecting: until its connect returns, `signalFD` belongs to the announcing task,
        /// which closes it if the entry is gone by then (the app may accept, and take the link, before the node's
        /// connect() returns; closing the descriptor under it would let its number be reused by another socket).
        var connecting = true
    }

    /// `flows`: where each connection's socket is followed for the tap's flow and close events.
    init(
        session: MeshSession, direct: DirectPath, logger: Logger, relay: RelayClient? = nil, policy: LinkPolicy = .init(),
        flows: FlowMonitor? = nil
    ) {
        self.session = session
        self.direct = direct
        self.logger = logger
        self.relay = relay
        self.policy = policy
        self.flows = flows
        spares = SparePool(perPeer: policy.path == .relay ? 0 : policy.sparesPerPeer)
    }

    var me: Member { session.welcome.self_p }

    /// Whether this node punches at all (a node that forces the relay never does, nor learns endpoints).
    var punches: Bool { policy.path != .relay }

    /// Whether a connection that cannot punch may go to the relay.
    var relayAllowed: Bool { policy.path != .direct && relay != nil }

    /// Keeps a warm public endpoint ready for the next connect, and one advertised to the broker for the next
    /// inbound connection, while the node runs; both are renewed every half ``Timing/Choice/warmLifetime``. The
    /// first advert comes when the app first listens, or ``Timing/Choice/firstAdvert`` after the start.
    func keepWarm() async {
        guard punches else { return }
        async let warm: Void = direct.keepWarm()
        let renewal = Timing.Choice.warmLifetime / 2
        var due = ContinuousClock.now + Timing.Choice.firstAdvert
        while (try? await Task.sleep(until: due)) != nil {
            // An advert made meanwhile (the app listened, a connection used one) is renewed half a lifetime after it.
            if let last = state.withLock({ $0.advertisedAt }), last + renewal > .now {
                due = last + renewal
                continue
            }
            advertise(because: "renewal")
            due = .now + renewal
        }
        await warm
    }

    /// Learns the public endpoint of a fresh port and advertises it to the broker for the next inbound
    /// connection (see the schema's EndpointAdvert). In the background; `why` goes to the debug log.
    func advertise(after delay: Duration = .zero, because why: String) {
        guard punches, !session.hasLeft else { return }
        state.withLock { $0.advertisedAt = .now + delay }
        Task {
            if delay > .zero {
                try? await Task.sleep(for: delay)
                guard !session.hasLeft else { return }  // left meanwhile: nobody would use it
            }
            do throws(SocketError) {
                let port = try await direct.advertisedPort()
                session.post(.endpointAdvert(.with { $0.endpoint = port.endpoint.message }))
                logger.debug("advertised an endpoint for inbound connections", metadata: ["endpoint": "\(port.endpoint)", "why": "\(why)"])
            } catch {
                logger.debug("no endpoint advertised for inbound connections: \(error.description)")
            }
        }
    }

    // MARK: Withdrawn offers

    /// The broker withdrew connection `id`, whose offer came early: the target refused it, or is gone.
    func withdraw(_ withdrawn: Boxermesh_V1_ConnectWithdrawn) {
        let error = SocketError(Self.errno(for: withdrawn.code), withdrawn.reason)
        logger.debug("the broker withdrew a connection offered early", metadata: ["connection": "\(withdrawn.connectionID)", "why": "\(withdrawn.reason)"])
        let now = ContinuousClock.now
        state.withLock { state in
            state.withdrawn = state.withdrawn.filter { now - $0.value.at < Timing.Choice.withdrawalMemory }
            state.withdrawn[withdrawn.connectionID] = (error, now)
        }
    }

    /// Why connection `id` was withdrawn, if it was.
    func withdrawal(of id: UInt64) -> SocketError? { state.withLock { $0.withdrawn[id]?.error } }

    // MARK: Punch policy

    /// How long the connecting side punches before it relays: --punch-timeout, else max(1 s, 4 × broker RTT)
    /// (at least 3 s towards a peer a connection was already upgraded with), else 5 s when the relay is forbidden.
    func punchDeadline(towards peer: IPv4Address) -> Duration {
        if let timeout = policy.punchTimeout { return timeout }
        guard policy.path == .auto, relay != nil else { return Timing.Choice.punchWithoutRelay }
        let rtt = direct.brokerRTT ?? Timing.Choice.assumedBrokerRTT
        let known = state.withLock { $0.punchable.contains(peer) }
        return max(known ? Timing.Choice.punchKnownPeer : Timing.Choice.punchBeforeRelay, rtt * 4)
    }

    /// When punching towards `peer` last failed, if within ``Timing/Choice/unpunchableMemory``.
    func recentPunchFailure(towards peer: IPv4Address) -> ContinuousClock.Instant? {
        state.withLock { state in
            guard let failed = state.unpunchable[peer] else { return nil }
            guard ContinuousClock.now - failed < Timing.Choice.unpunchableMemory else {
                state.unpunchable[peer] = nil
                return nil
            }
            return failed
        }
    }

    func punchFailed(towards peer: IPv4Address) { state.withLock { $0.unpunchable[peer] = .now } }

    /// A relayed connection moved to the direct link `direct`: report it (the tap shows the upgrade), and remember
    /// that this peer can be punched.
    func upgraded(_ id: UInt64, _ context: RelayStreamContext, direct: Int32?) {
        if context.path == .direct {
            state.withLock {
                $0.punchable.insert(context.peer)
                $0.unpunchable[context.peer] = nil
            }
        }
        flows?.upgraded(id, direct: direct, path: context.path)
        report(id, established: true, setup: ContinuousClock.now - context.started, peer: context.peer, port: context.port,
            initiator: context.initiator, path: context.path)
    }

    /// How handing an upgraded connection's direct socket to the app went: flow counts follow the direct socket
    /// from the offer on; the tap hears whether the app holds it or why not.
    func handoff(_ id: UInt64, _ context: RelayStreamContext, _ event: HandoffEvent) {
        let (result, reason, settled): (Boxermesh_V1_Handoff, String, Bool)
        switch event {
        case .offered(let direct, let relayedOut, let relayedIn):
            flows?.follow(id, direct: direct, path: context.path, relayed: (sent: relayedOut, received: relayedIn))
            return
        case .taken(let direct, _, let failure):
            flows?.handedOff(id, direct: direct)
            (result, reason, settled) = (.done, failure ?? "", true)
        case .declined(let why, let final):
            (result, reason, settled) = (.declined, final ? "\(why); it stays on the node's copy loop" : why, final)
        }
        report(id, established: true, setup: ContinuousClock.now - context.started, peer: context.peer, port: context.port,
            initiator: context.initiator, failure: reason, path: context.path, handoff: result, handoffSettled: settled)
    }

    // MARK: Reports

    /// Tells the broker (and through it the tap) how a connection's setup went. The broker publishes the
    /// connecting side's reports only: the accepting side reports failures (for the broker's log) and upgrades.
    func report(
        _ id: UInt64, established: Bool, setup: Duration, peer: IPv4Address, port: UInt16, initiator: Bool, failure: String = "",
        refused: Bool = false, path: Boxermesh_V1_Path = .direct, handoff: Boxermesh_V1_Handoff = .unspecified,
        handoffSettled: Bool = false
    ) {
        var report = Boxermesh_V1_LinkReport()
        report.connectionID = id
        report.established = established
        report.path = path
        report.setupMs = UInt32(clamping: setup.milliseconds)
        report.initiator = initiator
        report.peerAddress = peer.value
        report.port = UInt32(port)
        report.failure = failure
        report.refused = refused
        report.handoff = handoff
        report.handoffSettled = handoffSettled
        // A handoff's report moves it on (the broker gives the accepting side its turn); the others only inform.
        session.post(.linkReport(report), within: handoff == .unspecified ? Timing.Choice.reportDelay : nil)
    }
}

extension Endpoint {
    /// The IPv4 address as the schema's fixed32 (0 for IPv6, which mesh links do not use).
    var v4Value: UInt32 {
        if case .v4(let address) = host { return address.value }
        return 0
    }

    /// The schema's endpoint.
    var message: Boxermesh_V1_PublicEndpoint {
        .with { $0.address = v4Value; $0.port = UInt32(port) }
    }

    /// An endpoint from the schema's message.
    init(_ message: Boxermesh_V1_PublicEndpoint) {
        self.init(IPv4Address(message.address), port: UInt16(truncatingIfNeeded: message.port))
    }
}
