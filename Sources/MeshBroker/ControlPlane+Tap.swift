import WireFormat

/// The tap: every event goes out on the PUB socket as [topic, sealed TapEvent], keyed per mesh (``TapPublisher``).
extension ControlPlaneHandler {
    func publishMembership(_ kind: Boxermesh_V1_MembershipEvent.Kind, _ member: Member, mesh: String, reason: String = "") {
        var membership = Boxermesh_V1_MembershipEvent()
        membership.kind = kind
        membership.member = member
        membership.reason = reason
        membership.memberCount = UInt32(registry.memberCount(of: mesh))
        var event = TapEvent()
        event.membership = membership
        publish(event, mesh: mesh, node: member.name)
    }

    func publish(_ event: TapEvent, mesh: String, node: String) { tap.publish(event, mesh: mesh, node: node) }

    /// A connection event goes out under its connecting node.
    func publish(_ connection: Boxermesh_V1_ConnectionEvent, mesh: String) {
        var event = TapEvent()
        event.connection = connection
        publish(event, mesh: mesh, node: connection.from.name)
    }
}
