import FoundationEssentials
import Glibc
import WireFormat

/// Relayed connections across a broker restart. The broker's relay keeps no state a node cannot rebuild: when
/// this node had to join again, or the relay says it does not know a connection, every connection still using the
/// relay is suspended (its app's bytes stay in the socket; nothing more goes to a relay that may drop it), the node
/// attaches with its new session, and sends `resume` with its counts. Once the peer's resume comes back, each side sends again
/// what the other did not receive (``RelayResendBuffer``) and goes on. A connection the relay does not take back
/// within ``Timing/Wire/relayResume`` of the loss is reset: the app gets ECONNRESET, never a hang.
extension RelayPump {
    func sessionChanged(_ event: SessionEvent) {
        switch event {
        case .unreachable:
            // The broker may only be slow (a loaded broker misses a heartbeat's deadline): connections go on, each
            // within its credit. Should it have lost them, it says so (a reset marked unknown, or our rejoin) and
            // they are resumed; should it stay silent, they are reset after ``Timing/Wire/relayResume``.
            brokerSilentSince = brokerSilentSince ?? .now
        case .reachable:
            brokerSilentSince = nil
        case .rejoined:
            brokerSilentSince = nil
            // A new session means a broker that knows nothing of our connections: resume all, with the new one.
            for stream in streams.values {
                suspend(stream)
                stream.resumeSent = false
            }
            reattach()
        }
    }

    /// A reset from a relay that has no state for us or for `id` (it restarted, and this node may not have
    /// noticed yet): suspend instead of resetting the app's connection. Returns whether it was handled so.
    func relayLostState(_ id: UInt64) -> Bool {
        if id == 0 {
            logger.info("the relay does not know this node's session (the broker restarted?); attaching again once joined")
            attached = false
            return true
        }
        guard let stream = streams[id], !stream.relayDone else { return false }
        if !stream.suspended { logger.notice("the relay lost connection \(id); resuming it", metadata: ["connection": "\(id)"]) }
        suspend(stream)
        stream.resumeSent = false
        reattach()
        return true
    }

    private func suspend(_ stream: RelayStream) {
        guard !stream.relayDone, !stream.suspended else { return }
        let now = ContinuousClock.now
        stream.suspendedAt = now
        stream.resumeBy = now + Timing.Wire.relayResume
    }

    /// Sends hello with the session we hold now, at once; its answer sends the resumes.
    private func reattach() {
        attached = false
        nextHello = .now
    }

    /// Attached (again): ask the relay to take back each suspended connection.
    func sendResumes() {
        for stream in streams.values where stream.suspended && !stream.resumeSent {
            var resume = Boxermesh_V1_RelayResume()
            resume.proof = Data(stream.context.token.resumeProof(connectionID: stream.id))
            resume.initiator = stream.context.initiator
            resume.window = UInt32(stream.window)
            resume.received = stream.receivedOnRelay
            resume.acknowledged = stream.creditSent
            resume.endReceived = stream.inboundRelayOver
            send(RelayFrame.with(stream.id, .resume(resume)))
            stream.resumeSent = true
        }
    }

    /// The peer's resume, forwarded by the relay that took the connection back: send again what it lacks.
    func peerResumed(_ stream: RelayStream, _ resume: Boxermesh_V1_RelayResume) {
        guard stream.suspended else {
            return abort(stream, reason: "a resume for a connection this node did not ask to resume", notify: true)
        }
        guard resume.initiator != stream.context.initiator, Int(resume.window) == stream.window else {
            return abort(stream, reason: "a resume that does not match this connection (role or window)", notify: true)
        }
        let missing: [[UInt8]]
        do {
            missing = try stream.resend.resume(peerReceived: resume.received, peerAcknowledged: resume.acknowledged)
        } catch {
            return abort(stream, reason: "a resume whose \(error)", notify: true)
        }
        var frames = missing.map { RelayFrame.with(stream.id, .data(Data($0))).frame() }
        if !resume.endReceived {
            switch stream.outbound {
            case .direct, .directEnded: frames.append(RelayFrame.with(stream.id, .switchOffset(stream.sentOnRelay)).frame())
            case .relayEnded: frames.append(RelayFrame.with(stream.id, .fin(true)).frame())
            case .relay: break
            }
        }
        if !frames.isEmpty { send(frames) }
        let stalled = stream.suspendedAt.map { ContinuousClock.now - $0 } ?? .zero
        stream.resumeBy = nil
        stream.suspendedAt = nil
        stream.resumeSent = false
        logger.notice(
            "relayed connection resumed",
            metadata: [
                "connection": "\(stream.id)", "stalled": "\(stalled)", "resent_bytes": "\(missing.reduce(0) { $0 + $1.count })",
                "peer_received": "\(resume.received)",
            ])
        writeApp(stream)  // credit owed while suspended goes out now
    }

    /// Connections whose relay did not come back in time are reset.
    func resumeTick(now: ContinuousClock.Instant) {
        if let silent = brokerSilentSince, now - silent >= Timing.Wire.relayResume {
            brokerSilentSince = nil
            for stream in streams.values where !stream.relayDone { stream.resumeBy = now }
        }
        for stream in streams.values {
            guard let deadline = stream.resumeBy, deadline <= now else { continue }
            logger.warning(
                "relayed connection reset: the relay did not come back within \(Timing.Wire.relayResume)",
                metadata: ["connection": "\(stream.id)"])
            abort(stream, reason: "the relay did not come back within \(Timing.Wire.relayResume)", notify: false)
        }
    }
}
