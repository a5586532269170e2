import FoundationEssentials
import Glibc
import WireFormat

/// Spare links: proven direct links made ahead of the app's connects to a peer it already talks to (see
/// ``SparePool``). The connecting side claims one with the port its app wants; the accepting side answers on the
/// link and hands it to its app like any inbound link. One round trip on the link itself, no broker.
extension LinkManager {
    // MARK: Connecting side

    /// Connects through a spare link to `address`, if one is ready and alive; nil sends the caller the broker's
    /// way. A spare the peer or a NAT dropped is noticed before any app gets it — closed or reset on our side, or
    /// no answer to the claim in time — and the next one is tried. The claim asks for the spare's successor where
    /// our endpoint can be predicted, so the pool refills on the link itself.
    func connectBySpare(to address: IPv4Address, port: UInt16, started: ContinuousClock.Instant) async throws(SocketError) -> Link? {
        guard spares.enabled else { return nil }
        defer { makeSpares(towards: address) }
        while let spare = spares.take(towards: address) {
            let successor = successorPort(towards: address)
            let reply: SpareClaim.Reply
            do {
                reply = try await direct.blocking { [self] in try claim(spare, port: port, successor: successor?.endpoint) }
            } catch {
                if successor != nil { spares.abandonSuccessor(towards: address) }
                logger.info("a spare link was dead; trying the next", metadata: ["peer": "\(spare.peer.name)", "why": "\(error.description)"])
                RelaySockets.reset(spare.fd)
                continue
            }
            if let successor { makeSuccessor(of: spare, from: successor, to: reply.successor) }
            guard reply.answer == .accepted else {
                close(spare.fd)
                report(spare.id, established: false, setup: ContinuousClock.now - started, peer: address, port: port, initiator: true,
                    failure: "nothing listens on port \(port)", refused: true)
                throw SocketError(ECONNREFUSED, "\(spare.peer.name) refused port \(port): nothing listens there")
            }
            let offer = Boxermesh_V1_ConnectOffer.with {
                $0.connectionID = spare.id
                $0.peer = spare.peer
                $0.endpoint = spare.via.message
            }
            return established(offer, fd: spare.fd, path: .direct, localPort: spare.localPort, port: port, started: started, spare: true)
        }
        return nil
    }

    /// Claims `spare` for `port` (asking for its successor from `successor`, if given): checks it is still open on
    /// our side, sends the claim, and waits for the answer within max(``Timing/Choice/spareAnswer``, 4 × the
    /// broker round trip). Blocking.
    private func claim(_ spare: SparePool.Spare, port: UInt16, successor: Endpoint?) throws(SocketError) -> SpareClaim.Reply {
        // Nothing may be readable on a held spare: data there is the peer's FIN, a reset, or bytes it must not send.
        var entry = pollfd(fd: spare.fd, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, 0) != 0 { throw SocketError(ECONNRESET, "the peer closed the spare link") }
        try FixedMessage.send(SpareClaim.claim(port: port, successor: successor), on: spare.fd, "spare-link claim")
        let wait = max(Timing.Choice.spareAnswer, (direct.brokerRTT ?? .zero) * 4)
        let bytes = try FixedMessage.receive(SpareClaim.answerSize, from: spare.fd, until: .now + wait, "answer to the spare-link claim")
        do {
            return try SpareClaim.reply(from: bytes)
        } catch {
            throw SocketError(EPROTO, error.description)
        }
    }

    /// A port to punch the successor of a spare towards `address` from, reserved in the pool: only where the
    /// pool wants one more and our endpoint can be predicted without the reflector (the claim cannot wait for it).
    private func successorPort(towards address: IPv4Address) -> DirectPath.PunchPort? {
        guard punches, !session.hasLeft, spares.reserveSuccessor(towards: address) else { return nil }
        guard let port = try? direct.predictedPunchPort() else {
            spares.abandonSuccessor(towards: address)
            return nil
        }
        return port
    }

    /// The claim of `spare` asked for its successor from `ours`: punch it towards `theirs` (none: the peer made
    /// none) in the background, with the id and token both ends derive from the spare's.
    private func makeSuccessor(of spare: SparePool.Spare, from ours: DirectPath.PunchPort, to theirs: Endpoint?) {
        let peer = spare.peer.ipv4
        guard let theirs, let id = SpareClaim.successorID(of: spare.id) else {
            spares.abandonSuccessor(towards: peer)
            return
        }
        let token = spare.token.successor(connectionID: id)
        Task {
            do throws(SocketError) {
                try await punchSpare(from: ours, to: theirs, id: id, token: token, peer: spare.peer, made: "on a claimed spare")
            } catch {
                spares.failed(towards: peer, refused: false)
                logger.debug("no spare link", metadata: ["peer": "\(spare.peer.name)", "why": "\(error.description)"])
            }
        }
    }

    /// The app connects to `address`: starts making the spares the pool wants towards it (none once the node is
    /// leaving, nor towards a peer punching failed with lately: its connections relay).
    func makeSpares(towards address: IPv4Address) {
        guard punches, !session.hasLeft, recentPunchFailure(towards: address) == nil else { return }
        for _ in 0..<spares.reserve(towards: address) {
            Task { await makeSpare(towards: address) }
        }
    }

    /// Signals a spare link through the broker, punches and proves it, and gives it to the pool.
    private func makeSpare(towards address: IPv4Address) async {
        // Refused: the broker or the peer said no (it holds no more, does not punch, or left); anything else (a slow
        // reflector, a lost punch) may pass.
        var refused = false
        do throws(SocketError) {
            let ours = try await direct.sparePunchPort()
            let offer: Boxermesh_V1_ConnectOffer
            do {
                offer = try await signal(to: address, port: 0, from: ours.endpoint, spare: true)
            } catch {
                refused = error.code != ETIMEDOUT
                throw error
            }
            guard offer.endpoint.port != 0 else {
                refused = true
                throw SocketError(ECONNREFUSED, "the peer keeps no spare links")
            }
            try await punchSpare(
                from: ours, to: Endpoint(offer.endpoint), id: offer.connectionID, token: LinkToken([UInt8](offer.token)),
                peer: offer.peer, made: "through the broker")
        } catch {
            spares.failed(towards: address, refused: refused)
            logger.debug("no spare link", metadata: ["peer": "\(address)", "why": "\(error.description)"])
        }
    }

    /// Punches a spare link from `ours` to the peer's `theirs`, proves it as connection `id`, and gives it to the
    /// pool.
    private func punchSpare(
        from ours: DirectPath.PunchPort, to theirs: Endpoint, id: UInt64, token: LinkToken, peer: Member, made: String
    ) async throws(SocketError) {
        let proof = DirectPath.Proof(token: token, connectionID: id, initiator: true)
        let fd: Int32
        do {
            fd = try await direct.punch(from: ours.port, to: theirs, proving: proof, until: .now + Timing.Choice.sparePunch, listening: false)
        } catch {
            if ours.predicted { direct.predictionFailed() }
            throw error
        }
        let spare = SparePool.Spare(fd: fd, id: id, peer: peer, localPort: ours.port, via: theirs, token: token)
        logger.debug("spare link ready", metadata: ["peer": "\(peer.name)", "endpoint": "\(ours.origin)", "made": "\(made)"])
        if !spares.made(spare) { close(fd) }
    }

    /// Closes the spares of peers the app stopped connecting to, every ``Timing/Choice/unacceptedSweep``.
    func dropIdleSpares() async {
        while (try? await Task.sleep(for: Timing.Choice.unacceptedSweep)) != nil {
            for spare in spares.sweep() { close(spare.fd) }
        }
    }

    /// `peer` left or expired: its spares are dead.
    func forgetSpares(of peer: IPv4Address) {
        for spare in spares.forget(peer) { close(spare.fd) }
    }

    // MARK: Accepting side

    /// The broker announced a spare link from a peer: punch and prove it, then hold it until claimed. Refused when
    /// this node does not punch or holds as many as it will.
    func acceptSpare(_ incoming: Boxermesh_V1_IncomingConnection) async {
        var answer = Boxermesh_V1_ConnectAnswer()
        answer.connectionID = incoming.connectionID
        guard punches, inbox.hasRoom else {
            answer.reason = punches ? "this node holds \(inbox.capacity) spare links already" : "this node does not punch"
            _ = try? await session.request(.connectAnswer(answer))
            return
        }
        let ours: DirectPath.PunchPort
        do {
            ours = try await direct.sparePunchPort()
        } catch {
            answer.reason = error.description
            _ = try? await session.request(.connectAnswer(answer))
            return
        }
        answer.accepted = true
        answer.endpoint = ours.endpoint.message
        // As for any inbound link, punching starts before the answer goes out.
        holdSpare(from: ours, to: Endpoint(incoming.endpoint), id: incoming.connectionID, token: LinkToken([UInt8](incoming.token)),
            peer: incoming.peer)
        _ = try? await session.request(.connectAnswer(answer))
    }

    /// Punches a spare link a peer makes from `theirs` (listening on our end too), proves it as connection `id`,
    /// and holds it until claimed. In the background.
    private func holdSpare(from ours: DirectPath.PunchPort, to theirs: Endpoint, id: UInt64, token: LinkToken, peer: Member) {
        let (direct, inbox, logger) = (direct, inbox, logger)
        Task {
            do throws(SocketError) {
                let proof = DirectPath.Proof(token: token, connectionID: id, initiator: false)
                let fd = try await direct.punch(
                    from: ours.port, to: theirs, proving: proof, until: .now + Timing.Choice.sparePunch, listening: true)
                logger.debug("spare link held", metadata: ["peer": "\(peer.name)", "endpoint": "\(ours.origin)"])
                inbox.hold(SpareInbox.Held(fd: fd, id: id, peer: peer, localPort: ours.port, via: theirs, token: token))
            } catch {
                if ours.predicted { direct.predictionFailed() }
                logger.debug("no spare link", metadata: ["peer": "\(peer.name)", "why": "\(error.description)"])
            }
        }
    }

    /// Holds the spare links peers make to us until cancelled.
    func holdSpares() async {
        do {
            try await inbox.run { [self] held in answerClaim(held) }
        } catch {
            logger.error("spare links cannot be held: \(error)")
        }
    }

    /// A held spare link became readable: the peer claims it for a port (answer, and hand it to the app that
    /// listens there), or closed it. Runs on the inbox's thread, with no hop to another: the claim is one segment,
    /// already here, and the answer fits the empty socket buffer — only a claim cut in two can hold the thread, for
    /// ``Timing/Choice/spareClaimRead`` at most.
    private func answerClaim(_ held: SpareInbox.Held) {
        let started = ContinuousClock.now
        let claim: SpareClaim.Claim
        do throws(SocketError) {
            let bytes = try FixedMessage.receive(SpareClaim.claimSize, from: held.fd, until: started + Timing.Choice.spareClaimRead, "spare-link claim")
            do {
                claim = try SpareClaim.claim(from: bytes)
            } catch {
                logger.warning("a peer sent a malformed spare-link claim; resetting the link",
                    metadata: ["peer": "\(held.peer.name)", "why": "\(error.description)"])
                RelaySockets.reset(held.fd)
                return
            }
        } catch {
            // The peer dropped it (idle, or it left): nothing to say.
            close(held.fd)
            return
        }
        let port = claim.port
        let accepted = isListening(on: port)
        // The successor it asks for, where we may hold one more and can say our endpoint at once.
        var successor: (ours: DirectPath.PunchPort, theirs: Endpoint, id: UInt64)? = nil
        if let theirs = claim.successor, let id = SpareClaim.successorID(of: held.id), punches, !session.hasLeft, inbox.hasRoom,
            let ours = try? direct.predictedPunchPort()
        {
            successor = (ours, theirs, id)
        }
        do {
            try FixedMessage.send(
                SpareClaim.answer(accepted ? .accepted : .refused, successor: successor?.ours.endpoint), on: held.fd, "spare-link answer")
        } catch {
            logger.info("a claimed spare link failed before it reached the app", metadata: ["peer": "\(held.peer.name)", "why": "\(error.description)"])
            RelaySockets.reset(held.fd)
            return
        }
        if let successor {
            holdSpare(from: successor.ours, to: successor.theirs, id: successor.id, token: held.token.successor(connectionID: successor.id),
                peer: held.peer)
        }
        guard accepted else {
            logger.info("refused a connection", metadata: ["peer": "\(held.peer.name)", "port": "\(port)"])
            close(held.fd)  // a FIN after the answer: the peer reads the answer first
            return
        }
        var connection = Boxermesh_V1_ShimConnection()
        connection.localAddress = me.address
        connection.localPort = UInt32(port)
        connection.peerAddress = held.peer.address
        connection.peerPort = UInt32(held.via.port)
        connection.path = "direct"
        deliver(Link(fd: held.fd, connection: connection), id: held.id, peer: held.peer, port: port, path: .direct,
            started: started, spare: true)
    }
}
