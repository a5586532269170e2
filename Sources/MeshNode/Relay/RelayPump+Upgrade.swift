import FoundationEssentials
import Glibc
import WireFormat

/// Moving a relayed connection onto a direct link without losing, duplicating or reordering a byte.
///
/// The initiator starts an attempt (1 s after the relay opened, then backing off to
/// ``RelayOptions/upgradeMaxInterval``): a fresh port's public endpoint goes to the acceptor as punch OFFER, the
/// acceptor answers with its own (ANSWER) and both punch and prove the link token on the new socket, through
/// ``RelayPumpEffects`` (``DirectPath``). Each end then says READY (it holds a proven socket) or FAILED. An end
/// switches only once it has said READY and heard READY: it ends its relay stream with `switch_offset` = the bytes it sent on the
/// relay and writes the rest to the direct socket; the other end hands its app the relay bytes up to that
/// offset, then reads the direct socket. So both ends hold a proven socket before a byte goes onto it.
///
/// A splice attempt (``RelayOptions/splice``) runs the same way with another socket: the OFFER says `splice`, and
/// instead of learning endpoints and punching, both ends dial the broker's splice port at once, which joins the two
/// connections in the kernel; the link token is proven through it as on a punched link.
extension RelayPump {
    /// Whether this stream's upgrades may move it at all: by punching, or onto the broker's splice port.
    var upgrades: Bool { options.upgrade || options.splice != nil }

    func scheduleUpgrade(_ stream: RelayStream, after delay: Duration) {
        stream.upgrade.phase = .idle
        stream.upgrade.deadline = nil
        stream.upgrade.next = .now + delay
    }

    /// Starts due attempts; gives up offers nobody answered.
    func upgradeTick(now: ContinuousClock.Instant) {
        for stream in streams.values {
            if let deadline = stream.upgrade.deadline, deadline <= now {
                stream.upgrade.deadline = nil
                if case .offered(let attempt, _) = stream.upgrade.phase {
                    failAttempt(stream, attempt, reason: "no answer to the punch offer")
                }
            }
            guard let next = stream.upgrade.next, next <= now else { continue }
            stream.upgrade.next = nil
            guard stream.upgrade.phase == .idle, stream.outbound == .relay, stream.inbound == .relay else { continue }
            stream.upgrade.attempt += 1
            let attempt = stream.upgrade.attempt
            if splices(stream, attempt: attempt) {
                send(RelayFrame.with(stream.id, .punch(.with { $0.attempt = attempt; $0.stage = .offer; $0.splice = true })))
                startSplice(stream, attempt: attempt)
            } else {
                stream.upgrade.splice = false
                gather(stream, attempt: attempt)
            }
        }
    }

    /// Dials the broker's splice port, joins the peer there and proves the link (``RelayPumpEffects/punch``);
    /// ``punched(_:attempt:_:)`` goes on.
    private func startSplice(_ stream: RelayStream, attempt: UInt32) {
        guard let broker = options.splice else { return failAttempt(stream, attempt, reason: "this node does not splice") }
        stream.upgrade.splice = true
        stream.upgrade.phase = .punching(attempt)
        let hello = SpliceHello(
            connectionID: stream.id, role: stream.context.initiator ? .initiator : .acceptor, session: [UInt8](effects.session()))
        effects.punch(stream.id, attempt, UpgradePunch(route: .splice(broker, hello), proof: proof(stream), deadline: .now + Timing.Choice.spliceAttempt))
    }

    /// Whether attempt `attempt` splices: every one where the node does not punch; else, after the first
    /// ``Timing/Choice/punchesBeforeSplice`` punches (none when a punch towards the peer had just failed), every
    /// other one (a splice that keeps failing, say the port blocked, still leaves punches that may succeed later).
    func splices(_ stream: RelayStream, attempt: UInt32) -> Bool {
        guard options.splice != nil else { return false }
        guard options.upgrade else { return true }
        let punchesFirst = stream.context.punchFailedRecently ? 0 : Timing.Choice.punchesBeforeSplice
        return attempt > punchesFirst && (attempt - punchesFirst) % 2 == 1
    }

    private func proof(_ stream: RelayStream) -> DirectPath.Proof {
        DirectPath.Proof(token: stream.context.token, connectionID: stream.id, initiator: stream.context.initiator)
    }

    /// Learns a fresh port's public endpoint (``RelayPumpEffects/gather``); ``gathered(_:attempt:_:)`` goes on.
    private func gather(_ stream: RelayStream, attempt: UInt32) {
        stream.upgrade.phase = .gathering(attempt)
        effects.gather(stream.id, attempt)
    }

    func gathered(_ id: UInt64, attempt: UInt32, _ result: Result<DirectPath.PunchPort, SocketError>) {
        guard let stream = streams[id], stream.upgrade.phase == .gathering(attempt) else { return }
        switch result {
        case .failure(let error):
            failAttempt(stream, attempt, reason: error.description)
        case .success(let ours):
            var punch = Boxermesh_V1_RelayPunch()
            punch.attempt = attempt
            punch.endpoint = ours.endpoint.message
            if stream.context.initiator {
                punch.stage = .offer
                stream.upgrade.phase = .offered(attempt, port: ours.port)
                stream.upgrade.deadline = .now + Timing.Wire.upgradeAnswer
                send(RelayFrame.with(id, .punch(punch)))
            } else {
                // Punching starts before the answer goes out: our SYNs open our NAT for the initiator's.
                punch.stage = .answer
                guard let peer = stream.upgrade.peerEndpoint else { return failAttempt(stream, attempt, reason: "no offer") }
                startPunch(stream, attempt: attempt, from: ours.port, to: peer)
                send(RelayFrame.with(id, .punch(punch)))
            }
        }
    }

    /// Punches and proves (``RelayPumpEffects/punch``); ``punched(_:attempt:_:)`` goes on.
    private func startPunch(_ stream: RelayStream, attempt: UInt32, from port: UInt16, to peer: Endpoint) {
        stream.upgrade.phase = .punching(attempt)
        effects.punch(stream.id, attempt, UpgradePunch(route: .punch(port: port, peer: peer), proof: proof(stream), deadline: .now + options.upgradePunchTimeout))
    }

    func punched(_ id: UInt64, attempt: UInt32, _ result: Result<Int32, SocketError>) {
        guard let stream = streams[id], stream.upgrade.phase == .punching(attempt) else {
            if case .success(let fd) = result { RelaySockets.reset(fd) }
            return
        }
        switch result {
        case .failure(let error):
            failAttempt(stream, attempt, reason: error.description)
        case .success(let fd):
            RelaySockets.setNonBlocking(fd)
            RelaySockets.setNoDelay(fd)
            stream.direct = fd
            stream.upgrade.phase = .ready(attempt)
            send(RelayFrame.with(id, .punch(.with { $0.attempt = attempt; $0.stage = .ready })))
            if stream.upgrade.peerReady == attempt { switchToDirect(stream) }
        }
    }

    /// A punch frame from the peer.
    func punchSignal(_ stream: RelayStream, _ punch: Boxermesh_V1_RelayPunch) {
        let attempt = punch.attempt
        let endpoint = Endpoint(punch.endpoint)
        switch punch.stage {
        case .offer where !stream.context.initiator && punch.splice:
            guard options.splice != nil, stream.upgrade.phase != .done, stream.outbound == .relay, stream.inbound == .relay else {
                let reason = options.splice == nil ? "this node does not splice relayed connections" : "not upgrading"
                return send(RelayFrame.with(stream.id, .punch(.with { $0.attempt = attempt; $0.stage = .failed; $0.reason = reason })))
            }
            dropDirect(stream)
            stream.upgrade.attempt = attempt
            startSplice(stream, attempt: attempt)
        case .offer where !stream.context.initiator:
            stream.upgrade.splice = false
            guard options.upgrade, stream.upgrade.phase != .done, stream.outbound == .relay, stream.inbound == .relay else {
                return send(RelayFrame.with(stream.id, .punch(.with { $0.attempt = attempt; $0.stage = .failed; $0.reason = "not upgrading" })))
            }
            dropDirect(stream)
            stream.upgrade.attempt = attempt
            stream.upgrade.peerEndpoint = endpoint
            gather(stream, attempt: attempt)
        case .answer where stream.context.initiator:
            guard case .offered(attempt, let port) = stream.upgrade.phase else { return }
            stream.upgrade.deadline = nil
            startPunch(stream, attempt: attempt, from: port, to: endpoint)
        case .ready:
            stream.upgrade.peerReady = attempt
            switch stream.upgrade.phase {
            case .ready(attempt): switchToDirect(stream)
            case .punching(attempt): break  // our own result is on its way
            default:
                send(RelayFrame.with(stream.id, .punch(.with { $0.attempt = attempt; $0.stage = .failed; $0.reason = "attempt abandoned" })))
            }
        case .failed:
            guard stream.upgrade.attempt == attempt, stream.upgrade.phase != .done else { return }
            dropDirect(stream)
            logger.debug("upgrade attempt failed at the peer", metadata: ["connection": "\(stream.id)", "attempt": "\(attempt)", "reason": "\(punch.reason)"])
            backOff(stream)
        default:
            break
        }
    }

    /// This end gave the attempt up: tell the peer, and (the initiator) try again later.
    private func failAttempt(_ stream: RelayStream, _ attempt: UInt32, reason: String) {
        logger.debug("upgrade attempt failed", metadata: ["connection": "\(stream.id)", "attempt": "\(attempt)", "reason": "\(reason)"])
        send(RelayFrame.with(stream.id, .punch(.with { $0.attempt = attempt; $0.stage = .failed; $0.reason = reason })))
        dropDirect(stream)
        backOff(stream)
    }

    private func backOff(_ stream: RelayStream) {
        stream.upgrade.phase = .idle
        stream.upgrade.deadline = nil
        guard stream.context.initiator else { return }
        let delay = stream.upgrade.delay
        stream.upgrade.delay = min(delay * 2, options.upgradeMaxInterval)
        stream.upgrade.next = .now + min(delay, options.upgradeMaxInterval)
    }

    /// A proven socket of an attempt that will not be used.
    private func dropDirect(_ stream: RelayStream) {
        guard stream.upgrade.phase != .done, let direct = stream.direct else { return }
        stream.direct = nil
        RelaySockets.reset(direct)
    }

    /// Both ends are READY: end our relay stream at its current offset and go on on the direct link.
    private func switchToDirect(_ stream: RelayStream) {
        guard let direct = stream.direct else { return }
        stream.upgrade.phase = .done
        stream.upgrade.next = nil
        stream.context.path = stream.upgrade.splice ? .spliced : .direct
        owners[direct] = stream.id
        if stream.outbound == .relay {
            send(RelayFrame.with(stream.id, .switchOffset(stream.sentOnRelay)))
            stream.move(RelayStream.Outbound.direct)
        }
        logger.info(
            stream.upgrade.splice ? "relayed connection moved onto the broker's splice" : "relayed connection moved to a direct link",
            metadata: [
                "connection": "\(stream.id)", "peer": "\(stream.context.peer)", "attempt": "\(stream.upgrade.attempt)",
                "relayed_bytes_out": "\(stream.sentOnRelay)",
            ])
        effects.upgraded(stream.id, stream.context, stream.direct)
        stream.handoff.phase = stream.context.initiator || stream.handoff.turn ? .waiting : .awaitingTurn
        stream.handoff.next = .now
        // The pair can punch now: its other relayed connections try at once instead of at their next backoff.
        guard !stream.upgrade.splice else { return }
        for other in streams.values
        where other !== stream && other.context.initiator && other.context.peer == stream.context.peer
            && other.upgrade.phase == .idle
        {
            other.upgrade.next = .now
            other.upgrade.delay = Timing.Choice.upgradeFirst
        }
    }
}
