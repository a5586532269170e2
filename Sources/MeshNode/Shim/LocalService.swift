import CNodeSupport
import FoundationEssentials
import Glibc
import Logging
import PlainText
import Synchronization
import WireFormat
import ZeroMQ

/// The node's end of the shim protocol (see the schema): a private AF_UNIX SEQPACKET socket, one thread per
/// connected app process. Requests that wait on the network (connect; a lookup while the node's table of names is
/// being filled) are answered concurrently, each when ready (the shim matches replies by id): one slow connect
/// never holds up the next. Lookups the table answers, listen, unlisten and take are answered at once, in order,
/// on the connection's thread (a close-and-listen-again keeps its order).
/// Connections go out as the kernel sockets themselves (SCM_RIGHTS), and the node closes its copy at once, so
/// the app's close() really closes. A relayed connection's direct socket follows later, unasked, once it has
/// moved to a direct link (``HandoffDesk``), to a shim that said it takes handoffs; and spare links are lent to a
/// shim that said it takes them (``SpareBorrower``), which claims them itself and tells the node afterwards.
final class LocalService: Sendable {
    /// The socket's address for BOXER_SHIM_SOCKET ("@…": abstract, nothing to clean up on disk).
    let address: String
    private let listenFD: Int32
    private let links: LinkManager
    private let session: MeshSession
    private let names: MeshNames
    private let handoffs: HandoffDesk
    private let logger: Logger
    private let clients = Mutex<Set<Int32>>([])

    init(links: LinkManager, session: MeshSession, names: MeshNames, handoffs: HandoffDesk, logger: Logger) throws {
        address = "@boxer-mesh-\(getpid())-\(Sodium.randomBytes(6).hex)"
        listenFD = boxer_listen_seqpacket(address)
        guard listenFD >= 0 else {
            throw SocketError.lastError("cannot open the shim socket")
        }
        self.links = links
        self.session = session
        self.names = names
        self.handoffs = handoffs
        self.logger = logger
    }

    /// Starts accepting app connections on a thread of its own.
    func start() {
        startThread(named: "shim-accept") { [self] in
            while true {
                let client = boxer_accept_cloexec(listenFD)
                if client < 0 {
                    if errno == EINTR || errno == ECONNABORTED { continue }
                    return  // the listening socket was shut down: the node is stopping
                }
                clients.withLock { _ = $0.insert(client) }
                startThread(named: "shim-client") { [self] in serve(client) }
            }
        }
    }

    /// Stops accepting and ends every client connection.
    func stop() {
        shutdown(listenFD, Int32(SHUT_RDWR))
        for client in clients.withLock({ $0 }) { shutdown(client, Int32(SHUT_RDWR)) }
    }

    private func serve(_ fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        let client = ShimClient(fd: fd)
        defer {
            clients.withLock { _ = $0.remove(fd) }
            handoffs.forget(client.finish(), reason: "the app's process ended")
            links.borrowerLeft(client)
        }
        while true {
            var passed: Int32 = -1
            let count = buffer.withUnsafeMutableBytes { boxer_receive_with_fd(fd, $0.baseAddress, $0.count, &passed) }
            if passed >= 0 { close(passed) }  // the shim never sends descriptors
            guard count > 0 else { return }
            let request: Boxermesh_V1_ShimRequest
            do {
                request = try Boxermesh_V1_ShimRequest(serializedBytes: Array(buffer[..<count]))
            } catch {
                logger.warning("dropped a malformed shim request (\(count) bytes): \(error)")
                continue
            }
            switch request.body {
            case .resolve, .reverse:
                // From the table, without a thread hop; only while it is being filled does a lookup wait.
                if let response = lookUp(request) {
                    guard client.reply(response, passing: nil) else { return }
                    continue
                }
                client.begin()
                Task {
                    _ = await names.waitUntilSynced(timeout: session.connectTimeout)
                    let late = "the mesh's names did not arrive from the broker within \(session.connectTimeout)"
                    let response = lookUp(request) ?? Self.failure(request, EAGAIN, late).0
                    client.reply(response, passing: nil)
                    client.end()
                }
            case .connect(let connect):
                // A spare link whose claim needs no answer: the connection goes back from this thread, with no hop.
                var sent = false
                if connect.port > 0, connect.port <= UInt16.max,
                    let link = links.connectAtOnce(
                        to: IPv4Address(connect.address), port: UInt16(connect.port),
                        deliver: { sent = self.deliver($0, answering: request, takesHandoff: connect.takesHandoff, to: client) })
                {
                    close(link.fd)  // after the node's bookkeeping: the app holds the only copy now
                    guard sent else { return }
                    if connect.takesSpares { links.lendSpares(towards: IPv4Address(connect.address), to: client) }
                    continue
                }
                client.begin()
                Task {
                    await self.connect(connect, for: request, to: client)
                    client.end()
                }
            case .handoffResult(let result):
                handoffs.answer(result)
            case .spareUsed(let used):
                links.loanEnded(used.spare, port: UInt16(truncatingIfNeeded: used.port), setup: .microseconds(used.setupUs),
                    reason: used.reason, by: client)
            default:
                let (response, link) = respondAtOnce(to: request)
                if case .takeAccepted(let take) = request.body, take.takesHandoff { register(response, for: client) }
                guard client.reply(response, passing: link) else { return }
            }
        }
    }

    /// A relayed connection about to go to `client`, whose shim takes handoffs: its direct socket goes there later.
    private func register(_ response: Boxermesh_V1_ShimResponse, for client: ShimClient) {
        guard case .connection(let connection) = response.body, connection.connection != 0 else { return }
        client.took(connection.connection)
        handoffs.register(connection.connection) { id, direct, pair in
            // From the relay pump's thread, which must not wait for an app that does not read its shim connection.
            let offer = Boxermesh_V1_ShimResponse.with { $0.handoff = .with { $0.connection = id } }
            return client.send(offer, passing: [direct, pair], waiting: false)
                ? .sent : .undelivered("the app's shim did not take the offer: \(String(cString: strerror(errno)))")
        }
    }

    /// Answers a name or address lookup from the node's table; nil while the table is being filled.
    private func lookUp(_ request: Boxermesh_V1_ShimRequest) -> Boxermesh_V1_ShimResponse? {
        let mesh = session.join.mesh
        let (answer, unknown) = switch request.body {
        case .resolve(let query): (names.lookup(name: query.name), "no node named '\(query.name)' in mesh '\(mesh)'")
        case .reverse(let query):
            (names.lookup(address: query.address), "no node has address \(IPv4Address(query.address)) in mesh '\(mesh)'")
        default: preconditionFailure("lookUp answers resolve and reverse requests only")
        }
        switch answer {
        case .found(let member):
            return Self.response(to: request) { $0.resolved = .with { $0.name = member.name; $0.address = member.address } }
        case .notFound:
            return Self.failure(request, ENOENT, unknown).0  // the shim then asks the system's resolver
        case .notSynced:
            return nil
        }
    }

    /// Answers a connect, which waits on the network: the connection goes to `client` with its socket as soon as
    /// it is up, before the node's bookkeeping.
    private func connect(_ connect: Boxermesh_V1_ShimConnect, for request: Boxermesh_V1_ShimRequest, to client: ShimClient) async {
        guard connect.port > 0, connect.port <= UInt16.max else {
            client.reply(Self.failure(request, EINVAL, "port \(connect.port) is out of range").0, passing: nil)
            return
        }
        do {
            let link = try await links.connect(to: IPv4Address(connect.address), port: UInt16(connect.port)) {
                self.deliver($0, answering: request, takesHandoff: connect.takesHandoff, to: client)
            }
            close(link.fd)  // after the node's bookkeeping: the app holds the only copy now
            if connect.takesSpares { links.lendSpares(towards: IPv4Address(connect.address), to: client) }
        } catch {
            links.logConnectFailure(to: IPv4Address(connect.address), port: UInt16(connect.port), error)
            client.reply(Self.failure(request, error.code, error.description).0, passing: nil)
        }
    }

    /// Sends a connection to the app that asked for it, with its socket (the node keeps its copy); false when the
    /// app is gone.
    @discardableResult
    private func deliver(_ link: Link, answering request: Boxermesh_V1_ShimRequest, takesHandoff: Bool, to client: ShimClient) -> Bool {
        let response = Self.response(to: request) { $0.connection = link.connection }
        if takesHandoff { register(response, for: client) }
        return client.send(response, passing: [link.fd])
    }

    /// Answers a request the node settles at once (listen, unlisten, take an accepted link), in order.
    private func respondAtOnce(to request: Boxermesh_V1_ShimRequest) -> (Boxermesh_V1_ShimResponse, Int32?) {
        switch request.body {
        case .listen(let listen):
            links.listen(on: UInt16(truncatingIfNeeded: listen.port))
        case .unlisten(let unlisten):
            links.unlisten(on: UInt16(truncatingIfNeeded: unlisten.port))
        case .takeAccepted(let take):
            guard let link = links.take(port: UInt16(truncatingIfNeeded: take.port), signalPort: UInt16(truncatingIfNeeded: take.signalPort))
            else { return Self.failure(request, ENOENT, "no inbound link waits behind that signal connection") }
            return (Self.response(to: request) { $0.connection = link.connection }, link.fd)
        case nil:
            return Self.failure(request, EINVAL, "unknown shim request")
        case .connect, .resolve, .reverse, .handoffResult, .spareUsed:
            preconditionFailure("serve() answers connects through connect(_:for:), lookups through lookUp(_:), and takes handoff results and spares' use")
        }
        return (Self.response(to: request) { _ in }, nil)
    }

    private static func response(
        to request: Boxermesh_V1_ShimRequest, _ fill: (inout Boxermesh_V1_ShimResponse) -> Void
    ) -> Boxermesh_V1_ShimResponse {
        var response = Boxermesh_V1_ShimResponse()
        response.id = request.id
        fill(&response)
        return response
    }

    private static func failure(_ request: Boxermesh_V1_ShimRequest, _ code: Int32, _ message: String) -> (Boxermesh_V1_ShimResponse, Int32?) {
        (response(to: request) { $0.error = code; $0.message = message }, nil)
    }
}

/// One app process's shim connection. Replies may come from several tasks at once (a SEQPACKET datagram goes out
/// whole), and the descriptor stays open until the last one is sent: a reply never goes to a reused number.
private final class ShimClient: SpareBorrower {
    let fd: Int32
    /// Replies still being worked on, whether the app hung up, and the relayed connections it took (handoffs).
    private let state = Mutex((inFlight: 0, finished: false, relayed: [UInt64]()))

    init(fd: Int32) { self.fd = fd }

    func begin() { state.withLock { $0.inFlight += 1 } }

    /// Sends a reply (with the connection's socket, which the node then closes: the app holds the only copy).
    /// False when the app is gone.
    @discardableResult
    func reply(_ response: Boxermesh_V1_ShimResponse, passing link: Int32?) -> Bool {
        defer { if let link { close(link) } }
        return send(response, passing: link.map { [$0] } ?? [])
    }

    /// Sends a message with `fds` attached (the node keeps its copies). False when the app is gone, or (not
    /// `waiting`) its shim connection has no room now; errno says which.
    func send(_ response: Boxermesh_V1_ShimResponse, passing fds: [Int32], waiting: Bool = true) -> Bool {
        let bytes: [UInt8] = try! response.serializedBytes()
        // Not after finish(): the number may belong to another client by then.
        return state.withLock { state in
            guard !state.finished || state.inFlight > 0 else {
                errno = EPIPE
                return false
            }
            let flags = waiting ? 0 : Int32(MSG_DONTWAIT)
            return bytes.withUnsafeBytes { boxer_send_with_fds(fd, $0.baseAddress, $0.count, fds, fds.count, flags) } >= 0
        }
    }

    func took(_ id: UInt64) { state.withLock { $0.relayed.append(id) } }

    // From the threads that make spares, which must not wait for an app that does not read its shim connection.
    func lend(_ spare: Boxermesh_V1_ShimSpare, fd: Int32) -> Bool {
        send(.with { $0.spare = spare }, passing: [fd], waiting: false)
    }

    /// Best effort: a recall not sent leaves the spare with the process until it ends.
    func recall(_ id: UInt64) {
        _ = send(.with { $0.recall = .with { $0.spare = id } }, passing: [], waiting: false)
    }

    func end() {
        let last = state.withLock { state in
            state.inFlight -= 1
            return state.finished && state.inFlight == 0
        }
        if last { close(fd) }
    }

    /// The app hung up (or the node stops): close once no reply is in flight. Returns the relayed connections it
    /// took, whose direct sockets now have nobody to go to.
    func finish() -> [UInt64] {
        let (idle, relayed) = state.withLock { state in
            state.finished = true
            return (state.inFlight == 0, state.relayed)
        }
        if idle { close(fd) }
        return relayed
    }
}
