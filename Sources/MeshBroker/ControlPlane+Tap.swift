import WireFormat

/// The tap: every event goes out on the PUB socket as [topic, TapEvent] (see ``TapTopic``).
extension ControlPlaneHandler {
    func publishMembership(_ kind: Boxermesh_V1_MembershipEvent.Kind, _ member: Member, mesh: String) {
        var membership = Boxermesh_V1_MembershipEvent()
        membership.kind = kind
        membership.member = member
        membership.memberCount = UInt32(registry.memberCount(of: mesh))
        var event = TapEvent()
        event.timeUnixMs = unixMilliseconds()
        event.mesh = mesh
        event.membership = membership
        publish(event, topic: TapTopic(mesh: mesh, kind: .membership, node: member.name))
    }

    func publish(_ event: TapEvent, topic: TapTopic) {
        do {
            try publisher.send([Array(topic.description.utf8), event.frame()])
        } catch {
            logger.debug("tap event dropped: \(error)")
        }
    }
}
