import FoundationEssentials
import Glibc
import Logging
import WireFormat

/// Outbound: the app's connect() to a mesh address, from the shim's request to the app's socket.
extension LinkManager {
    /// Connects to `port` on the node at `address`: signal through the broker, punch and prove (direct), or
    /// relay when no direct link is up within the punch deadline. `deliver` gets the app's link as soon as it is
    /// up, before the node's bookkeeping (its log line, report and flow), which a connect should not wait for;
    /// then the same link is returned, and the caller owns its socket. The node's copy kept the connection open
    /// through the bookkeeping: an app that closes at once is still followed.
    func connect(to address: IPv4Address, port: UInt16, deliver: (Link) -> Void = { _ in }) async throws(SocketError) -> Link {
        let started = ContinuousClock.now
        if address == me.ipv4 {
            let link = try await loopback(port: port)
            deliver(link)
            return link
        }
        if let link = connectAtOnce(to: address, port: port, deliver: deliver) { return link }
        if let link = try await connectBySpare(to: address, port: port, started: started, deliver: deliver) { return link }
        var punching = punches
        var punchFailedRecently = false
        if punching, policy.path == .auto, relay != nil, let failed = recentPunchFailure(towards: address) {
            logger.info("relaying at once: punching towards this peer failed \(ContinuousClock.now - failed) ago",
                metadata: ["peer": "\(address)", "port": "\(port)"])
            punching = false
            punchFailedRecently = true
        }
        // Forcing the relay, we skip the reflector and say so with port 0: the peer then does not punch either.
        var ours: DirectPath.PunchPort? = nil
        if punching {
            do {
                ours = try await direct.punchPort()
            } catch where relayAllowed {
                logger.notice("no public endpoint, so no punching: \(error.description)")
            }
        }
        let offer = try await signal(to: address, port: port, from: ours?.endpoint)
        let peer = offer.peer
        let token = LinkToken([UInt8](offer.token))
        var punchFailure: SocketError? = nil
        if let ours, offer.endpoint.port != 0 {
            let proof = DirectPath.Proof(token: token, connectionID: offer.connectionID, initiator: true)
            do {
                let id = offer.connectionID
                let fd = try await direct.punch(
                    from: ours.port, to: Endpoint(offer.endpoint), proving: proof,
                    until: .now + punchDeadline(towards: address), listening: false,
                    abandoned: { [self] in withdrawal(of: id) != nil })
                return established(offer, fd: fd, path: .direct, localPort: ours.port, port: port, started: started, deliver: deliver)
            } catch {
                punchFailure = error
            }
        }
        // An early offer the target then refused (or never answered): no relay either.
        if let withdrawn = withdrawal(of: offer.connectionID) {
            relay?.giveUp(offer.connectionID, reason: withdrawn.description)
            throw withdrawn
        }
        guard relayAllowed, let relay else {
            let failure = punchFailure ?? SocketError(EHOSTUNREACH, "the peer only accepts relayed connections, and the relay is forbidden here")
            relay?.giveUp(offer.connectionID, reason: "no direct path: \(failure.description)")
            report(offer.connectionID, established: false, setup: ContinuousClock.now - started, peer: address, port: port,
                initiator: true, failure: failure.description)
            throw failure
        }
        if let punchFailure {
            logger.info("no direct link in time; relaying", metadata: ["peer": "\(peer.name)", "why": "\(punchFailure.description)"])
            punchFailed(towards: address)
        }
        var context = RelayStreamContext(token: token, initiator: true, peer: address, port: port, started: started)
        context.punchFailedRecently = punchFailedRecently
        do {
            let fd = try await relay.open(offer.connectionID, context: context)
            return established(
                offer, fd: fd, path: .relay, localPort: RelayFrame.initiatorPort(connectionID: offer.connectionID), port: port,
                started: started, deliver: deliver)
        } catch {
            report(offer.connectionID, established: false, setup: ContinuousClock.now - started, peer: address, port: port,
                initiator: true, failure: error.description)
            throw error
        }
    }

    /// Logs "link up" (info). Its metadata is built only where the level shows the line: every connect passes here.
    func logLinkUp(peer: String, port: UInt16, path: String, setup: Duration, _ more: @autoclosure () -> Logger.Metadata) {
        guard logger.logLevel <= .info else { return }
        var metadata: Logger.Metadata = ["peer": "\(peer)", "port": "\(port)", "path": "\(path)", "setup": "\(setup)"]
        metadata.merge(more()) { $1 }
        logger.info("link up", metadata: metadata)
    }

    /// Logs why an app's connect failed: a notice, but only a debug line once the node is leaving the mesh (the
    /// app has exited, and the connects it left under way fail with its session; nobody waits for them).
    func logConnectFailure(to address: IPv4Address, port: UInt16, _ error: SocketError) {
        let line: Logger.Message = "connect to \(address):\(port) failed: \(error.description)"
        if session.hasLeft { logger.debug(line) } else { logger.notice(line) }
    }

    /// Asks the broker to connect us to `port` at `address` (or, with `spare`, for a spare link), offering our
    /// public endpoint to punch towards (none: we relay); returns the broker's offer with the peer's endpoint and
    /// the link token.
    func signal(to address: IPv4Address, port: UInt16, from endpoint: Endpoint?, spare: Bool = false) async throws(SocketError)
        -> Boxermesh_V1_ConnectOffer
    {
        var request = Boxermesh_V1_ConnectRequest()
        request.targetAddress = address.value
        request.port = UInt32(port)
        request.spare = spare
        request.endpoint = (endpoint ?? Endpoint(IPv4Address.any, port: 0)).message
        do {
            // While the broker is away (restarting) the request waits for it, up to the node's connect timeout.
            let reply = try await session.request(.connectRequest(request), timeout: session.connectTimeout)
            guard case .connectOffer(let offer) = reply.body else {
                throw SocketError(EPROTO, "the broker answered a connect with \(String(describing: reply.body))")
            }
            return offer
        } catch let refusal as BrokerRefusal {
            throw SocketError(Self.errno(for: refusal.code), refusal.message)
        } catch let error as SocketError {
            throw error
        } catch ControlError.timeout {
            logger.warning("connect failed: the broker is unreachable (no answer within \(session.connectTimeout))",
                metadata: ["peer": "\(address)", "port": "\(port)"])
            throw SocketError(ETIMEDOUT, "the broker is unreachable: no answer within \(session.connectTimeout)")
        } catch {
            throw SocketError(ETIMEDOUT, "signalling through the broker failed: \(error)")
        }
    }

    /// The connection is up: `deliver` it to the app, run `delivered` (what must follow the app's socket at once),
    /// then report it and follow it for the tap. It tells the app's shim how long a lent spare's claim for this
    /// port may skip its answer: a connection the peer took just now (not one claimed without an answer) starts
    /// that time anew.
    func established(
        _ offer: Boxermesh_V1_ConnectOffer, fd: Int32, path: Boxermesh_V1_Path, localPort: UInt16, port: UInt16,
        started: ContinuousClock.Instant, spare: SpareUse? = nil, deliver: (Link) -> Void, delivered: () -> Void = {}
    ) -> Link {
        var link = link(offer, fd: fd, path: path, localPort: localPort, port: port)
        if spare == nil || spare == .answered { acceptedLately(port, by: offer.peer.ipv4) }
        link.connection.listenerMs = UInt32(listenerTrust(port, at: offer.peer.ipv4) / .milliseconds(1))
        let setup = ContinuousClock.now - started
        deliver(link)
        delivered()
        settle(offer, fd: fd, path: path, port: port, setup: setup, spare: spare)
        return link
    }

    /// The connection as the app sees it.
    func link(_ offer: Boxermesh_V1_ConnectOffer, fd: Int32, path: Boxermesh_V1_Path, localPort: UInt16, port: UInt16) -> Link {
        var connection = Boxermesh_V1_ShimConnection()
        connection.localAddress = me.address
        connection.localPort = UInt32(localPort)
        connection.peerAddress = offer.peer.address
        connection.peerPort = UInt32(port)
        connection.path = path == .relay ? "relay" : "direct"
        if path == .relay { connection.connection = offer.connectionID }
        return Link(fd: fd, connection: connection)
    }

    /// The bookkeeping of a connection that is up (its log line, its report, its flow), while the node still
    /// holds its socket: after the app has it, where the connect is in a hurry.
    func settle(
        _ offer: Boxermesh_V1_ConnectOffer, fd: Int32, path: Boxermesh_V1_Path, port: UInt16, setup: Duration, spare: SpareUse? = nil
    ) {
        logLinkUp(peer: offer.peer.name, port: port, path: path == .relay ? "relay" : "direct", setup: setup, {
            var more: Logger.Metadata = [:]
            if path == .direct { more["via"] = "\(Endpoint(offer.endpoint))" }
            if offer.advertised { more["offer"] = "early" }
            more.merge(spare?.metadata ?? [:]) { $1 }
            return more
        }())
        report(offer.connectionID, established: true, setup: setup, peer: offer.peer.ipv4, port: port, initiator: true, path: path)
        flows?.track(fd: fd, id: offer.connectionID, initiator: true, peer: offer.peer, port: port, path: path,
            preamble: spare?.preamble(initiator: true))
    }

    /// A connection to our own mesh address is a plain loopback connection to the app.
    private func loopback(port: UInt16) async throws(SocketError) -> Link {
        let me = me
        do {
            return try await direct.blocking {
                let socket = try DialSocket(server: Endpoint(IPv4Address.loopback, port: port), transport: .tcp, localPort: nil, reuse: false)
                do {
                    try socket.connect(deadline: .now + Timing.Choice.loopbackConnect, timeout: Timing.Choice.loopbackConnect)
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
        } catch where error.code == ECONNREFUSED {
            throw SocketError(ECONNREFUSED, "nothing listens on port \(port) of this node")
        } catch {
            throw SocketError(ECONNREFUSED, error.description)
        }
    }

    static func errno(for code: Boxermesh_V1_ErrorCode) -> Int32 {
        switch code {
        case .errorConnectionRefused: ECONNREFUSED
        case .errorNotFound, .errorPeerUnreachable: EHOSTUNREACH
        default: ECONNREFUSED
        }
    }
}
