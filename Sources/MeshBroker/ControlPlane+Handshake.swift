import FoundationEssentials
import Glibc
import WireFormat
import ZeroMQ

/// The current protocol version; a Hello with another is refused with a clear error.
public let controlProtocolVersion: UInt32 = 1

/// A Hello the broker has challenged and waits to see proven.
struct PendingHandshake {
    let hello: Boxermesh_V1_Hello
    let serverNonce: [UInt8]
    let created: ContinuousClock.Instant
}

/// Challenge–response admission: Hello → Challenge (with the broker's proof) → Authenticate → Welcome.
extension ControlPlaneHandler {
    func handleHello(_ hello: Boxermesh_V1_Hello, request: ControlMessage, from routingID: [UInt8]) {
        var hello = hello
        do throws(InvalidName) {
            guard hello.protocolVersion == controlProtocolVersion else {
                refuse(request, routingID, .errorUnsupportedVersion,
                    "protocol version \(hello.protocolVersion) is not supported (broker speaks \(controlProtocolVersion))")
                return
            }
            guard hello.clientNonce.count == 32 else {
                refuse(request, routingID, .errorBadRequest, "client nonce must be 32 bytes")
                return
            }
            hello.mesh = try MeshName.validated(hello.mesh, role: "mesh name")
            switch hello.role {
            case .node where hello.nodeNameIsPrefix: hello.nodeName = try MeshName.validatedPrefix(hello.nodeName)
            case .node: hello.nodeName = try MeshName.validated(hello.nodeName, role: "node name")
            case .client: hello.nodeName = ""
            default:
                refuse(request, routingID, .errorBadRequest, "unknown role \(hello.role.rawValue)")
                return
            }
        } catch {
            refuse(request, routingID, .errorInvalidName, error.description)
            return
        }
        if pendingHandshakes.count >= Self.maximumPendingHandshakes,
            let oldest = pendingHandshakes.min(by: { $0.value.created < $1.value.created })
        {
            pendingHandshakes[oldest.key] = nil
        }
        let serverNonce = Sodium.randomBytes(32)
        pendingHandshakes[routingID] = PendingHandshake(hello: hello, serverNonce: serverNonce, created: clock.now)
        var challenge = Boxermesh_V1_Challenge()
        challenge.serverNonce = Data(serverNonce)
        challenge.serverProof = Data(key(for: hello.mesh).proof(by: .broker, hello: hello, serverNonce: serverNonce))
        challenge.stunPort = UInt32(configuration.stunPort)
        send(to: routingID, request.reply(.challenge(challenge)))
    }

    func handleAuthenticate(_ auth: Boxermesh_V1_Authenticate, request: ControlMessage, from routingID: [UInt8]) {
        guard let pending = pendingHandshakes.removeValue(forKey: routingID) else {
            refuse(request, routingID, .errorBadRequest, "Authenticate without a Hello first (or the handshake timed out)")
            return
        }
        var hello = pending.hello
        let expected = key(for: hello.mesh).proof(by: .client, hello: hello, serverNonce: pending.serverNonce)
        guard MeshKey.matches(expected, [UInt8](auth.clientProof)) else {
            logger.warning("refused \(hello.role == .node ? "node '\(hello.nodeName)'" : "client"): wrong mesh secret",
                metadata: ["mesh": "\(hello.mesh)"])
            refuse(request, routingID, .errorAuthenticationFailed, "wrong mesh secret for mesh '\(hello.mesh)'")
            return
        }
        if hello.nodeNameIsPrefix { hello.nodeName = registry.firstFreeName(prefix: hello.nodeName, in: hello.mesh) }
        // The same connection joining again with a name it holds: its Welcome came too late (a loaded box) and it
        // asked anew. Its first session, whose token it never learned, goes, rather than refusing it its own name.
        if hello.role == .node, let earlier = registry.session(holding: hello.nodeName, in: hello.mesh),
            earlier.routingID == routingID
        {
            registry.remove(token: earlier.token)
            sessionEnded(earlier, kind: .leave, reason: "joined again on the same connection (a handshake retry)")
        }
        let session: MeshRegistry.Session
        do {
            session = try registry.admit(hello, routingID: routingID, now: clock.now, wallClockMs: unixMilliseconds())
        } catch {
            logger.notice("refused node '\(hello.nodeName)': \(error.message)", metadata: ["mesh": "\(hello.mesh)"])
            refuse(request, routingID, error.code, error.message)
            return
        }
        var welcome = Boxermesh_V1_Welcome()
        welcome.session = Data(session.token)
        welcome.subnet = configuration.subnet.description
        welcome.heartbeatIntervalMs = UInt32(configuration.heartbeatInterval.milliseconds)
        welcome.expiryMs = UInt32(configuration.expiry.milliseconds)
        welcome.memberCount = UInt32(registry.memberCount(of: hello.mesh))
        welcome.tapPort = UInt32(port(of: tap.socket.lastEndpoint))
        welcome.stunPort = UInt32(configuration.stunPort)
        welcome.capturePort = UInt32(configuration.capturePort)
        welcome.splicePort = UInt32(configuration.splicePort)
        if let member = session.member {
            relay?.sessionOpened(token: session.token, mesh: hello.mesh)
            welcome.self_p = member
            logger.notice("joined", metadata: ["mesh": "\(hello.mesh)", "node": "\(member.name)", "address": "\(member.ipv4)"])
            // The others hear of the join before the tap and before any barrier releases them (or the node can
            // connect to them): their tables have the name by then. The node gets the mesh before its Welcome, so
            // it answers lookups from the moment it has joined.
            announceMembership(.join, member, mesh: hello.mesh, joiner: session.token)
            sendMembershipSnapshot(of: hello.mesh, to: routingID)
            publishMembership(.join, member, mesh: hello.mesh)
            releaseWaiters(of: hello.mesh)
        }
        send(to: routingID, request.reply(.welcome(welcome)))
    }

    /// One key per mesh, derived from the broker's secret.
    func key(for mesh: String) -> MeshKey { MeshKey(secret: configuration.secret, mesh: mesh) }

    func refuse(_ request: ControlMessage, _ routingID: [UInt8], _ code: Boxermesh_V1_ErrorCode, _ message: String) {
        send(to: routingID, request.reply(.error(.init(code, message))))
    }
}

/// The port of a ZeroMQ TCP endpoint ("tcp://HOST:PORT"); 0 when it has none (a wildcard "*" not yet bound).
public func port(of endpoint: String) -> UInt16 {
    endpoint.split(separator: ":").last.flatMap { UInt16($0) } ?? 0
}

