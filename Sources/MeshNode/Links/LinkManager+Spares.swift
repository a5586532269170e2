import FoundationEssentials
import Glibc
import Logging
import WireFormat
import ZeroMQ

/// Spare links: proven direct links made ahead of the app's connects to a peer it already talks to (see
/// ``SparePool``). The connecting side claims one with the port its app wants; the accepting side hands it to its
/// app like any inbound link. As a rule the claim is not answered, and the connect returns as soon as it is sent: no
/// broker, no punch, no round trip (``SpareClaim``).
extension LinkManager {
    /// How a connection came from a spare link: whether its claim waited for the peer's answer, or the app's shim
    /// claimed a lent spare itself (without an answer, like `unanswered`).
    enum SpareUse: Sendable {
        case answered, unanswered, lent

        /// For the "link up" line.
        var metadata: Logger.Metadata { ["spare": "yes", "claim": "\(self)"] }

        /// What the nodes exchanged on the link before the app's bytes: both proofs, the offer (accepting side to
        /// connecting side), the claim (the other way), and the answer if one was asked for.
        func preamble(initiator: Bool) -> (sent: UInt64, received: UInt64) {
            let proof = FlowMonitor.preamble(.direct)
            let toInitiator = UInt64(SpareClaim.offerSize + (self == .answered ? SpareClaim.answerSize : 0))
            let fromInitiator = UInt64(SpareClaim.claimSize)
            return initiator
                ? (proof.sent + fromInitiator, proof.received + toInitiator) : (proof.sent + toInitiator, proof.received + fromInitiator)
        }
    }

    // MARK: Connecting side

    /// Connects through a spare link to `address` at once: where a spare is ready, the kernel heard from the peer on
    /// it within ``Timing/Choice/spareFreshness``, and the peer took a connection on `port` within
    /// ``Timing/Choice/listenerMemory``, the claim goes out asking for no answer and `deliver` gets the link at once;
    /// the node's bookkeeping follows, and the link is returned: the caller owns its socket after that. Nil
    /// otherwise: the caller goes the waiting way (``connectBySpare(to:port:started:deliver:)``, then the broker).
    /// Never blocks: the shim's thread calls it before it hands a connect to a task.
    func connectAtOnce(to address: IPv4Address, port: UInt16, deliver: (Link) -> Void) -> Link? {
        let started = ContinuousClock.now
        guard spares.enabled, isAccepting(port, at: address, now: started) else { return nil }
        while let spare = spares.take(towards: address, onlyIf: { Self.isFresh($0.fd) }) {
            let successor: DirectPath.PunchPort?
            do {
                successor = try sendClaim(spare, port: port, answered: false, corked: true)
            } catch {
                logger.info("a spare link was dead; trying the next", metadata: ["peer": "\(spare.peer.name)", "why": "\(error.description)"])
                RelaySockets.reset(spare.fd)
                continue
            }
            return established(spare, port: port, started: started, .unanswered, deliver: deliver) { [self] in
                Self.cork(spare.fd, false)  // the claim leaves now, as the app wakes
                if let successor { makeSuccessor(of: spare, from: successor) }
                makeSpares(towards: address)
            }
        }
        return nil
    }

    /// Connects through a spare link to `address`, waiting for the peer's answer to the claim; nil sends the caller
    /// the broker's way. A spare the peer or a NAT dropped is noticed before any app gets it — closed or reset on
    /// our side, or no answer to the claim in time — and the next one is tried.
    func connectBySpare(
        to address: IPv4Address, port: UInt16, started: ContinuousClock.Instant, deliver: (Link) -> Void
    ) async throws(SocketError) -> Link? {
        guard spares.enabled else { return nil }
        defer { makeSpares(towards: address) }
        while let spare = spares.take(towards: address) {
            let (answer, successor): (SpareClaim.Answer, DirectPath.PunchPort?)
            do {
                (answer, successor) = try await direct.blocking { [self] in try claim(spare, port: port) }
            } catch {
                logger.info("a spare link was dead; trying the next", metadata: ["peer": "\(spare.peer.name)", "why": "\(error.description)"])
                RelaySockets.reset(spare.fd)
                continue
            }
            if let successor { makeSuccessor(of: spare, from: successor) }
            guard answer == .accepted else {
                state.withLock { _ = $0.accepting.removeValue(forKey: PeerPort(peer: address, port: port)) }
                close(spare.fd)
                report(spare.id, established: false, setup: ContinuousClock.now - started, peer: address, port: port, initiator: true,
                    failure: "nothing listens on port \(port)", refused: true)
                throw SocketError(ECONNREFUSED, "\(spare.peer.name) refused port \(port): nothing listens there")
            }
            return established(spare, port: port, started: started, .answered, deliver: deliver)
        }
        return nil
    }

    /// Holds back what is written to `fd` (TCP_CORK), or sends it. The app's first bytes may join an uncorked
    /// claim's segment, after it; an app that corks its socket at once has its cork lifted once, early.
    static func cork(_ fd: Int32, _ on: Bool) {
        var value: Int32 = on ? 1 : 0
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_CORK, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// A spare's claim may skip the answer while the kernel heard from the peer on it lately (its keepalive probes
    /// were answered): a path that died longer ago is left to a claim that waits.
    private static func isFresh(_ fd: Int32) -> Bool {
        guard let silence = LinkLiveness.silence(on: fd) else { return false }
        return silence <= Timing.Choice.spareFreshness
    }

    /// Whether `peer` took a connection on `port` within ``Timing/Choice/listenerMemory``.
    private func isAccepting(_ port: UInt16, at peer: IPv4Address, now: ContinuousClock.Instant) -> Bool {
        listenerTrust(port, at: peer, now: now) > .zero
    }

    /// How much longer a claim for `port` at `peer` may skip its answer: the rest of ``Timing/Choice/listenerMemory``
    /// since the peer last took a connection there (zero: none may).
    func listenerTrust(_ port: UInt16, at peer: IPv4Address, now: ContinuousClock.Instant = .now) -> Duration {
        state.withLock { state in
            state.accepting[PeerPort(peer: peer, port: port)].map { max(.zero, Timing.Choice.listenerMemory - (now - $0)) } ?? .zero
        }
    }

    /// `peer` took a connection on `port` just now (a claim it answered, or a connect through the broker).
    func acceptedLately(_ port: UInt16, by peer: IPv4Address) {
        let now = ContinuousClock.now
        state.withLock { state in
            if state.accepting.count >= 256 { state.accepting = state.accepting.filter { now - $0.value < Timing.Choice.listenerMemory } }
            state.accepting[PeerPort(peer: peer, port: port)] = now
        }
    }

    /// Sends the claim of `spare` for `port` once nothing is readable on it, asking for its successor where the
    /// peer offered one and the pool wants it; returns the successor's port, reserved. Throws when the spare is
    /// dead (the caller resets it and tries the next). Never blocks: the socket's buffer is empty. `corked`, the
    /// claim only waits in the socket until the caller uncorks it (``cork(_:_:)``): the kernel carries a segment
    /// through both NATs inside the call that releases it, which a connect need not wait for.
    private func sendClaim(
        _ spare: SparePool.Spare, port: UInt16, answered: Bool, corked: Bool = false
    ) throws(SocketError) -> DirectPath.PunchPort? {
        // Nothing may be readable on a held spare: data there is the peer's FIN, a reset, or bytes it must not send.
        var entry = pollfd(fd: spare.fd, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, 0) != 0 { throw SocketError(ECONNRESET, "the peer closed the spare link") }
        let successor = spare.successor == nil ? nil : successorPort(towards: spare.peer.ipv4)
        do {
            let claim = SpareClaim.Claim(port: port, answered: answered, successor: successor?.endpoint)
            if corked { Self.cork(spare.fd, true) }
            try FixedMessage.send(SpareClaim.claim(claim), on: spare.fd, "spare-link claim")
        } catch {
            if successor != nil { spares.abandonSuccessor(towards: spare.peer.ipv4) }
            throw error
        }
        return successor
    }

    /// Claims `spare` for `port` and waits for the answer within max(``Timing/Choice/spareAnswer``, 4 × the broker
    /// round trip); returns it with the successor's port, if the claim asked for one. Blocking.
    private func claim(_ spare: SparePool.Spare, port: UInt16) throws(SocketError) -> (SpareClaim.Answer, DirectPath.PunchPort?) {
        let successor = try sendClaim(spare, port: port, answered: true)
        do throws(SocketError) {
            let wait = max(Timing.Choice.spareAnswer, (direct.brokerRTT ?? .zero) * 4)
            let bytes = try FixedMessage.receive(SpareClaim.answerSize, from: spare.fd, until: .now + wait, "answer to the spare-link claim")
            do {
                return (try SpareClaim.answer(from: bytes), successor)
            } catch {
                throw SocketError(EPROTO, error.description)
            }
        } catch {
            if successor != nil { spares.abandonSuccessor(towards: spare.peer.ipv4) }
            throw error
        }
    }

    /// A claimed spare is the app's connection now: with the link's own keepalive (set before the app has it: its
    /// own settings follow and override), reported and followed.
    private func established(
        _ spare: SparePool.Spare, port: UInt16, started: ContinuousClock.Instant, _ use: SpareUse, deliver: (Link) -> Void,
        delivered: () -> Void = {}
    ) -> Link {
        LinkLiveness.apply(to: spare.fd)
        return established(
            spare.offer, fd: spare.fd, path: .direct, localPort: spare.localPort, port: port, started: started, spare: use,
            deliver: deliver, delivered: delivered)
    }

    /// A port to punch the successor of a spare towards `address` from, reserved in the pool: only where the
    /// pool wants one more and our endpoint can be predicted without the reflector (the claim cannot wait for it).
    func successorPort(towards address: IPv4Address) -> DirectPath.PunchPort? {
        guard punches, !session.hasLeft, spares.reserveSuccessor(towards: address) else { return nil }
        guard let port = try? direct.predictedPunchPort() else {
            spares.abandonSuccessor(towards: address)
            return nil
        }
        return port
    }

    /// The claim of `spare` asked for its successor from `ours`: punch it towards the endpoint the peer offered,
    /// in the background, with the id and token both ends derive from the spare's.
    func makeSuccessor(of spare: SparePool.Spare, from ours: DirectPath.PunchPort) {
        let peer = spare.peer.ipv4
        guard let theirs = spare.successor, let id = SpareClaim.successorID(of: spare.id) else {
            spares.abandonSuccessor(towards: peer)
            return
        }
        let token = spare.token.successor(connectionID: id)
        punchSpare(from: ours, to: theirs, id: id, token: token, peer: spare.peer, made: "on a claimed spare") { [self] error in
            noSpare(towards: peer, refused: false, error)
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

    /// Signals a spare link through the broker, then has it punched, proven and given to the pool.
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
            punchSpare(
                from: ours, to: Endpoint(offer.endpoint), id: offer.connectionID, token: LinkToken([UInt8](offer.token)),
                peer: offer.peer, made: "through the broker"
            ) { [self] error in noSpare(towards: address, refused: false, error) }
        } catch {
            noSpare(towards: address, refused: refused, error)
        }
    }

    /// No spare link towards `address` this time: the pool counts the failure (a refusal holds spares back longer).
    private func noSpare(towards address: IPv4Address, refused: Bool, _ error: SocketError) {
        spares.failed(towards: address, refused: refused)
        logger.debug("no spare link", metadata: ["peer": "\(address)", "why": "\(error.description)"])
    }

    /// Punches a spare link from `ours` to the peer's `theirs`, proves it as connection `id`, reads the peer's
    /// successor offer, and gives it to the pool, in the background; `failed` hears why not. Its keepalive probes
    /// every ``Timing/Choice/spareProbeSeconds``, so a claim can tell it is fresh.
    private func punchSpare(
        from ours: DirectPath.PunchPort, to theirs: Endpoint, id: UInt64, token: LinkToken, peer: Member, made: String,
        failed: @escaping @Sendable (SocketError) -> Void
    ) {
        let proof = DirectPath.Proof(token: token, connectionID: id, initiator: true)
        direct.punch(
            from: ours.port, to: theirs, proving: proof, until: .now + Timing.Choice.sparePunch, listening: false,
            then: { fd, deadline throws(SocketError) -> Endpoint? in
                let bytes = try FixedMessage.receive(SpareClaim.offerSize, from: fd, until: deadline, "spare-link offer")
                let offer: Endpoint?
                do throws(SpareClaim.Malformed) {
                    offer = try SpareClaim.offer(from: bytes)
                } catch {
                    throw SocketError(EPROTO, error.description)
                }
                LinkLiveness.apply(to: fd, idle: Timing.Choice.spareProbeSeconds)
                return offer
            }
        ) { [self] outcome in
            switch outcome {
            case .success(let (fd, successor)):
                let spare = SparePool.Spare(fd: fd, id: id, peer: peer, localPort: ours.port, via: theirs, token: token, successor: successor)
                logger.debug("spare link ready", metadata: ["peer": "\(peer.name)", "endpoint": "\(ours.origin)", "made": "\(made)"])
                if spares.made(spare) { lendSpares(towards: peer.ipv4) } else { close(fd) }
            case .failure(let error):
                if ours.predicted { direct.predictionFailed() }
                failed(error)
            }
        }
    }

    /// Closes the spares of peers the app stopped connecting to, every ``Timing/Choice/unacceptedSweep``.
    func dropIdleSpares() async {
        while (try? await Task.sleep(for: Timing.Choice.unacceptedSweep)) != nil {
            let (closing, recalling) = spares.sweep()
            for spare in closing { close(spare.fd) }
            for loan in recalling { loan.borrower.recall(loan.spare.id) }
        }
    }

    /// `peer` left or expired: its spares are dead.
    func forgetSpares(of peer: IPv4Address) {
        let (gone, loans) = spares.forget(peer)
        for spare in gone { close(spare.fd) }
        // A lent spare's other copy is the app's: a shutdown ends the link for both, and the shim finds it closed.
        for loan in loans {
            shutdown(loan.spare.fd, Int32(SHUT_RDWR))
            close(loan.spare.fd)
        }
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
    /// offers the endpoint we will punch its successor from (predicted, where we can predict and hold one more),
    /// and holds it until claimed. In the background.
    private func holdSpare(from ours: DirectPath.PunchPort, to theirs: Endpoint, id: UInt64, token: LinkToken, peer: Member) {
        let (direct, inbox, logger) = (direct, inbox, logger)
        let successor = punches && !session.hasLeft && inbox.hasRoom ? (try? direct.predictedPunchPort())??.endpoint : nil
        // The offer goes with our proof, in one segment, once the peer's proof checked out.
        let proof = DirectPath.Proof(token: token, connectionID: id, initiator: false, answer: SpareClaim.offer(successor: successor))
        direct.punch(
            from: ours.port, to: theirs, proving: proof, until: .now + Timing.Choice.sparePunch, listening: true, then: { _, _ in }
        ) { outcome in
            switch outcome {
            case .success(let (fd, _)):
                logger.debug("spare link held", metadata: ["peer": "\(peer.name)", "endpoint": "\(ours.origin)"])
                inbox.hold(SpareInbox.Held(fd: fd, id: id, peer: peer, localPort: ours.port, via: theirs, token: token, successor: successor))
            case .failure(let error):
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

    /// A held spare link became readable: the peer claims it for a port (hand it to the app that listens there,
    /// answering first if the claim asks), or closed it. Runs on the inbox's thread, with no hop to another: the
    /// claim is one segment, already here, and an answer fits the empty socket buffer — only a claim cut in two
    /// can hold the thread, for ``Timing/Choice/spareClaimRead`` at most.
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
        if !claim.answered {
            // Acknowledged now: the link answered its proof with the offer, so the kernel would hold this ACK back
            // (up to 40 ms) for a reply that never comes, and the peer's next small write waits for it (Nagle).
            var on: Int32 = 1
            _ = setsockopt(held.fd, Int32(IPPROTO_TCP), TCP_QUICKACK, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        let port = claim.port
        let accepted = isListening(on: port)
        if claim.answered {
            do {
                try FixedMessage.send(SpareClaim.answer(accepted ? .accepted : .refused), on: held.fd, "spare-link answer")
            } catch {
                logger.info("a claimed spare link failed before it reached the app", metadata: ["peer": "\(held.peer.name)", "why": "\(error.description)"])
                RelaySockets.reset(held.fd)
                return
            }
        }
        // The successor we offered, if the claim wants it: once the link is on its way to the app, which waits.
        defer {
            if let theirs = claim.successor, let ours = held.successor, let id = SpareClaim.successorID(of: held.id), punches, !session.hasLeft {
                holdSpare(from: DirectPath.PunchPort(port: ours.port, endpoint: ours, predicted: true), to: theirs, id: id,
                    token: held.token.successor(connectionID: id), peer: held.peer)
            }
        }
        guard accepted else {
            guard claim.answered else {
                // The peer's app has the link already: a reset is the refusal it can see.
                logger.info("refused a connection claimed without an answer; resetting it", metadata: ["peer": "\(held.peer.name)", "port": "\(port)"])
                RelaySockets.reset(held.fd)
                report(held.id, established: false, setup: ContinuousClock.now - started, peer: held.peer.ipv4, port: port, initiator: false,
                    failure: "nothing listens on port \(port): the link, claimed without an answer, was reset", refused: true)
                return
            }
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
            started: started, spare: claim.answered ? .answered : .unanswered)
    }
}
