import FoundationEssentials
import Glibc
import Logging
import WireFormat

/// Inbound: a connection the broker announces, from the broker's push to the app's accept().
extension LinkManager {
    /// The broker announced a connection to one of our ports. Called on the thread that reads the broker: where
    /// the broker already handed the requester our advertised endpoint, its SYN is on the way, so once the port
    /// is known to listen our punch starts here, before anything else; the rest (refuse or answer, wait, wake the
    /// app's accept()) goes on in a task.
    func accept(_ incoming: Boxermesh_V1_IncomingConnection) {
        if incoming.spare {
            Task { await acceptSpare(incoming) }
            return
        }
        let started = ContinuousClock.now
        // Before any punch: a link punched for a port nothing listens on would reach the requester's app.
        let listening = isListening(on: UInt16(truncatingIfNeeded: incoming.port))
        let race = LinkRace()
        var early: DirectPath.PunchPort? = nil
        if listening, incoming.hasAdvertised, incoming.endpoint.port != 0, punches {
            // An advert we no longer hold (never, unless the broker is confused): its port, as a port-keeping NAT
            // maps it, is still the best guess.
            let advertised = Endpoint(incoming.advertised)
            let ours = direct.takeAdvertised(advertised) ?? DirectPath.PunchPort(port: advertised.port, endpoint: advertised)
            punch(from: ours, for: incoming, race: race)
            early = ours
        }
        Task { await accept(incoming, listening: listening, race: race, punching: early, started: started) }
    }

    /// Refuses the connection, or answers with our endpoint (punching from it, if ``accept(_:)`` did not start
    /// already), and wakes the app's accept() with a signal connection once the link is up.
    private func accept(
        _ incoming: Boxermesh_V1_IncomingConnection, listening: Bool, race: LinkRace, punching early: DirectPath.PunchPort?,
        started: ContinuousClock.Instant
    ) async {
        let port = UInt16(truncatingIfNeeded: incoming.port)
        let id = incoming.connectionID
        var answer = Boxermesh_V1_ConnectAnswer()
        answer.connectionID = id
        // The requester has our advertised endpoint: advertise another once this connection is on its way.
        if incoming.hasAdvertised { advertise(after: Timing.Choice.relearnDelay, because: "the last one was used") }
        let peerPunches = incoming.endpoint.port != 0
        guard listening else {
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
        if relayAllowed, let relay {
            let context = RelayStreamContext(token: token, initiator: false, peer: incoming.peer.ipv4, port: port, started: started)
            relay.expect(id, context: context) { result in race.relayed(result) }
        } else {
            race.noRelay()
        }
        answer.accepted = true
        var ours = early
        if ours == nil, peerPunches, punches {
            do {
                let port = try await direct.punchPort()
                punch(from: port, for: incoming, race: race)
                ours = port
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
        if let ours {
            answer.endpoint = ours.endpoint.message
        } else {
            race.punchFailed(SocketError(EHOSTUNREACH, "not punching"))
        }
        if incoming.hasAdvertised {
            // The requester punches already; the broker only needs to know in time (a refusal would have gone at
            // once), so the answer waits with the reports, out of the way of the punch and its proofs.
            session.post(.connectAnswer(answer), within: Timing.Choice.reportDelay)
        } else {
            _ = try? await session.request(.connectAnswer(answer))
        }
        let outcome = await race.outcome(timeout: Timing.Choice.acceptorWait)
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
            (fd, path, connection.path, connection.connection) = (relayed, .relay, "relay", id)
            // The same port the connecting app sees as its own (it has no punched port on the relay).
            connection.peerPort = UInt32(RelayFrame.initiatorPort(connectionID: id))
        case .failed(let error):
            relay?.unexpect(id)
            logger.warning("inbound link failed", metadata: ["peer": "\(incoming.peer.name)", "port": "\(port)", "error": "\(error)"])
            report(id, established: false, setup: ContinuousClock.now - started, peer: incoming.peer.ipv4, port: port,
                initiator: false, failure: error.description)
            return
        }
        deliver(Link(fd: fd, connection: connection), id: id, peer: incoming.peer, port: port, path: path, started: started)
    }

    /// Punches from `ours` towards the requester on the blocking pool, no task around it, until the race is
    /// decided (the connecting side may relay first). Punching starts before the answer goes out: our SYNs open
    /// our NAT for the requester's.
    private func punch(from ours: DirectPath.PunchPort, for incoming: Boxermesh_V1_IncomingConnection, race: LinkRace) {
        let proof = DirectPath.Proof(token: LinkToken([UInt8](incoming.token)), connectionID: incoming.connectionID, initiator: false)
        let deadline = ContinuousClock.now + max(Timing.Choice.acceptorPunch, policy.punchTimeout ?? .zero)
        direct.punch(
            from: ours.port, to: Endpoint(incoming.endpoint), proving: proof, until: deadline, listening: true,
            abandoned: { race.isDecided }, then: { _, _ in }
        ) { result in
            switch result {
            case .success(let punched): if !race.direct(punched.fd) { RelaySockets.reset(punched.fd) }
            case .failure(let error): race.punchFailed(error)
            }
        }
    }

    /// An inbound link is up: follow it for the tap, and wake the app's accept() for it (resetting it when that
    /// fails). Does not block.
    func deliver(
        _ link: Link, id: UInt64, peer: Member, port: UInt16, path: Boxermesh_V1_Path, started: ContinuousClock.Instant,
        spare: SpareUse? = nil
    ) {
        logLinkUp(peer: peer.name, port: port, path: link.connection.path, setup: ContinuousClock.now - started, spare?.metadata ?? [:])
        flows?.track(fd: link.fd, id: id, initiator: false, peer: peer, port: port, path: path, preamble: spare?.preamble(initiator: false))
        announce(link, port: port)
    }

    /// Wakes the app's accept() with a signal connection from ``signalSource`` and parks the link until the shim
    /// takes it with the signal connection's source port. The link is parked before the signal connects: the app
    /// may accept and ask for it at once. A connection to our own host is up at once as a rule; only one that is
    /// not (the app's accept queue is full) waits, on the blocking pool. Also for a link taken whose accept the
    /// app gave up (a signal interrupted it): it waits for the next.
    func announce(_ link: Link, port: UInt16) {
        let socket: DialSocket
        let key: AcceptKey
        do {
            socket = try DialSocket(server: Endpoint(IPv4Address.loopback, port: port), transport: .tcp, localPort: nil, reuse: false)
            do {
                try socket.bind(to: Endpoint(Self.signalSource, port: 0))
                key = AcceptKey(port: port, signalPort: try socket.localEndpoint().port)
            } catch {
                socket.close()
                throw error
            }
        } catch {
            logger.warning("cannot announce an inbound link to the app", metadata: ["port": "\(port)", "error": "\(error)"])
            RelaySockets.reset(link.fd)
            return
        }
        state.withLock {
            $0.accepted[key] = ParkedLink(link: link, signalFD: socket.fd, deadline: .now + Timing.Choice.unacceptedLifetime)
        }
        do {
            if try socket.beginConnect() || socket.finishConnect(until: .now) { return signalled(key, socket, failure: nil) }
        } catch {
            return signalled(key, socket, failure: error)
        }
        let deadline = ContinuousClock.now + Timing.Choice.signalConnect
        Task {
            do {
                let connected = try await direct.blocking { try socket.finishConnect(until: deadline) }
                signalled(key, socket, failure: connected ? nil : SocketError(ETIMEDOUT, "no connection within \(Timing.Choice.signalConnect)"))
            } catch {
                signalled(key, socket, failure: error)
            }
        }
    }

    /// The signal connection of `key` connected, or failed. The entry takes the signal socket over, or it is gone
    /// already: taken by the app (the signal did land, whatever connect() said), or dropped with its link by the
    /// sweep or by unlisten(on:). A failed one takes its link with it.
    private func signalled(_ key: AcceptKey, _ socket: DialSocket, failure: (any Error)?) {
        let dropped = state.withLock { state -> ParkedLink?? in
            guard state.accepted[key] != nil else { return .some(nil) }
            guard failure == nil else { return state.accepted.removeValue(forKey: key) }
            state.accepted[key]?.connecting = false
            return nil
        }
        guard let dropped else { return }
        socket.close()
        if let dropped, let failure {
            let detail = (failure as? STUNClientError)?.detail ?? "\(failure)"  // DialSocket's errors name STUN
            logger.warning("cannot announce an inbound link to the app",
                metadata: ["port": "\(key.port)", "error": "the signal connection failed: \(detail)"])
            RelaySockets.reset(dropped.link.fd)
        }
    }

    /// Closes the signal socket of an entry just removed, unless its announcing task still owns it. A reset, not a
    /// FIN: every signal connection runs from one address to the app's one port, and TIME_WAIT on the node's end
    /// used up that address's ports within a minute at a new connection per request (redis-benchmark -k 0).
    private func release(_ entry: ParkedLink) {
        if !entry.connecting { RelaySockets.reset(entry.signalFD) }
    }

    /// The shim accepted the signal connection from `signalPort`: the link it stands for.
    func take(port: UInt16, signalPort: UInt16) -> Link? {
        guard let entry = state.withLock({ $0.accepted.removeValue(forKey: AcceptKey(port: port, signalPort: signalPort)) })
        else { return nil }
        release(entry)
        return entry.link
    }

    /// Resets announced links the app never accepted, every ``Timing/Choice/unacceptedSweep`` until cancelled.
    func dropUnaccepted() async {
        while (try? await Task.sleep(for: Timing.Choice.unacceptedSweep)) != nil {
            let now = ContinuousClock.now
            let stale = state.withLock { state in
                let stale = state.accepted.filter { $0.value.deadline <= now }
                for key in stale.keys { state.accepted[key] = nil }
                return stale.values
            }
            for entry in stale {
                logger.warning("the app did not accept an inbound link in time; resetting it")
                release(entry)
                RelaySockets.reset(entry.link.fd)
            }
        }
    }

    /// The app listens on `port` for mesh connections. The node's first endpoint for inbound connections is
    /// advertised now if it was not yet: a connection that comes in the node's first second then needs no round
    /// trip to this node before its punch (without an advert the broker asks this node for an endpoint first).
    /// An app that never listens keeps the first advert out of its start (``Timing/Choice/firstAdvert``).
    func listen(on port: UInt16) {
        let first = state.withLock { state -> Bool in
            state.listeners[port, default: 0] += 1
            guard state.advertisedAt == nil else { return false }
            state.advertisedAt = .now  // one advert, however many listen at once
            return true
        }
        if first { advertise(because: "the app listens") }
    }

    /// Whether the app announced `port` for mesh connections (the seccomp supervisor then takes over its accepts).
    func announces(port: UInt16) -> Bool { state.withLock { $0.listeners[port] != nil } }

    /// The app closed a listener on `port`. Once no socket listens there any more, links parked for it are reset
    /// at once: their signal connections died with the listener's queue, and their peers would otherwise wait for
    /// an answer until ``Timing/Choice/unacceptedLifetime``.
    func unlisten(on port: UInt16) {
        let announced = state.withLock { state -> Bool in
            guard let count = state.listeners[port] else { return false }
            state.listeners[port] = count > 1 ? count - 1 : nil
            state.listenerSeen[port] = nil
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
            release(entry)
            RelaySockets.reset(entry.link.fd)
        }
    }

    /// The app announced `port` and a socket really listens on it. Announcements outlive the process that made
    /// them (a server may daemonize and its parent exit), so the kernel's table has the last word.
    /// A listener the kernel showed is believed for ``Timing/Choice/listenerCheck``: asking costs a walk of the
    /// kernel's listening table, the most expensive single step of an inbound connection at a new one per request.
    /// A listener that closed meanwhile fails the signal connection, which resets the link.
    func isListening(on port: UInt16) -> Bool {
        let now = ContinuousClock.now
        let (announced, seen) = state.withLock { ($0.listeners[port] != nil, $0.listenerSeen[port]) }
        guard announced else { return false }
        if let seen, now - seen < Timing.Choice.listenerCheck { return true }
        guard KernelSockets.isListening(onWildcardPort: port) else { return false }
        state.withLock { $0.listenerSeen[port] = now }
        return true
    }
}
