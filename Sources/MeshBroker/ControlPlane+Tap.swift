import WireFormat

/// The tap: every event goes out on the PUB socket as [topic, sealed TapEvent], keyed per mesh (``TapKey``).
extension ControlPlaneHandler {
    func publishMembership(_ kind: Boxermesh_V1_MembershipEvent.Kind, _ member: Member, mesh: String) {
        var membership = Boxermesh_V1_MembershipEvent()
        membership.kind = kind
        membership.member = member
        membership.memberCount = UInt32(registry.memberCount(of: mesh))
        var event = TapEvent()
        event.membership = membership
        publish(event, mesh: mesh, node: member.name)
    }

    /// Publishes `event` about `node` under its kind; sequence numbers count per mesh and kind, so a subscriber
    /// to some kinds only still sees its gaps.
    func publish(_ event: TapEvent, mesh: String, node: String) {
        let key = tapKeys[mesh] ?? TapKey(secret: configuration.secret, mesh: mesh)
        tapKeys[mesh] = key
        var event = event
        event.timeUnixMs = unixMilliseconds()
        event.mesh = mesh
        let kind = event.tapKind
        event.sequence = (tapSequences[TapStream(mesh: mesh, kind: kind)] ?? 0) + 1
        tapSequences[TapStream(mesh: mesh, kind: kind)] = event.sequence
        do {
            try publisher.send([Array(key.topic(kind, node: node).utf8), key.seal(event)])
        } catch {
            logger.debug("tap event dropped: \(error)")
        }
    }
}

/// One mesh's events of one kind: what a sequence number counts.
struct TapStream: Hashable {
    let mesh: String
    let kind: TapKind
}
