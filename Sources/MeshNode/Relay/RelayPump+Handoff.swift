import Glibc
import WireFormat

/// What became of handing an upgraded connection's direct socket to the app, for reports and flow counts.
enum HandoffEvent: Sendable {
    /// Offered to the app's shim: from now on the app's bytes are counted on the direct socket, after those it
    /// moved on the relay.
    case offered(direct: Int32, relayedOut: UInt64, relayedIn: UInt64)
    /// The app holds the direct socket (valid during the call). `failure`: carrying its last bytes over failed
    /// and its shim reset the connection rather than leave a gap.
    case taken(direct: Int32, carried: UInt64, failure: String?)
    /// Not this time (the node goes on copying), or never (no shim that takes handoffs); why.
    case declined(String, final: Bool)
}

/// Handing an upgraded connection's direct socket to the app, so that its bytes stop passing through the node.
/// Once both directions are on the direct link and the node holds none of the connection's bytes, the pump stops
/// polling both sockets and offers them to the app's shim (``RelayPumpEffects/handOff``), which parks the app's
/// threads, carries over what the app wrote to its loopback socket and swaps the direct socket in. Its answer
/// comes back as ``RelayCommand/handoffAnswered(_:)``: taken, the node forgets the connection (closing only its
/// own copies); declined, it copies on and offers again later, a few times. The connecting side goes first; the
/// accepting side waits for the broker's ``RelayCommand/handoffTurn(_:)`` (the connecting side is settled), so that
/// the bytes a parked app's shim carries over always reach a side whose node or app still reads.
extension RelayPump {
    /// Offers due handoffs.
    func handoffTick(now: ContinuousClock.Instant) {
        for stream in streams.values {
            guard stream.handoff.phase == .waiting, let next = stream.handoff.next, next <= now else { continue }
            stream.handoff.next = nil
            guard stream.outbound == .direct, let direct = stream.direct else {
                settle(stream, "the app shut the connection down for writing")
                continue
            }
            switch stream.inbound {
            case .direct where stream.directOut.isEmpty && stream.directIn.isEmpty:
                offer(stream, direct: direct)
            case .relay, .draining, .direct:
                // The peer's switch marker or its relay bytes still to come, or a burst held in the node.
                stream.handoff.next = now + Timing.Choice.handoffRecheck
            default:
                settle(stream, "the peer shut the connection down for writing")
            }
        }
    }

    /// No handoff for this connection: the tap hears why, and (from the connecting side) the peer gets its turn.
    private func settle(_ stream: RelayStream, _ reason: String) {
        stream.handoff.phase = .none
        effects.handoff(stream.id, stream.context, .declined(reason, final: true))
    }

    private func offer(_ stream: RelayStream, direct: Int32) {
        effects.handoff(stream.id, stream.context, .offered(direct: direct, relayedOut: stream.sentOnRelay, relayedIn: stream.receivedOnRelay))
        switch effects.handOff(stream.id, direct, stream.fd) {
        case .sent:
            stream.handoff.phase = .offered
            logger.debug("offered the direct socket to the app", metadata: ["connection": "\(stream.id)"])
        case .noTaker:
            settle(stream, "the app takes no handoff (no preload shim: supervised or --no-shim)")
        case .undelivered(let why):
            declined(stream, why)
        }
    }

    /// The connecting side's handoff is settled: the accepting side's may go ahead.
    func handoffTurn(_ id: UInt64) {
        guard let stream = streams[id], !stream.context.initiator else { return }
        stream.handoff.turn = true
        guard stream.handoff.phase == .awaitingTurn else { return }
        stream.handoff.phase = .waiting
        stream.handoff.next = .now
    }

    func handoffAnswered(_ result: Boxermesh_V1_ShimHandoffResult) {
        guard let stream = streams[result.connection], stream.handoff.phase == .offered, let direct = stream.direct else { return }
        if result.taken {
            stream.handoff.phase = .none
            let failure = result.error == 0 ? nil : result.reason
            logger.info(
                failure == nil
                    ? "the app holds the \(stream.context.path == .spliced ? "spliced" : "direct") socket: its bytes no longer pass through the node"
                    : "handing the direct socket to the app failed",
                metadata: ["connection": "\(stream.id)", "carried": "\(result.carried)", "failure": "\(failure ?? "")"])
            effects.handoff(stream.id, stream.context, .taken(direct: direct, carried: result.carried, failure: failure))
            // Our copies only: the app holds the direct socket, and its shim has read the loopback pair to its end.
            forget(stream)
            close(stream.fd)
            close(direct)
            return
        }
        declined(stream, result.reason)
    }

    /// The app did not take the direct socket this time: copy on, and offer again later (a few times).
    private func declined(_ stream: RelayStream, _ reason: String) {
        stream.handoff.declined += 1
        let final = stream.handoff.declined >= Timing.Choice.handoffAttempts
        logger.info(
            "the app's shim declined the direct socket: the node goes on copying",
            metadata: ["connection": "\(stream.id)", "reason": "\(reason)", "attempt": "\(stream.handoff.declined)"])
        effects.handoff(stream.id, stream.context, .declined(reason, final: final))
        stream.handoff.phase = final ? .none : .waiting
        stream.handoff.next = final ? nil : .now + stream.handoff.delay
        stream.handoff.delay = stream.handoff.delay * 2
    }
}
