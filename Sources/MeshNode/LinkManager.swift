import Foundation
import Logging
import Synchronization
import WireFormat

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

/// Builds this node's mesh connections: outbound ones the app asks for through the shim, inbound ones the broker
/// announces. Each is a direct TCP link punched through both NATs and proven with the broker's token; the app
/// gets the kernel socket itself, so no byte of its traffic passes through the node.
final class LinkManager: Sendable {
    private let session: MeshSession
    private let reflector: Endpoint
    private let logger: Logger
    private let state = Mutex(State())

    /// How long one punch attempt waits for its SYN to be answered, and how long punching may take in all.
    static let attempt = Duration.milliseconds(300)
    static let punchTimeout = Duration.seconds(5)
    /// An announced inbound connection the app does not accept within this time is dropped.
    static let acceptTimeout = Duration.seconds(30)
    /// Signal connections come from here, so the shim can tell them from the app's own local clients.
    static let signalSource = IPv4Address(127, 77, 0, 1)

    private struct State {
        /// Ports the app listens on, with how many listen() registrations each has.
        var listeners: [UInt16: Int] = [:]
        /// Inbound links waiting for the app's accept(), by (port, signal connection's source port).
        var accepted: [AcceptKey: (link: Link, signalFD: Int32, deadline: ContinuousClock.Instant)] = [:]
    }

    struct AcceptKey: Hashable {
        let port: UInt16
        let signalPort: UInt16
    }

    init(session: MeshSession, reflector: Endpoint, logger: Logger) {
        self.session = session
        self.reflector = reflector
        self.logger = logger
    }

    private var me: Member { session.welcome.self_p }

    // MARK: Outbound

    /// Connects to `port` on the node at `address`: signal through the broker, punch, prove, return the socket.
    func connect(to address: IPv4Address, port: UInt16) async throws(LinkError) -> Link {
        let started = ContinuousClock.now
        if address == me.ipv4 { return try await loopback(port: port) }
        let (localPort, endpoint) = try await publicEndpoint()
        var request = Boxermesh_V1_ConnectRequest()
        request.targetAddress = address.value
        request.port = UInt32(port)
        request.endpoint = .with { $0.address = endpoint.v4Value; $0.port = UInt32(endpoint.port) }
        let offer: Boxermesh_V1_ConnectOffer
        do {
            let reply = try await session.request(.connectRequest(request), timeout: .seconds(10))
            guard case .connectOffer(let answer) = reply.body else {
                throw LinkError(code: EPROTO, description: "the broker answered a connect with \(String(describing: reply.body))")
            }
            offer = answer
        } catch let refusal as BrokerRefusal {
            throw LinkError(code: Self.errno(for: refusal.code), description: refusal.message)
        } catch let error as LinkError {
            throw error
        } catch {
            throw LinkError(code: ETIMEDOUT, description: "signalling through the broker failed: \(error)")
        }
        let peer = Endpoint(IPv4Address(offer.endpoint.address), port: UInt16(truncatingIfNeeded: offer.endpoint.port))
        let fd = try await establish(
            from: localPort, to: peer, token: LinkToken([UInt8](offer.token)), connectionID: offer.connectionID, initiator: true)
        let setup = ContinuousClock.now - started
        logger.info(
            "link up",
            metadata: ["peer": "\(offer.peer.name)", "port": "\(port)", "path": "direct", "setup": "\(setup)", "via": "\(peer)"])
        report(offer.connectionID, established: true, setup: setup, peer: address, port: port, initiator: true)
        var connection = Boxermesh_V1_ShimConnection()
        connection.localAddress = me.address
        connection.localPort = UInt32(localPort)
        connection.peerAddress = address.value
        connection.peerPort = UInt32(port)
        connection.path = "direct"
        return Link(fd: fd, connection: connection)
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
        var answer = Boxermesh_V1_ConnectAnswer()
        answer.connectionID = incoming.connectionID
        guard isListening(on: port) else {
            answer.reason = "nothing listens on port \(port)"
            logger.info("refused a connection", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)"])
            _ = try? await session.request(.connectAnswer(answer))
            return
        }
        do {
            let (localPort, endpoint) = try await publicEndpoint()
            answer.accepted = true
            answer.endpoint = .with { $0.address = endpoint.v4Value; $0.port = UInt32(endpoint.port) }
            // Punching starts before the answer goes out: our SYNs open our NAT for the requester's.
            let peer = Endpoint(IPv4Address(incoming.endpoint.address), port: UInt16(truncatingIfNeeded: incoming.endpoint.port))
            async let punched = establish(
                from: localPort, to: peer, token: LinkToken([UInt8](incoming.token)), connectionID: incoming.connectionID,
                initiator: false)
            _ = try? await session.request(.connectAnswer(answer))
            let fd = try await punched
            var connection = Boxermesh_V1_ShimConnection()
            connection.localAddress = me.address
            connection.localPort = UInt32(port)
            connection.peerAddress = incoming.peer.address
            connection.peerPort = UInt32(peer.port)
            connection.path = "direct"
            let setup = ContinuousClock.now - started
            logger.info("link up", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)", "path": "direct", "setup": "\(setup)"])
            report(incoming.connectionID, established: true, setup: setup, peer: incoming.peer.ipv4, port: port, initiator: false)
            try await announce(Link(fd: fd, connection: connection), port: port)
        } catch {
            logger.warning("inbound link failed", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)", "error": "\(error)"])
            report(incoming.connectionID, established: false, setup: ContinuousClock.now - started, peer: incoming.peer.ipv4,
                port: port, initiator: false, failure: "\(error)")
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
                try socket.connect(deadline: .now + .seconds(2), timeout: .seconds(2))
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
            logger.warning("the app did not accept an inbound link in time; closing it")
            close(entry.signalFD)
            close(entry.link.fd)
        }
    }

    func listen(on port: UInt16) { state.withLock { $0.listeners[port, default: 0] += 1 } }

    func unlisten(on port: UInt16) {
        state.withLock { state in
            guard let count = state.listeners[port] else { return }
            state.listeners[port] = count > 1 ? count - 1 : nil
        }
    }

    /// The app announced `port` and a socket really listens on it. Announcements outlive the process that made
    /// them (a server may daemonize and its parent exit), so the kernel's table has the last word.
    private func isListening(on port: UInt16) -> Bool {
        state.withLock { $0.listeners[port] != nil } && KernelSockets.isListening(onWildcardPort: port)
    }

    // MARK: Shared steps

    /// A fresh local port and the public endpoint the NAT maps it to, as the broker's reflector sees it over TCP.
    private func publicEndpoint() async throws(LinkError) -> (UInt16, Endpoint) {
        let reflector = reflector
        do {
            return try await onThread {
                let port = try Puncher.freeLocalPort()
                let mapped = try STUNClient.mappedEndpoint(server: reflector, transport: .tcp, localPort: port, timeout: .seconds(3))
                return (port, mapped)
            }
        } catch {
            throw LinkError(code: ENETUNREACH, description: "cannot learn our public endpoint from \(reflector): \(error)")
        }
    }

    /// Punches to `peer` and proves the token. Returns the verified socket.
    private func establish(
        from localPort: UInt16, to peer: Endpoint, token: LinkToken, connectionID: UInt64, initiator: Bool
    ) async throws(LinkError) -> Int32 {
        do {
            return try await onThread {
                let deadline = ContinuousClock.now + Self.punchTimeout
                let fd = try Puncher.punch(
                    from: localPort, to: peer, attempt: Self.attempt, until: deadline, listening: !initiator)
                do {
                    try Puncher.verify(fd, token: token, connectionID: connectionID, initiator: initiator, until: deadline)
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
        _ id: UInt64, established: Bool, setup: Duration, peer: IPv4Address, port: UInt16, initiator: Bool, failure: String = ""
    ) {
        var report = Boxermesh_V1_LinkReport()
        report.connectionID = id
        report.established = established
        report.path = .direct
        report.setupMs = UInt32(clamping: setup.components.seconds * 1000 + setup.components.attoseconds / 1_000_000_000_000_000)
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
