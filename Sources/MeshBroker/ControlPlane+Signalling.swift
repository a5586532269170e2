import FoundationEssentials
import Glibc
import WireFormat

/// A ConnectRequest forwarded to its target, waiting for the target's ConnectAnswer.
struct PendingConnection {
    let id: UInt64
    let request: ControlMessage
    let requester: MeshRegistry.Session
    let target: MeshRegistry.Session
    let token: [UInt8]
    let deadline: ContinuousClock.Instant
    /// The requester has its offer already (the target's advertised endpoint): a failure now goes to it as a
    /// ConnectWithdrawn push, not as the request's reply.
    let offered: Bool
}

/// Hole-punch signalling: pass each side's public endpoint and a shared token to the other (see the schema).
extension ControlPlaneHandler {
    /// How long the target node has to answer before the requester hears "peer unreachable".
    static let answerTimeout = Duration.seconds(5)

    func handleConnectRequest(_ connect: Boxermesh_V1_ConnectRequest, request: ControlMessage, session: MeshRegistry.Session) {
        guard let from = session.member else {
            return refuse(request, session.routingID, .errorBadRequest, "only nodes open connections")
        }
        let targetAddress = IPv4Address(connect.targetAddress)
        guard let to = registry.member(at: targetAddress, in: session.mesh),
            let target = registry.sessions.values.first(where: { $0.mesh == session.mesh && $0.member?.name == to.name })
        else {
            return refuse(request, session.routingID, .errorNotFound, "no node has address \(targetAddress) in mesh '\(session.mesh)'")
        }
        // A spare link has no port yet (its claim names one later) and is direct only: it needs a real endpoint.
        guard connect.spare ? connect.port == 0 && connect.endpoint.port != 0 : connect.port > 0 && connect.port <= UInt16.max,
            connect.hasEndpoint
        else {
            return refuse(
                request, session.routingID, .errorBadRequest,
                "connect needs a port and the requester's endpoint (a spare link: port 0 and an endpoint to punch)")
        }
        // A spare link's id opens a lineage of ids (SpareClaim.lineage): its successors, made on the link itself
        // without the broker, take the ones after it.
        let id = connect.spare ? (nextConnectionID / SpareClaim.lineage + 1) * SpareClaim.lineage : nextConnectionID + 1
        nextConnectionID = connect.spare ? id + SpareClaim.lineage - 1 : id
        // A requester that punches gets the target's advertised endpoint at once, if it has one: both then punch
        // as soon as each hears, and the target's answer matters only if it refuses.
        let advertised = !connect.spare && connect.endpoint.port != 0 ? registry.takeAdvertised(token: target.token) : nil
        let pending = PendingConnection(
            id: id, request: request, requester: session, target: target, token: Sodium.randomBytes(32),
            deadline: clock.now + Self.answerTimeout, offered: advertised != nil)
        pendingConnections[pending.id] = pending
        if !connect.spare {
            relay?.connectionSignalled(
            pending.id, initiator: session.token, acceptor: target.token,
                ends: .init(mesh: session.mesh, initiator: from, acceptor: to, port: UInt16(connect.port)))
        }
        var incoming = Boxermesh_V1_IncomingConnection()
        incoming.connectionID = pending.id
        incoming.peer = from
        incoming.port = connect.port
        incoming.endpoint = connect.endpoint
        incoming.token = Data(pending.token)
        incoming.spare = connect.spare
        if let advertised { incoming.advertised = advertised }
        var push = ControlMessage()
        push.incomingConnection = incoming
        send(to: target.routingID, push)
        if let advertised { offer(pending, endpoint: advertised) }
    }

    /// Sends the requester of `pending` its offer: the target's endpoint and the link token.
    private func offer(_ pending: PendingConnection, endpoint: Boxermesh_V1_PublicEndpoint) {
        var offer = Boxermesh_V1_ConnectOffer()
        offer.connectionID = pending.id
        offer.peer = pending.target.member ?? Member()
        offer.endpoint = endpoint
        offer.token = Data(pending.token)
        offer.advertised = pending.offered
        send(to: pending.requester.routingID, pending.request.reply(.connectOffer(offer)))
    }

    /// `pending` will not come: the requester hears why, as the reply to its request or, when its offer went out
    /// already, as a ConnectWithdrawn push.
    private func fail(_ pending: PendingConnection, _ code: Boxermesh_V1_ErrorCode, _ message: String) {
        guard pending.offered else { return refuse(pending.request, pending.requester.routingID, code, message) }
        var push = ControlMessage()
        push.connectWithdrawn = .with {
            $0.connectionID = pending.id
            $0.code = code
            $0.reason = message
        }
        send(to: pending.requester.routingID, push)
    }

    func handleConnectAnswer(_ answer: Boxermesh_V1_ConnectAnswer, request: ControlMessage, session: MeshRegistry.Session) {
        guard let pending = pendingConnections[answer.connectionID], pending.target.token == session.token else {
            return refuse(request, session.routingID, .errorNotFound, "no pending connection \(answer.connectionID)")
        }
        pendingConnections[pending.id] = nil
        send(to: session.routingID, request.reply(.ack(.init())))
        guard answer.accepted else {
            publishConnection(.refused, pending, reason: answer.reason)
            return fail(
                pending, .errorConnectionRefused,
                "\(pending.target.member?.name ?? "peer") refused port \(pending.request.connectRequest.port): \(answer.reason)")
        }
        if !pending.offered { offer(pending, endpoint: answer.endpoint) }
    }

    func handleLinkReport(_ report: Boxermesh_V1_LinkReport, session: MeshRegistry.Session) {
        logger.info(
            report.established ? "link up" : "link failed",
            metadata: [
                "mesh": "\(session.mesh)", "node": "\(session.member?.name ?? "?")", "connection": "\(report.connectionID)",
                "path": "\(report.path)", "setup_ms": "\(report.setupMs)", "failure": "\(report.failure)",
            ])
        guard let member = session.member else { return }
        // Each side's app takes the direct socket (or not) on its own: both sides' handoffs are published.
        if report.handoff != .unspecified {
            let peer = registry.member(at: IPv4Address(report.peerAddress), in: session.mesh) ?? Member()
            var event = Boxermesh_V1_ConnectionEvent()
            event.kind = .handoff
            event.connectionID = report.connectionID
            (event.from, event.to) = report.initiator ? (member, peer) : (peer, member)
            event.port = report.port
            event.path = report.path == .spliced ? .spliced : .direct
            event.reason = report.failure
            event.handoffSide = report.initiator ? "connecting" : "accepting"
            event.handoffDeclined = report.handoff == .declined
            publish(event, mesh: session.mesh)
            if report.initiator, report.handoffSettled, let acceptor = registry.session(holding: peer.name, in: session.mesh) {
                var push = ControlMessage()
                push.handoffTurn = .with { $0.connectionID = report.connectionID }
                send(to: acceptor.routingID, push)
            }
            return
        }
        // The initiator's report is the one published, so each link shows once.
        guard report.initiator else { return }
        var event = Boxermesh_V1_ConnectionEvent()
        // A direct link (or the splice port) reported for a connection the relay carried is its upgrade (relay -> direct
        // or spliced).
        let upgrade = report.established && (report.path == .direct || report.path == .spliced)
            && relay?.wasRelayed(report.connectionID) == true
        event.kind = upgrade ? .upgrade : report.established ? .open : report.refused ? .refused : .failed
        event.connectionID = report.connectionID
        event.from = member
        event.to = registry.member(at: IPv4Address(report.peerAddress), in: session.mesh) ?? Member()
        event.port = report.port
        event.path = report.path
        event.setupMs = report.setupMs
        event.reason = report.failure
        publish(event, mesh: session.mesh)
    }

    /// Requests whose target never answered: tell the requester.
    func expirePendingConnections(now: ContinuousClock.Instant) {
        for pending in pendingConnections.values where pending.deadline <= now {
            pendingConnections[pending.id] = nil
            publishConnection(.failed, pending, reason: "peer did not answer")
            fail(pending, .errorPeerUnreachable, "\(pending.target.member?.name ?? "peer") did not answer within \(Self.answerTimeout)")
        }
    }

    /// A session ended: its half-signalled connections fail at once instead of at their deadline.
    func dropPendingConnections(of session: MeshRegistry.Session) {
        for pending in pendingConnections.values
        where pending.requester.token == session.token || pending.target.token == session.token {
            pendingConnections[pending.id] = nil
            if pending.target.token == session.token { fail(pending, .errorPeerUnreachable, "the peer left the mesh") }
        }
    }

    /// A spare link is no connection yet: the tap hears of it only when a connect takes it.
    private func publishConnection(_ kind: Boxermesh_V1_ConnectionEvent.Kind, _ pending: PendingConnection, reason: String) {
        guard let from = pending.requester.member, !pending.request.connectRequest.spare else { return }
        var event = Boxermesh_V1_ConnectionEvent()
        event.kind = kind
        event.connectionID = pending.id
        event.from = from
        event.to = pending.target.member ?? Member()
        event.port = pending.request.connectRequest.port
        event.reason = reason
        publish(event, mesh: pending.requester.mesh)
    }
}
