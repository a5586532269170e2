import Foundation
import Logging
import Synchronization
import WireFormat
import ZeroMQ

/// A verified mesh connection, ready to hand to the app: the kernel socket and the mesh addresses the app sees.
struct Link: Sendable {
    let fd: Int32
    let connection: Boxermesh_V1_ShimConnection
}

/// Why a link could not be made; `code` is the errno the app's connect() gets.
struct LinkError: Error, CustomStringConvertible {
    let code: Int32
    let description: String
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

    public init(path: PathPolicy = .auto, punchTimeout: Duration? = nil) {
        self.path = path
        self.punchTimeout = punchTimeout
    }
}

/// Builds this node's mesh connections: outbound ones the app asks for through the shim, inbound ones the broker
/// announces. Each is first tried as a direct TCP link punched through both NATs and proven with the broker's
/// token; the app gets the kernel socket itself, so no byte of its traffic passes through the node. When no
/// direct link comes up in time the connection is relayed through the broker (``RelayClient``): the app then
/// gets one end of a loopback TCP pair that the node pumps, and the node moves it to a direct link later.
final class LinkManager: Sendable {
    private let session: MeshSession
    private let reflector: Endpoint
    private let logger: Logger
    private let relay: RelayClient?
    private let policy: LinkPolicy
    private let flows: FlowMonitor?
    private let state = Mutex(State())

    /// How long one punch attempt waits for its SYN to be answered.
    static let attempt = Duration.milliseconds(300)
    /// How long punching may take when the relay is forbidden and no --punch-timeout is given.
    static let punchTimeout = Duration.seconds(5)
    /// The accepting side punches this long (or its --punch-timeout, if longer) unless the connecting side
    /// relays first.
    static let acceptorPunchTimeout = Duration.seconds(10)
    /// The accepting side waits this long for a connection to come up, direct or relayed.
    static let acceptorTimeout = Duration.seconds(30)
    /// An announced inbound connection the app does not accept within this time is dropped.
    static let acceptTimeout = Duration.seconds(30)
    /// How long a signal connection may take to reach the app's listener: a full accept queue drops SYNs, and the
    /// kernel retries after 1, 2 and 4 s (a burst of hundreds of connections overflows a backlog of 128).
    static let signalConnectTimeout = Duration.seconds(10)
    /// A warm endpoint older than this is learned again before use.
    static let warmLifetime = Duration.seconds(20)
    /// How long a failed punch towards a peer makes new connections to it relay at once.
    static let unpunchableMemory = Duration.seconds(300)
    /// Signal connections come from here, so the shim can tell them from the app's own local clients.
    static let signalSource = IPv4Address(127, 77, 0, 1)

    private struct State {
        /// Ports the app listens on, with how many listen() registrations each has.
        var listeners: [UInt16: Int] = [:]
        /// Inbound links waiting for the app's accept(), by (port, signal connection's source port).
        var accepted: [AcceptKey: (link: Link, signalFD: Int32, deadline: ContinuousClock.Instant)] = [:]
        /// The lowest round trip to the broker seen (half a STUN exchange over TCP).
        var brokerRTT: Duration?
        /// Peers a relayed connection was upgraded with: punching works between us now.
        var punchable: Set<IPv4Address> = []
        /// Peers punching failed with lately, and when: new connections to them relay at once (their relayed
        /// connections keep trying to upgrade, and a success clears the mark).
        var unpunchable: [IPv4Address: ContinuousClock.Instant] = [:]
        /// A port whose public endpoint was learned ahead of time, and whether one is being learned.
        var warm: WarmEndpoint?
        var warming = false
        /// Connects waiting for the warm endpoint on its way (it started earlier than they could start one).
        var warmWaiters: [CheckedContinuation<WarmEndpoint?, Never>] = []
    }

    /// A fresh local port and its public endpoint, learned before a connection needs it: a connect (or an
    /// answer to one) then skips the reflector's two round trips. Where the NAT keeps source ports (the NATs
    /// punching works through), the mapping holds for any destination while the port is unused.
    struct WarmEndpoint {
        let port: UInt16
        let endpoint: Endpoint
        let learned: ContinuousClock.Instant
    }

    struct AcceptKey: Hashable {
        let port: UInt16
        let signalPort: UInt16
    }

    /// `flows`: where each connection's socket is followed for the tap's flow and close events.
    init(
        session: MeshSession, reflector: Endpoint, logger: Logger, relay: RelayClient? = nil, policy: LinkPolicy = .init(),
        flows: FlowMonitor? = nil
    ) {
        self.session = session
        self.reflector = reflector
        self.logger = logger
        self.relay = relay
        self.policy = policy
        self.flows = flows
    }

    /// How long the connecting side punches before it relays: --punch-timeout, else max(1 s, 4 × broker RTT)
    /// (at least 3 s towards a peer a connection was already upgraded with), else 5 s when the relay is forbidden.
    func punchDeadline(towards peer: IPv4Address) -> Duration {
        if let timeout = policy.punchTimeout { return timeout }
        guard policy.path == .auto, relay != nil else { return Self.punchTimeout }
        let (rtt, known) = state.withLock { ($0.brokerRTT ?? .milliseconds(250), $0.punchable.contains(peer)) }
        return max(known ? .seconds(3) : .seconds(1), rtt * 4)
    }

    private var me: Member { session.welcome.self_p }

    /// When punching towards `peer` last failed, if within ``unpunchableMemory``.
    private func recentPunchFailure(towards peer: IPv4Address) -> ContinuousClock.Instant? {
        state.withLock { state in
            guard let failed = state.unpunchable[peer] else { return nil }
            guard ContinuousClock.now - failed < Self.unpunchableMemory else {
                state.unpunchable[peer] = nil
                return nil
            }
            return failed
        }
    }

    // MARK: Outbound

    /// Connects to `port` on the node at `address`: signal through the broker, punch and prove (direct), or
    /// relay when no direct link is up within the punch deadline; return the app's socket.
    func connect(to address: IPv4Address, port: UInt16) async throws(LinkError) -> Link {
        let started = ContinuousClock.now
        if address == me.ipv4 { return try await loopback(port: port) }
        var punching = policy.path != .relay
        if punching, policy.path == .auto, relay != nil, let failed = recentPunchFailure(towards: address) {
            logger.info("relaying at once: punching towards this peer failed \(ContinuousClock.now - failed) ago",
                metadata: ["peer": "\(address)", "port": "\(port)"])
            punching = false
        }
        // Forcing the relay, we skip the reflector and say so with port 0: the peer then does not punch either.
        var (localPort, endpoint) = (UInt16(0), Endpoint(IPv4Address.any, port: 0))
        if punching {
            do {
                (localPort, endpoint) = try await publicEndpoint()
            } catch where policy.path == .auto && relay != nil {
                logger.notice("no public endpoint, so no punching: \(error.description)")
                punching = false
            }
        }
        var request = Boxermesh_V1_ConnectRequest()
        request.targetAddress = address.value
        request.port = UInt32(port)
        request.endpoint = .with { $0.address = endpoint.v4Value; $0.port = UInt32(endpoint.port) }
        let offer: Boxermesh_V1_ConnectOffer
        do {
            // While the broker is away (restarting) the request waits for it, up to the node's connect timeout.
            let reply = try await session.request(.connectRequest(request), timeout: session.connectTimeout)
            guard case .connectOffer(let answer) = reply.body else {
                throw LinkError(code: EPROTO, description: "the broker answered a connect with \(String(describing: reply.body))")
            }
            offer = answer
        } catch let refusal as BrokerRefusal {
            throw LinkError(code: Self.errno(for: refusal.code), description: refusal.message)
        } catch let error as LinkError {
            throw error
        } catch ControlError.timeout {
            logger.warning("connect failed: the broker is unreachable (no answer within \(session.connectTimeout))",
                metadata: ["peer": "\(address)", "port": "\(port)"])
            throw LinkError(code: ETIMEDOUT, description: "the broker is unreachable: no answer within \(session.connectTimeout)")
        } catch {
            throw LinkError(code: ETIMEDOUT, description: "signalling through the broker failed: \(error)")
        }
        let token = LinkToken([UInt8](offer.token))
        let peerPunches = offer.endpoint.port != 0
        var punchFailure: LinkError? = nil
        if punching && peerPunches {
            let peer = Endpoint(IPv4Address(offer.endpoint.address), port: UInt16(truncatingIfNeeded: offer.endpoint.port))
            do {
                let fd = try await establish(
                    from: localPort, to: peer, token: token, connectionID: offer.connectionID, initiator: true,
                    deadline: .now + punchDeadline(towards: address))
                let setup = ContinuousClock.now - started
                logger.info(
                    "link up",
                    metadata: ["peer": "\(offer.peer.name)", "port": "\(port)", "path": "direct", "setup": "\(setup)", "via": "\(peer)"])
                report(offer.connectionID, established: true, setup: setup, peer: address, port: port, initiator: true)
                flows?.track(fd: fd, id: offer.connectionID, initiator: true, peer: offer.peer, port: port, path: .direct)
                var connection = Boxermesh_V1_ShimConnection()
                connection.localAddress = me.address
                connection.localPort = UInt32(localPort)
                connection.peerAddress = address.value
                connection.peerPort = UInt32(port)
                connection.path = "direct"
                return Link(fd: fd, connection: connection)
            } catch {
                punchFailure = error
            }
        }
        guard policy.path != .direct, let relay else {
            let failure = punchFailure ?? LinkError(code: EHOSTUNREACH, description: "the peer only accepts relayed connections, and the relay is forbidden here")
            relay?.giveUp(offer.connectionID, reason: "no direct path: \(failure.description)")
            report(offer.connectionID, established: false, setup: ContinuousClock.now - started, peer: address, port: port,
                initiator: true, failure: failure.description)
            throw failure
        }
        if let punchFailure {
            logger.info("no direct link in time; relaying", metadata: ["peer": "\(offer.peer.name)", "why": "\(punchFailure.description)"])
            state.withLock { $0.unpunchable[address] = .now }
        }
        let context = RelayStreamContext(token: token, initiator: true, peer: address, port: port, started: started)
        let fd: Int32
        do {
            fd = try await relay.open(offer.connectionID, context: context)
        } catch {
            report(offer.connectionID, established: false, setup: ContinuousClock.now - started, peer: address, port: port,
                initiator: true, failure: error.description)
            throw error
        }
        let setup = ContinuousClock.now - started
        logger.info("link up", metadata: ["peer": "\(offer.peer.name)", "port": "\(port)", "path": "relay", "setup": "\(setup)"])
        report(offer.connectionID, established: true, setup: setup, peer: address, port: port, initiator: true, path: .relay)
        flows?.track(fd: fd, id: offer.connectionID, initiator: true, peer: offer.peer, port: port, path: .relay)
        var connection = Boxermesh_V1_ShimConnection()
        connection.localAddress = me.address
        connection.localPort = UInt32(RelayFrame.initiatorPort(connectionID: offer.connectionID))
        connection.peerAddress = address.value
        connection.peerPort = UInt32(port)
        connection.path = "relay"
        return Link(fd: fd, connection: connection)
    }

    /// A relayed connection moved to the direct link `direct`: report it (the tap shows the upgrade), and remember
    /// that this peer can be punched.
    func upgraded(_ id: UInt64, _ context: RelayStreamContext, direct: Int32?) {
        state.withLock {
            $0.punchable.insert(context.peer)
            $0.unpunchable[context.peer] = nil
        }
        flows?.upgraded(id, direct: direct)
        report(id, established: true, setup: ContinuousClock.now - context.started, peer: context.peer, port: context.port,
            initiator: context.initiator, path: .direct)
    }

    /// A connection to our own mesh address is a plain loopback connection to the app.
    private func loopback(port: UInt16) async throws(LinkError) -> Link {
        let me = me
        do {
            return try await onThread {
                let socket = try DialSocket(server: Endpoint(IPv4Address.loopback, port: port), transport: .tcp, localPort: nil, reuse: false)
                do {
                    try socket.connect(deadline: .now + .seconds(2), timeout: .seconds(2))
                } catch {
                    socket.close()
                    throw error
                }
                _ = fcntl(socket.fd, F_SETFL, fcntl(socket.fd, F_GETFL) & ~O_NONBLOCK)
                var connection = Boxermesh_V1_ShimConnection()
                connection.localAddress = me.address
                connection.peerAddress = me.address
                connection.peerPort = UInt32(port)
                connection.path = "loopback"
                return Link(fd: socket.fd, connection: connection)
            }
        } catch let error as STUNClientError where error.code == .refused {
            throw LinkError(code: ECONNREFUSED, description: "nothing listens on port \(port) of this node")
        } catch {
            throw LinkError(code: ECONNREFUSED, description: "\(error)")
        }
    }

    // MARK: Inbound

    /// The broker announced a connection to one of our ports: refuse it, or answer with our endpoint, punch,
    /// prove, and wake the app's accept() with a signal connection.
    func accept(_ incoming: Boxermesh_V1_IncomingConnection) async {
        let started = ContinuousClock.now
        let port = UInt16(truncatingIfNeeded: incoming.port)
        let id = incoming.connectionID
        var answer = Boxermesh_V1_ConnectAnswer()
        answer.connectionID = id
        let peerPunches = incoming.endpoint.port != 0
        let relayAllowed = policy.path != .direct && relay != nil
        guard isListening(on: port) else {
            answer.reason = "nothing listens on port \(port)"
            logger.info("refused a connection", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)"])
            _ = try? await session.request(.connectAnswer(answer))
            return
        }
        guard peerPunches || relayAllowed else {
            answer.reason = "the connecting node forces the relay, and this node forbids it (--path direct)"
            _ = try? await session.request(.connectAnswer(answer))
            return
        }
        let token = LinkToken([UInt8](incoming.token))
        let race = LinkRace()
        if relayAllowed, let relay {
            let context = RelayStreamContext(token: token, initiator: false, peer: incoming.peer.ipv4, port: port, started: started)
            relay.expect(id, context: context) { result in race.relayed(result) }
        } else {
            race.noRelay()
        }
        answer.accepted = true
        var punchFrom: UInt16? = nil
        if peerPunches && policy.path != .relay {
            do {
                let (localPort, endpoint) = try await publicEndpoint()
                answer.endpoint = .with { $0.address = endpoint.v4Value; $0.port = UInt32(endpoint.port) }
                punchFrom = localPort
            } catch {
                guard relayAllowed else {
                    answer.accepted = false
                    answer.reason = error.description
                    _ = try? await session.request(.connectAnswer(answer))
                    return
                }
            }
        }
        // No endpoint (port 0): we do not punch, and the connecting node relays at once.
        if let localPort = punchFrom {
            // Punching starts before the answer goes out: our SYNs open our NAT for the requester's.
            let peer = Endpoint(IPv4Address(incoming.endpoint.address), port: UInt16(truncatingIfNeeded: incoming.endpoint.port))
            let deadline = ContinuousClock.now + max(Self.acceptorPunchTimeout, policy.punchTimeout ?? .zero)
            Thread {
                do {
                    // A second at a time: once the connection is relayed (or given up) punching stops soon.
                    var fd: Int32? = nil
                    while fd == nil, !race.isDecided {
                        do {
                            fd = try Puncher.punch(
                                from: localPort, to: peer, attempt: Self.attempt,
                                until: min(ContinuousClock.now + .seconds(1), deadline), listening: true)
                        } catch let failure as Puncher.Failure where failure.code == ETIMEDOUT && ContinuousClock.now < deadline {
                            continue
                        }
                    }
                    guard let fd else { return }
                    do {
                        try Puncher.verify(fd, token: token, connectionID: id, initiator: false, until: .now + .seconds(2))
                    } catch {
                        close(fd)
                        throw error
                    }
                    if !race.direct(fd) { RelaySockets.reset(fd) }
                } catch let failure as Puncher.Failure {
                    race.punchFailed(LinkError(code: failure.code, description: failure.description))
                } catch {
                    race.punchFailed(LinkError(code: EHOSTUNREACH, description: "\(error)"))
                }
            }.start()
        } else {
            race.punchFailed(LinkError(code: EHOSTUNREACH, description: "not punching"))
        }
        _ = try? await session.request(.connectAnswer(answer))
        let outcome = await race.outcome(timeout: Self.acceptorTimeout)
        var connection = Boxermesh_V1_ShimConnection()
        connection.localAddress = me.address
        connection.localPort = UInt32(port)
        connection.peerAddress = incoming.peer.address
        connection.peerPort = incoming.endpoint.port
        let fd: Int32
        let path: Boxermesh_V1_Path
        switch outcome {
        case .direct(let direct):
            relay?.unexpect(id)
            (fd, path, connection.path) = (direct, .direct, "direct")
        case .relay(let relayed):
            (fd, path, connection.path) = (relayed, .relay, "relay")
            // The same port the connecting app sees as its own (it has no punched port on the relay).
            connection.peerPort = UInt32(RelayFrame.initiatorPort(connectionID: id))
        case .failed(let error):
            relay?.unexpect(id)
            logger.warning("inbound link failed", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)", "error": "\(error)"])
            report(id, established: false, setup: ContinuousClock.now - started, peer: incoming.peer.ipv4, port: port,
                initiator: false, failure: error.description)
            return
        }
        let setup = ContinuousClock.now - started
        logger.info("link up", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)", "path": "\(connection.path)", "setup": "\(setup)"])
        report(id, established: true, setup: setup, peer: incoming.peer.ipv4, port: port, initiator: false, path: path)
        flows?.track(fd: fd, id: id, initiator: false, peer: incoming.peer, port: port, path: path)
        do {
            try await announce(Link(fd: fd, connection: connection), port: port)
        } catch {
            logger.warning("cannot announce an inbound link to the app", metadata: ["port": "\(port)", "error": "\(error)"])
            RelaySockets.reset(fd)
        }
    }

    /// Wakes the app's accept() with a signal connection from ``signalSource`` and parks the link until the shim
    /// takes it with the signal connection's source port. The link is parked before the signal connects: the app
    /// may accept and ask for it at once.
    private func announce(_ link: Link, port: UInt16) async throws {
        try await onThread { [self] in
            let socket = try DialSocket(server: Endpoint(IPv4Address.loopback, port: port), transport: .tcp, localPort: nil, reuse: false)
            let key: AcceptKey
            do {
                try socket.bind(to: Endpoint(Self.signalSource, port: 0))
                key = AcceptKey(port: port, signalPort: try socket.localEndpoint().port)
            } catch {
                socket.close()
                throw error
            }
            state.withLock { $0.accepted[key] = (link, socket.fd, ContinuousClock.now + Self.acceptTimeout) }
            do {
                try socket.connect(deadline: .now + Self.signalConnectTimeout, timeout: Self.signalConnectTimeout)
            } catch {
                state.withLock { _ = $0.accepted.removeValue(forKey: key) }
                socket.close()
                throw error
            }
        }
    }

    /// The shim accepted the signal connection from `signalPort`: the link it stands for.
    func take(port: UInt16, signalPort: UInt16) -> Link? {
        guard let entry = state.withLock({ $0.accepted.removeValue(forKey: AcceptKey(port: port, signalPort: signalPort)) })
        else { return nil }
        close(entry.signalFD)
        return entry.link
    }

    /// Drops announced links the app never accepted.
    func dropUnaccepted(now: ContinuousClock.Instant) {
        let stale = state.withLock { state in
            let stale = state.accepted.filter { $0.value.deadline <= now }
            for key in stale.keys { state.accepted[key] = nil }
            return stale.values
        }
        for entry in stale {
            logger.warning("the app did not accept an inbound link in time; resetting it")
            close(entry.signalFD)
            RelaySockets.reset(entry.link.fd)
        }
    }

    func listen(on port: UInt16) { state.withLock { $0.listeners[port, default: 0] += 1 } }

    /// The app closed a listener on `port`. Once no socket listens there any more, links parked for it are reset
    /// at once: their signal connections died with the listener's queue, and their peers would otherwise wait for
    /// an answer until ``acceptTimeout``.
    func unlisten(on port: UInt16) {
        let announced = state.withLock { state -> Bool in
            guard let count = state.listeners[port] else { return false }
            state.listeners[port] = count > 1 ? count - 1 : nil
            return count > 1
        }
        guard !announced, !KernelSockets.isListening(onWildcardPort: port) else { return }
        let orphans = state.withLock { state in
            let keys = state.accepted.keys.filter { $0.port == port }
            return keys.compactMap { state.accepted.removeValue(forKey: $0) }
        }
        if !orphans.isEmpty {
            logger.info("the app stopped listening; resetting connections it never accepted",
                metadata: ["port": "\(port)", "count": "\(orphans.count)"])
        }
        for entry in orphans {
            close(entry.signalFD)
            RelaySockets.reset(entry.link.fd)
        }
    }

    /// The app announced `port` and a socket really listens on it. Announcements outlive the process that made
    /// them (a server may daemonize and its parent exit), so the kernel's table has the last word.
    private func isListening(on port: UInt16) -> Bool {
        state.withLock { $0.listeners[port] != nil } && KernelSockets.isListening(onWildcardPort: port)
    }

    // MARK: Shared steps

    /// A fresh local port and the public endpoint the NAT maps it to: the warm one if it is fresh (another is
    /// learned in the background for the next connection), else learned now.
    private func publicEndpoint() async throws(LinkError) -> (UInt16, Endpoint) {
        let now = ContinuousClock.now
        enum Ready { case warm(WarmEndpoint), onItsWay, none }
        let ready = state.withLock { state -> Ready in
            defer { state.warm = nil }
            if let warm = state.warm, now - warm.learned < Self.warmLifetime { return .warm(warm) }
            return state.warming && state.warmWaiters.isEmpty ? .onItsWay : .none
        }
        defer { warmUp() }
        switch ready {
        case .warm(let warm):
            return (warm.port, warm.endpoint)
        case .onItsWay:
            // Right after the node started, the first warm endpoint is being learned: waiting for it is quicker
            // than starting over.
            let arrived = await withCheckedContinuation { continuation in
                state.withLock { state in
                    if state.warming { state.warmWaiters.append(continuation) } else { continuation.resume(returning: nil) }
                }
            }
            if let arrived { return (arrived.port, arrived.endpoint) }
            return try await learnPublicEndpoint()
        case .none:
            return try await learnPublicEndpoint()
        }
    }

    /// Learns a warm endpoint in the background unless one is ready or on its way. Called after each use, and
    /// every ``warmLifetime`` by ``keepWarm()``.
    func warmUp() {
        let start = state.withLock { state in
            let fresh = state.warm.map { ContinuousClock.now - $0.learned < Self.warmLifetime / 2 } ?? false
            guard policy.path != .relay, !fresh, !state.warming else { return false }
            state.warming = true
            return true
        }
        guard start else { return }
        Task {
            let learned = try? await learnPublicEndpoint()
            let warm = learned.map { WarmEndpoint(port: $0.0, endpoint: $0.1, learned: .now) }
            let waiters = state.withLock { state in
                state.warming = false
                defer { state.warmWaiters = [] }
                // A waiting connect takes it; the rest (there is at most one) learn their own.
                if state.warmWaiters.isEmpty { state.warm = warm }
                return state.warmWaiters
            }
            for (index, waiter) in waiters.enumerated() { waiter.resume(returning: index == 0 ? warm : nil) }
        }
    }

    /// Keeps a warm endpoint ready while the node runs (one reflector exchange every ``warmLifetime`` / 2).
    func keepWarm() async {
        while !Task.isCancelled {
            warmUp()
            try? await Task.sleep(for: Self.warmLifetime / 2)
        }
    }

    /// A fresh local port and the public endpoint the NAT maps it to, as the broker's reflector sees it over TCP.
    private func learnPublicEndpoint() async throws(LinkError) -> (UInt16, Endpoint) {
        let reflector = reflector
        do {
            let (port, mapped, elapsed) = try await onThread {
                let port = try Puncher.freeLocalPort()
                let started = ContinuousClock.now
                let mapped = try STUNClient.mappedEndpoint(server: reflector, transport: .tcp, localPort: port, timeout: .seconds(3))
                return (port, mapped, ContinuousClock.now - started)
            }
            // A STUN exchange over TCP takes two round trips (handshake, request): keep the fastest seen.
            let rtt = state.withLock { state in
                let fastest = min(state.brokerRTT ?? elapsed / 2, elapsed / 2)
                state.brokerRTT = fastest
                return fastest
            }
            flows?.brokerRoundTrip(rtt)
            return (port, mapped)
        } catch {
            throw LinkError(code: ENETUNREACH, description: "cannot learn our public endpoint from \(reflector): \(error)")
        }
    }

    /// Punches to `peer` and proves the token. Returns the verified socket.
    private func establish(
        from localPort: UInt16, to peer: Endpoint, token: LinkToken, connectionID: UInt64, initiator: Bool,
        deadline punchDeadline: ContinuousClock.Instant? = nil
    ) async throws(LinkError) -> Int32 {
        do {
            return try await onThread {
                let deadline = punchDeadline ?? ContinuousClock.now + Self.punchTimeout
                let fd = try Puncher.punch(
                    from: localPort, to: peer, attempt: Self.attempt, until: deadline, listening: !initiator)
                do {
                    // The proof gets its own time: a punch that lands just before the deadline still counts.
                    let proofDeadline = max(deadline, ContinuousClock.now + .seconds(2))
                    try Puncher.verify(fd, token: token, connectionID: connectionID, initiator: initiator, until: proofDeadline)
                } catch {
                    close(fd)
                    throw error
                }
                return fd
            }
        } catch let failure as Puncher.Failure {
            throw LinkError(code: failure.code, description: failure.description)
        } catch {
            throw LinkError(code: EHOSTUNREACH, description: "\(error)")
        }
    }

    private func report(
        _ id: UInt64, established: Bool, setup: Duration, peer: IPv4Address, port: UInt16, initiator: Bool, failure: String = "",
        path: Boxermesh_V1_Path = .direct
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
        let session = session
        Task { _ = try? await session.request(.linkReport(report)) }
    }

    static func errno(for code: Boxermesh_V1_ErrorCode) -> Int32 {
        switch code {
        case .errorConnectionRefused: ECONNREFUSED
        case .errorNotFound, .errorPeerUnreachable: EHOSTUNREACH
        default: ECONNREFUSED
        }
    }
}

extension Endpoint {
    /// The IPv4 address as the schema's fixed32 (0 for IPv6, which mesh links do not use).
    var v4Value: UInt32 {
        if case .v4(let address) = host { return address.value }
        return 0
    }
}
