import WireFormat

/// A resume waiting for the other end of its connection (see the schema's Relay section, 5.).
struct PendingResume {
    let token: [UInt8]
    let routingID: [UInt8]
    let resume: Boxermesh_V1_RelayResume
    let frame: [UInt8]
    let arrived: ContinuousClock.Instant
}

/// A resume is paired with the one carrying the same connection id and proof.
struct ResumeKey: Hashable {
    let id: UInt64
    let proof: [UInt8]
}

/// Taking back relayed connections after a restart. This broker never signalled them, so it trusts no single
/// node: it opens a connection again only when two live sessions of one mesh, one the initiator and one the
/// acceptor, show the same proof (an HMAC of the link token only those two ends hold) for the same id. Then it
/// forwards each resume to the other end, which sends again what its peer lacks.
extension RelayHandler {
    /// How long a resume waits for the other end's.
    static let resumeWait = Duration.seconds(15)
    /// Resumes waiting at once, all nodes together: a flood cannot grow the relay without bound.
    static let maximumPendingResumes = 4096

    func resume(_ id: UInt64, frame: [UInt8], token: [UInt8], from routingID: [UInt8]) {
        func refuse(_ reason: String, to routes: [[UInt8]]) {
            logger.info("relay resume refused", metadata: ["connection": "\(id)", "reason": "\(reason)"])
            for route in routes { send(.rst(.with { $0.reason = reason }), id, to: route) }
        }
        guard let decoded = try? RelayFrame(frame: frame), case .resume(let resume) = decoded.body,
            resume.proof.count == LinkToken.proofSize
        else {
            badInput.drop("malformed relay resume for connection \(id)")
            return refuse("a malformed resume", to: [routingID])
        }
        if let connection = connections[id] {
            // A node that asked twice (its first one already paired) is no reason to reset anything.
            guard connection.ends.contains(where: { $0.token == token }) else {
                return refuse("connection \(id) is already relayed", to: [routingID])
            }
            return
        }
        let window = Int(resume.window)
        guard window >= configuration.minimumWindow, window <= configuration.maximumWindow,
            resume.acknowledged <= resume.received, resume.received - resume.acknowledged <= UInt64(window)
        else {
            badInput.drop("relay resume for connection \(id) with a window or offsets that do not add up")
            return refuse("a resume whose window or offsets do not add up", to: [routingID])
        }
        let key = ResumeKey(id: id, proof: [UInt8](resume.proof))
        let arriving = PendingResume(token: token, routingID: routingID, resume: resume, frame: frame, arrived: .now)
        guard let waiting = pendingResumes[key], waiting.token != token else {
            guard pendingResumes[key] != nil || pendingResumes.count < Self.maximumPendingResumes else {
                return refuse("too many resumes waiting at the relay", to: [routingID])
            }
            pendingResumes[key] = arriving  // the first of the two, or the same node asking again
            return
        }
        pendingResumes[key] = nil
        let routes = [waiting.routingID, routingID]
        guard let mesh = directory.mesh(of: token), directory.mesh(of: waiting.token) == mesh,
            waiting.resume.initiator != resume.initiator, waiting.resume.window == resume.window
        else {
            return refuse("resumes that do not match (mesh, roles or window)", to: routes)
        }
        guard budgetFree >= 2 * window else { return refuse("relay full: its memory budget is taken", to: routes) }
        budgetFree -= 2 * window
        let (initiator, acceptor) = resume.initiator ? (arriving, waiting) : (waiting, arriving)
        var connection = RelayedConnection(
            id: id, window: window,
            ends: [.init(token: initiator.token, routingID: initiator.routingID), .init(token: acceptor.token, routingID: acceptor.routingID)])
        // Direction i is what end i sends: the other end holds (received − acknowledged) of it unacknowledged, and
        // it is over when the other end already has its fin or switch marker.
        connection.unacknowledged = [
            Int(acceptor.resume.received - acceptor.resume.acknowledged), Int(initiator.resume.received - initiator.resume.acknowledged),
        ]
        connection.finished = [acceptor.resume.endReceived, initiator.resume.endReceived]
        connections[id] = connection
        flush()
        for (to, from) in [(waiting.routingID, arriving.frame), (routingID, waiting.frame)] where (try? router.send([to, from])) == nil {
            refuse("the peer is unreachable", to: routes)
            return drop(id)
        }
        logger.info("relayed connection resumed", metadata: ["connection": "\(id)", "window": "\(window)", "relayed": "\(connections.count)"])
    }

    /// Resumes whose other end never came: their node hears so (and resets its app's connection).
    func expireResumes(now: ContinuousClock.Instant) {
        for (key, waiting) in pendingResumes where now - waiting.arrived >= Self.resumeWait {
            pendingResumes[key] = nil
            send(.rst(.with { $0.reason = "the peer did not resume the connection" }), key.id, to: waiting.routingID)
        }
    }
}
