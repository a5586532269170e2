import FoundationEssentials
import Glibc
import Logging
import Synchronization
import WireFormat

/// Who joins: a node (with a name, gets an address) or a client tool (resolve, tap).
public struct JoinRequest: Sendable {
    public var mesh: String
    /// nil joins as a client tool: no name, no address, no heartbeats needed.
    public var nodeName: String?
    /// `nodeName` is a prefix: the broker completes it to the first free `<prefix>-N`.
    public var nameIsPrefix: Bool
    public var secret: MeshSecret

    public init(mesh: String, nodeName: String?, nameIsPrefix: Bool = false, secret: MeshSecret) {
        self.mesh = mesh
        self.nodeName = nodeName
        self.nameIsPrefix = nameIsPrefix
        self.secret = secret
    }
}

/// An open, authenticated session with the broker: the handshake, heartbeats (with rejoin when the broker has
/// forgotten us), and the questions a member may ask.
public final class MeshSession: Sendable {
    public let client: ControlClient
    /// How this node joined; a name prefix is replaced by the name the broker gave, which a rejoin asks for.
    public let join: JoinRequest
    /// How long to keep trying to reach the broker: joining, rejoining, and a request while it is away.
    public let connectTimeout: Duration
    private let logger: Logger
    private let state: Mutex<Boxermesh_V1_Welcome>
    /// The rejoin under way, which every request that found its session lost waits for.
    private let rejoining = Mutex<Task<Void, Never>?>(nil)
    /// Set when ``leave(reason:timeout:)`` begins: a request that finds the session gone after that (the app's
    /// connects still under way when it exited) fails instead of joining the mesh again.
    private let leaving = Mutex(false)
    private let observers = Mutex<[@Sendable (SessionEvent) -> Void]>([])
    /// A node's table of the mesh's names, kept in step with the broker (nil for a tool).
    let names: MeshNames?

    /// How long one handshake step may wait before it is sent again.
    static let stepTimeout = Duration.seconds(2)

    private init(
        client: ControlClient, join: JoinRequest, welcome: Boxermesh_V1_Welcome, connectTimeout: Duration,
        logger: Logger, names: MeshNames?
    ) {
        self.client = client
        self.join = join
        self.connectTimeout = connectTimeout
        self.logger = logger
        self.names = names
        state = Mutex(welcome)
    }

    /// The broker's Welcome: this node's name and address, heartbeat interval, tap and STUN ports.
    public var welcome: Boxermesh_V1_Welcome { state.withLock { $0 } }

    /// Joins, retrying while the broker does not answer, until `connectTimeout`. A refusal (wrong secret, name
    /// taken) ends at once with the broker's reason.
    public static func open(
        _ join: JoinRequest, client: ControlClient, connectTimeout: Duration, logger: Logger
    ) async throws -> MeshSession {
        try await open(join, client: client, connectTimeout: connectTimeout, logger: logger, names: nil)
    }

    /// Joins as a node that keeps `names` in step with the broker. The broker pushes the mesh before its Welcome,
    /// so the client must hand membership pushes to `names` before this is called.
    /// `onChallenge` hears the broker's Challenge, a round trip before the Welcome (it names the reflector).
    static func open(
        _ join: JoinRequest, client: ControlClient, connectTimeout: Duration, logger: Logger, names: MeshNames?,
        onChallenge: @Sendable (Boxermesh_V1_Challenge) -> Void = { _ in }
    ) async throws -> MeshSession {
        let welcome = try await handshake(
            join, client: client, requestedAddress: nil, connectTimeout: connectTimeout, onChallenge: onChallenge)
        var joined = join
        if join.nameIsPrefix {
            joined.nodeName = welcome.self_p.name
            joined.nameIsPrefix = false
        }
        let session = MeshSession(
            client: client, join: joined, welcome: welcome, connectTimeout: connectTimeout, logger: logger,
            names: names)
        names?.attach(session)
        return session
    }

    private static func handshake(
        _ join: JoinRequest, client: ControlClient, requestedAddress: IPv4Address?, connectTimeout: Duration,
        onChallenge: @Sendable (Boxermesh_V1_Challenge) -> Void = { _ in }
    ) async throws -> Boxermesh_V1_Welcome {
        let deadline = ContinuousClock.now + connectTimeout
        var hello = Boxermesh_V1_Hello()
        hello.protocolVersion = 1
        hello.mesh = join.mesh
        hello.nodeName = join.nodeName ?? ""
        hello.nodeNameIsPrefix = join.nameIsPrefix
        hello.role = join.nodeName == nil ? .client : .node
        hello.requestedAddress = requestedAddress?.value ?? 0
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { throw JoinError.unreachable(client.endpoint, connectTimeout) }
            hello.clientNonce = Data(Sodium.randomBytes(32))
            var message = ControlMessage()
            message.hello = hello
            let challengeReply: ControlMessage
            do {
                challengeReply = try await client.request(message, timeout: min(stepTimeout, remaining))
            } catch ControlError.timeout {
                continue  // not connected yet, or the hello was lost: ask again with a fresh nonce
            }
            guard case .challenge(let challenge) = challengeReply.body else {
                throw ControlError.protocolViolation("expected a Challenge, got \(String(describing: challengeReply.body))")
            }
            onChallenge(challenge)
            let key = MeshKey(secret: join.secret, mesh: join.mesh)
            let serverNonce = [UInt8](challenge.serverNonce)
            var authenticate = ControlMessage()
            authenticate.authenticate.clientProof = Data(key.proof(by: .client, hello: hello, serverNonce: serverNonce))
            let welcomeReply: ControlMessage
            do {
                welcomeReply = try await client.request(authenticate, timeout: stepTimeout)
            } catch let refusal as BrokerRefusal where refusal.code == .errorAuthenticationFailed {
                throw JoinError.wrongSecret(refusal.message)
            } catch ControlError.timeout {
                continue
            }
            // Checked after the broker's answer, so the broker logs every refused attempt.
            guard MeshKey.matches(key.proof(by: .broker, hello: hello, serverNonce: serverNonce), [UInt8](challenge.serverProof))
            else {
                throw JoinError.wrongSecret("the broker could not prove it knows the secret of mesh '\(join.mesh)'")
            }
            guard case .welcome(let welcome) = welcomeReply.body else {
                throw ControlError.protocolViolation("expected a Welcome, got \(String(describing: welcomeReply.body))")
            }
            return welcome
        }
    }

    /// Sends a request inside this session. When the broker no longer knows the session (it restarted) the
    /// request waits for this node to join again, then goes out once more, all within `timeout`.
    public func request(_ body: ControlMessage.OneOf_Body, timeout: Duration = .seconds(5)) async throws -> ControlMessage {
        let deadline = ContinuousClock.now + timeout
        while true {
            var message = ControlMessage()
            message.session = welcome.session
            message.body = body
            do {
                return try await client.request(message, timeout: ContinuousClock.now.duration(to: deadline))
            } catch let refusal as BrokerRefusal where refusal.code == .errorNoSession && join.nodeName != nil {
                guard !hasLeft else { throw ControlError.left }
                await recover(lost: message.session)
                guard ContinuousClock.now < deadline else { throw ControlError.timeout }
            }
        }
    }

    /// Sends a report inside this session, which the broker does not answer, within `delay` if given
    /// (``ControlClient/post(_:within:)``); lost if the broker no longer knows the session (it restarted).
    public func post(_ body: ControlMessage.OneOf_Body, within delay: Duration? = nil) {
        var message = ControlMessage()
        message.session = welcome.session
        message.body = body
        client.post(message, within: delay)
    }

    /// Heartbeats until cancelled. When the broker no longer knows the session (it restarted, or we were silent
    /// too long) this node joins again, asking for its old name and address back; observers hear when the broker
    /// stops answering and when the node rejoined.
    public func keepAlive() async {
        let interval = Duration.milliseconds(Int64(max(welcome.heartbeatIntervalMs, 100)))
        var warned = false
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: interval)
                let ack = try await request(
                    .heartbeat(.init()), timeout: .milliseconds(Int64(max(welcome.expiryMs, 1000))))
                // The ack left the broker after every push before it, and pushes are applied as they arrive: a table
                // older than the ack's version lost one. Not awaited: a slow answer must not hold up heartbeats.
                if case .heartbeatAck(let counts) = ack.body, let names,
                    names.needsResync(brokerVersion: counts.membershipVersion)
                {
                    logger.warning(
                        "the mesh's names are behind the broker's (version \(counts.membershipVersion)); asking for them")
                    Task { await names.resync(through: self) }
                }
                if warned {
                    logger.notice("broker answers heartbeats again")
                    notify(.reachable)
                }
                warned = false
            } catch is CancellationError {
                return
            } catch {
                if !warned {
                    logger.warning("the broker is unreachable (no answer to heartbeats): \(error)")
                    notify(.unreachable)
                }
                warned = true
            }
        }
    }

    /// Hears when the broker stops answering and when this node joined again (with a new session token).
    public func observe(_ observer: @escaping @Sendable (SessionEvent) -> Void) {
        observers.withLock { $0.append(observer) }
    }

    private func notify(_ event: SessionEvent) {
        for observer in observers.withLock({ $0 }) { observer(event) }
    }

    /// Joins again unless another request already did since `lost` was refused; one rejoin at a time.
    private func recover(lost: Data) async {
        let task = rejoining.withLock { current -> Task<Void, Never>? in
            if let current { return current }
            guard welcome.session == lost, !hasLeft else { return nil }
            let task = Task { await self.rejoin() }
            current = task
            return task
        }
        await task?.value
    }

    private func rejoin() async {
        defer { rejoining.withLock { $0 = nil } }
        // The mesh may have changed unseen (the broker restarted, or expired us): no lookup is answered from the old
        // table; the snapshot that comes with the new Welcome fills it again.
        names?.forget()
        let previous = welcome.self_p
        do {
            let fresh = try await Self.handshake(
                join, client: client, requestedAddress: previous.address == 0 ? nil : previous.ipv4,
                connectTimeout: connectTimeout)
            state.withLock { $0 = fresh }
            if fresh.self_p.address != previous.address {
                logger.error("rejoined the mesh with a different address \(fresh.self_p.ipv4) (was \(previous.ipv4))")
            } else {
                logger.notice("rejoined the mesh after the broker lost our session", metadata: [
                    "name": "\(fresh.self_p.name)", "address": "\(fresh.self_p.ipv4)"])
            }
            notify(.rejoined)
        } catch where hasLeft {
            logger.debug("no rejoin: this node is leaving the mesh (\(error))")
        } catch {
            logger.error("could not rejoin the mesh: \(error)")
        }
    }

    /// The member with this name in our mesh.
    public func resolve(name: String) async throws -> Member {
        var query = Boxermesh_V1_ResolveRequest()
        query.name = name
        return try await resolved(query)
    }

    /// The member holding this address in our mesh.
    public func resolve(address: IPv4Address) async throws -> Member {
        var query = Boxermesh_V1_ResolveRequest()
        query.address = address.value
        return try await resolved(query)
    }

    private func resolved(_ query: Boxermesh_V1_ResolveRequest) async throws -> Member {
        let reply = try await request(.resolve(query), timeout: connectTimeout)
        guard case .resolved(let answer) = reply.body else {
            throw ControlError.protocolViolation("expected a ResolveReply, got \(String(describing: reply.body))")
        }
        return answer.member
    }

    /// Waits until the mesh has at least `count` members (the `--wait-for` start barrier); returns them.
    public func waitForMembers(_ count: Int) async throws -> [Member] {
        let reply = try await request(.waitMembers(.with { $0.count = UInt32(count) }), timeout: .seconds(365 * 86400))
        guard case .members(let list) = reply.body else {
            throw ControlError.protocolViolation("expected a MemberList, got \(String(describing: reply.body))")
        }
        return list.members
    }

    public func members() async throws -> [Member] {
        let reply = try await request(.listMembers(.init()))
        guard case .members(let list) = reply.body else {
            throw ControlError.protocolViolation("expected a MemberList, got \(String(describing: reply.body))")
        }
        return list.members
    }

    /// Whether this node has begun to leave the mesh.
    public var hasLeft: Bool { leaving.withLock { $0 } }

    /// Leaves the mesh: the broker frees the name and address at once and shows `reason` on the tap. Best effort:
    /// a broker that does not answer within `timeout` will expire the session by itself.
    public func leave(reason: String = "", timeout: Duration = .seconds(1)) async {
        leaving.withLock { $0 = true }
        do {
            _ = try await request(.leave(.with { $0.reason = reason }), timeout: timeout)
        } catch {
            logger.info("leave not confirmed (\(error)); the broker will expire the session")
        }
    }
}

/// What a session's observers hear.
public enum SessionEvent: Sendable {
    /// Heartbeats go unanswered: the broker is down, out of reach, or only slow.
    case unreachable
    /// Heartbeats are answered again, in the same session: the broker was only slow or briefly out of reach.
    case reachable
    /// The broker had lost this node's session and the node joined again: a new session token, same name and
    /// address (the broker's relay lost every relayed connection too).
    case rejoined
}

/// Joining failed; the message says why in words a user can act on.
public enum JoinError: Error, CustomStringConvertible, Sendable {
    case unreachable(String, Duration)
    case wrongSecret(String)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let timeout):
            "cannot reach the broker at \(endpoint): no answer within \(timeout) (is it running, and is the port open?)"
        case .wrongSecret(let message): "refused: \(message)"
        }
    }
}
