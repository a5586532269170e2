import Logging
import WireFormat

/// A start barrier: answer `request` once `mesh` has `count` members.
struct MemberWaiter {
    let routingID: [UInt8]
    let session: [UInt8]
    let request: ControlMessage
    let mesh: String
    let count: Int
}

/// Requests inside an open session: heartbeat, leave, name resolution, membership resync, member lists and start
/// barriers.
extension ControlPlaneHandler {
    func handle(_ request: ControlMessage, from routingID: [UInt8]) {
        switch request.body {
        case .hello(let hello): return handleHello(hello, request: request, from: routingID)
        case .authenticate(let auth): return handleAuthenticate(auth, request: request, from: routingID)
        default: break
        }
        let token = [UInt8](request.session)
        guard let session = registry.session(token: token, routingID: routingID) else {
            refuse(request, routingID, .errorNoSession, "no open session (expired, or the broker restarted): join again")
            return
        }
        registry.touch(token: token, now: clock.now)
        switch request.body {
        case .heartbeat:
            var ack = Boxermesh_V1_HeartbeatAck()
            ack.memberCount = UInt32(registry.memberCount(of: session.mesh))
            ack.membershipVersion = membershipVersion(of: session.mesh)
            send(to: routingID, request.reply(.heartbeatAck(ack)))
        case .leave(let leave):
            registry.remove(token: token)
            sessionEnded(session, kind: .leave, reason: String(leave.reason.prefix(Self.maximumLeaveReason)))
            send(to: routingID, request.reply(.leaveAck(.init())))
        case .resolve(let query):
            resolve(query, in: session.mesh, request: request, from: routingID)
        case .listMembers:
            send(to: routingID, request.reply(.members(memberList(session.mesh))))
        case .connectRequest(let connect):
            handleConnectRequest(connect, request: request, session: session)
        case .connectAnswer(let answer):
            handleConnectAnswer(answer, request: request, session: session)
        case .endpointAdvert(let advert) where session.member != nil:  // adverts and reports get no answer
            guard advert.endpoint.port != 0, advert.endpoint.port <= UInt16.max else {
                return badInput.drop("an endpoint advert without a valid port from \(session.member?.name ?? "?")")
            }
            registry.advertise(advert.endpoint, token: token)
        case .linkReport(let report):
            handleLinkReport(report, session: session)
        case .flowReport(let report):
            handleFlowReport(report, session: session)
        case .membershipResync where session.member != nil:
            // The snapshot's pushes go out before the Ack, on the same connection: the node has it when the Ack comes.
            sendMembershipSnapshot(of: session.mesh, to: routingID)
            send(to: routingID, request.reply(.ack(.init())))
        case .waitMembers(let wait):
            waiters.append(
                MemberWaiter(routingID: routingID, session: token, request: request, mesh: session.mesh, count: Int(wait.count)))
            releaseWaiters(of: session.mesh)
        default:
            badInput.drop("unexpected message type from a peer: \(String(describing: request.body))")
            refuse(request, routingID, .errorBadRequest, "the broker does not accept this message type")
        }
    }

    private func resolve(_ query: Boxermesh_V1_ResolveRequest, in mesh: String, request: ControlMessage, from routingID: [UInt8]) {
        let found: Member?
        let asked: String
        switch query.query {
        case .name(let name):
            found = registry.member(named: name.lowercased(), in: mesh)
            asked = "no node named '\(name)' in mesh '\(mesh)'"
        case .address(let address):
            found = registry.member(at: IPv4Address(address), in: mesh)
            asked = "no node has address \(IPv4Address(address)) in mesh '\(mesh)'"
        case nil:
            return refuse(request, routingID, .errorBadRequest, "resolve needs a name or an address")
        }
        guard let found else { return refuse(request, routingID, .errorNotFound, asked) }
        var reply = Boxermesh_V1_ResolveReply()
        reply.member = found
        send(to: routingID, request.reply(.resolved(reply)))
    }

    private func memberList(_ mesh: String) -> Boxermesh_V1_MemberList {
        var list = Boxermesh_V1_MemberList()
        list.members = registry.members(of: mesh)
        return list
    }

    /// Answers every barrier of `mesh` that is now satisfied.
    func releaseWaiters(of mesh: String) {
        let count = registry.memberCount(of: mesh)
        waiters.removeAll { waiter in
            guard waiter.mesh == mesh, count >= waiter.count else { return false }
            send(to: waiter.routingID, waiter.request.reply(.members(memberList(mesh))))
            return true
        }
    }

    /// A session ended by leave (with the node's reason) or expiry: drop its barriers, tell the tap.
    func sessionEnded(_ session: MeshRegistry.Session, kind: Boxermesh_V1_MembershipEvent.Kind, reason: String = "") {
        waiters.removeAll { $0.session == session.token }
        dropPendingConnections(of: session)
        relay?.sessionEnded(token: session.token)
        guard let member = session.member else { return }
        var metadata: Logger.Metadata = ["mesh": "\(session.mesh)", "node": "\(member.name)", "address": "\(member.ipv4)"]
        if !reason.isEmpty { metadata["reason"] = "\(reason)" }
        logger.notice(kind == .expire ? "expired (no heartbeat)" : "left", metadata: metadata)
        // The nodes first: once the tap shows the leave, no node should answer a lookup with the old address.
        announceMembership(.leave, member, mesh: session.mesh)
        publishMembership(kind, member, mesh: session.mesh, reason: reason)
        if kind == .expire { announceExpiry(of: member, mesh: session.mesh) }
    }

    /// Tells every node of `mesh` that `member` vanished, so each ends its apps' connections to it at once.
    private func announceExpiry(of member: Member, mesh: String) {
        var push = ControlMessage()
        push.memberExpired = .with { $0.member = member }
        for other in registry.sessions.values where other.mesh == mesh && other.member != nil {
            send(to: other.routingID, push)
        }
    }
}
