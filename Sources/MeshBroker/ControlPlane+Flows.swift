import WireFormat

/// Flow reports from nodes become the tap's flow samples and close events (see FlowReport in the schema).
extension ControlPlaneHandler {
    /// How many closed connection ids are remembered, so the second side's close report is not published again.
    static let closedMemory = 100_000

    func handleFlowReport(_ report: Boxermesh_V1_FlowReport, session: MeshRegistry.Session) {
        guard let reporter = session.member else { return }
        for sample in report.samples {
            guard sample.connectionID != 0, sample.connectionID <= nextConnectionID else {
                badInput.drop("flow sample for unknown connection \(sample.connectionID) from \(reporter.name)")
                continue
            }
            // Per mesh: a member of one mesh cannot silence another mesh's events by reporting its ids.
            let key = ClosedConnection(mesh: session.mesh, id: sample.connectionID)
            if sample.closed {
                // Both ends report a close; the first one is published.
                guard closedConnections.insert(key).inserted else { continue }
                forgetOldClosedConnections()
            } else if !sample.initiator || closedConnections.contains(key) {
                continue
            }
            let peer = registry.member(at: IPv4Address(sample.peerAddress), in: session.mesh)
                ?? Member.with { $0.address = sample.peerAddress; $0.name = sample.peerName }
            var event = Boxermesh_V1_ConnectionEvent()
            event.kind = sample.closed ? .close : .flow
            event.connectionID = sample.connectionID
            (event.from, event.to) = sample.initiator ? (reporter, peer) : (peer, reporter)
            (event.bytesFromTo, event.bytesToFrom) =
                sample.initiator ? (sample.bytesSent, sample.bytesReceived) : (sample.bytesReceived, sample.bytesSent)
            (event.rateFromToBps, event.rateToFromBps) =
                sample.initiator ? (sample.sendRateBps, sample.receiveRateBps) : (sample.receiveRateBps, sample.sendRateBps)
            event.port = sample.port
            event.path = sample.path
            event.durationMs = sample.durationMs
            event.rttUs = sample.rttUs
            publish(event, mesh: session.mesh)
        }
    }

    /// Connection ids grow (a spare link's lineage takes SpareClaim.lineage at once); a close report comes within
    /// seconds of the other side's, so ids far behind the newest can be forgotten.
    private func forgetOldClosedConnections() {
        guard closedConnections.count > Self.closedMemory else { return }
        let oldest = nextConnectionID > UInt64(Self.closedMemory / 2) ? nextConnectionID - UInt64(Self.closedMemory / 2) : 0
        closedConnections = closedConnections.filter { $0.id >= oldest }
    }
}

/// A connection whose close was published, in its mesh.
struct ClosedConnection: Hashable {
    let mesh: String
    let id: UInt64
}
