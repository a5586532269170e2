import WireFormat

/// Membership pushed to nodes, so each answers its app's name lookups itself (the schema's MembershipUpdate): a
/// snapshot as a node joins, sent before its Welcome, then every change of the mesh to every node of it, in the
/// order they happen. Each mesh counts its changes: a node that sees a gap asks for a snapshot again.
extension ControlPlaneHandler {
    /// Members per snapshot part: ≤ 500 × 80 bytes stays well inside a control frame (64 KiB).
    static let snapshotPartSize = 500

    /// The mesh's membership version: how many joins, leaves and expiries it has seen since the broker started.
    func membershipVersion(of mesh: String) -> UInt64 { membershipVersions[mesh] ?? 0 }

    /// Counts a change the registry has just made and pushes it to every node of the mesh but `joiner` (who gets
    /// the snapshot instead, which includes it).
    func announceMembership(
        _ kind: Boxermesh_V1_MembershipUpdate.Kind, _ member: Member, mesh: String, joiner: [UInt8]? = nil
    ) {
        let version = membershipVersion(of: mesh) + 1
        membershipVersions[mesh] = version
        var push = ControlMessage()
        push.membershipUpdate = .with {
            $0.kind = kind
            $0.version = version
            $0.members = [member]
        }
        let frame = push.frame()
        for session in registry.sessions.values
        where session.mesh == mesh && session.member != nil && session.token != joiner {
            send(to: session.routingID, frame: frame)
        }
    }

    /// Sends the mesh's members at its current version to `routingID`, in parts (all but the last marked `more`).
    func sendMembershipSnapshot(of mesh: String, to routingID: [UInt8]) {
        let members = registry.members(of: mesh)
        let version = membershipVersion(of: mesh)
        var start = 0
        var part: UInt32 = 0
        repeat {
            let end = min(start + Self.snapshotPartSize, members.count)
            var push = ControlMessage()
            push.membershipUpdate = .with {
                $0.kind = .snapshot
                $0.version = version
                $0.members = Array(members[start..<end])
                $0.more = end < members.count
                $0.part = part
            }
            send(to: routingID, push)
            start = end
            part += 1
        } while start < members.count
    }
}
