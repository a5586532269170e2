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
        publish(event, mesh: mesh, kind: .membership, node: member.name)
    }

    func publish(_ event: TapEvent, mesh: String, kind: TapKind, node: String) {
        let key = tapKeys[mesh] ?? TapKey(secret: configuration.secret, mesh: mesh)
        tapKeys[mesh] = key
        var event = event
        event.timeUnixMs = unixMilliseconds()
        event.mesh = mesh
        event.sequence = (tapSequences[mesh] ?? 0) + 1
        tapSequences[mesh] = event.sequence
        do {
            try publisher.send([Array(key.topic(kind, node: node).utf8), key.seal(event)])
        } catch {
            logger.debug("tap event dropped: \(error)")
        }
    }
}
