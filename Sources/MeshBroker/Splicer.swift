import Glibc
import Logging
import ServiceLifecycle
import WireFormat
import ZeroMQ

/// What the splice port listens on and how long it waits.
public struct SpliceConfiguration: Sendable {
    /// The IP address to listen on (as the reflector's host).
    public var host = "0.0.0.0"
    /// The TCP port; 0 asks the system for a free one (tests).
    public var port: UInt16 = 7704
    /// A connection that has not sent its whole hello by then is closed.
    public var helloTimeout: Duration = .seconds(5)
    /// An end whose partner has not dialled by then is closed (its node's upgrade attempt fails and backs off).
    public var partnerTimeout: Duration = .seconds(10)
    /// Connections that have not been joined yet, at most; the oldest is closed to make room.
    public var maximumUnjoined = 256
    /// Bytes each direction's pipe holds between the two sockets (more than a TCP window's worth keeps a fast
    /// sender from waiting on the broker).
    public var pipeBytes: Int32 = 1 << 20

    public init() {}
}

/// The broker's splice port: joins the two TCP connections of a relayed connection that both nodes moved here
/// (the schema's Relay, 6.) and moves their bytes in the kernel with splice(2), through a pipe per direction, on
/// its own thread. The bytes never enter this process's memory, and no node copies them: the apps may hold the
/// sockets. Each end proves with its session token that it is that end of a connection the relay carries.
public struct Splicer: Service {
    let configuration: SpliceConfiguration
    let directory: RelayDirectory
    let logger: Logger
    let onReady: @Sendable (UInt16) -> Void

    public init(
        configuration: SpliceConfiguration, directory: RelayDirectory, logger: Logger,
        onReady: @escaping @Sendable (UInt16) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.directory = directory
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        // splice(2) cannot pass MSG_NOSIGNAL: a write towards a node that reset its connection after its FIN raises
        // SIGPIPE, which would end the whole broker. Ignored, the write fails with EPIPE and resets that pair only.
        signal(SIGPIPE, SIG_IGN)
        let loop = SocketLoop<Never>(name: "splicer")
        let (configuration, directory, logger, onReady) = (configuration, directory, logger, onReady)
        try await cancelWhenGracefulShutdown {
            try await loop.run {
                let handler = try SpliceLoop(configuration: configuration, directory: directory, logger: logger)
                logger.notice("splice port serving", metadata: ["host": "\(configuration.host)", "port": "\(handler.port)"])
                onReady(handler.port)
                return handler
            }
        }
    }
}

/// The splice port's thread: the listener, connections still sending their hello or waiting for their partner,
/// and joined pairs. Poll is level-triggered; every socket is non-blocking.
final class SpliceLoop: SocketLoopHandler {
    typealias Command = Never

    /// A connection not joined yet: its hello so far, then (proven) which end of which connection it is.
    struct Unjoined {
        var hello: [UInt8] = []
        var proven: SpliceHello?
        var deadline: ContinuousClock.Instant
    }

    let configuration: SpliceConfiguration
    let directory: RelayDirectory
    let logger: Logger
    let listener: Int32
    let port: UInt16
    var unjoined: [Int32: Unjoined] = [:]
    /// Proven ends waiting for their partner, by connection id.
    var waiting: [UInt64: Int32] = [:]
    /// Each joined socket's pair.
    var pairs: [Int32: SplicedPair] = [:]
    let badInput: BadInputLog
    /// accept() failed for want of descriptors or memory: the listener rests until then (it would stay readable).
    var acceptPausedUntil: ContinuousClock.Instant?

    /// No ZeroMQ sockets: the loop polls plain descriptors only.
    var sockets: [ZMQSocket] { [] }
    func readable(socketAt index: Int) {}

    init(configuration: SpliceConfiguration, directory: RelayDirectory, logger: Logger) throws {
        guard let host = IPAddress(configuration.host) else {
            throw ReflectorError(.badHost, "splice port cannot bind: '\(configuration.host)' is not an IP address")
        }
        listener = try ReflectorSocket.bind(.tcp, Endpoint(host: host, port: configuration.port), component: "splice port")
        port = Endpoint.local(of: listener)?.port ?? configuration.port
        self.configuration = configuration
        self.directory = directory
        self.logger = logger
        badInput = BadInputLog(logger: logger, port: "splice")
    }

    var descriptors: [PolledDescriptor] {
        var list = acceptPausedUntil == nil ? [PolledDescriptor(fd: listener, events: Int16(POLLIN))] : []
        for fd in unjoined.keys where unjoined[fd]?.proven == nil { list.append(PolledDescriptor(fd: fd, events: Int16(POLLIN))) }
        // A proven end waiting for its partner is polled too: its node may give up (EOF, reset) meanwhile.
        for fd in waiting.values { list.append(PolledDescriptor(fd: fd, events: 0)) }
        // A joined socket with nothing wanted of it now is left out: poll would report its hang-up over and over.
        // Its pair always wants something of the other socket until both directions ended.
        for (fd, pair) in pairs {
            let events = pair.events(for: fd)
            if events != 0 { list.append(PolledDescriptor(fd: fd, events: events)) }
        }
        return list
    }

    var nextTick: ContinuousClock.Instant? { (unjoined.values.map(\.deadline) + [acceptPausedUntil].compactMap { $0 }).min() }

    func handle(_ command: Never) {}

    func tick(now: ContinuousClock.Instant) {
        if let paused = acceptPausedUntil, paused <= now { acceptPausedUntil = nil }
        for (fd, end) in unjoined where end.deadline <= now {
            if let hello = end.proven {
                logger.info("closed connection \(hello.connectionID)'s \(hello.role) end at the splice port: its other end never came")
            } else {
                badInput.drop("a connection sent no whole splice hello in time")
            }
            drop(fd)
        }
    }

    func ready(descriptor fd: Int32, events: Int16) {
        if fd == listener { return acceptConnections() }
        if let pair = pairs[fd] {
            if let ended = pair.pump() { finish(pair, ended) }
            return
        }
        guard let end = unjoined[fd] else { return }
        if end.proven != nil {
            // Only errors and hang-ups are watched for on a waiting end (its link proof waits in the socket for the
            // partner): its node gave up.
            badInput.drop("connection \(end.proven!.connectionID)'s end left before its partner came")
            return drop(fd)
        }
        readHello(fd)
    }

    func shutdown() {
        for fd in unjoined.keys { close(fd) }
        var done = Set<ObjectIdentifier>()
        for pair in pairs.values where done.insert(ObjectIdentifier(pair)).inserted { pair.reset() }
        close(listener)
    }

    // MARK: Joining

    private func acceptConnections() {
        for _ in 0..<16 {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else {
                if errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM {
                    badInput.drop("cannot accept a connection: \(String(cString: strerror(errno)))")
                    acceptPausedUntil = .now + .milliseconds(100)
                }
                return
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            // A node that vanishes (a frozen or killed function sends no FIN) is noticed, and its pair reset.
            LinkLiveness.apply(to: fd)
            // Closed any other way than by a FIN passed on (shutdown), a spliced connection resets: if the broker
            // dies, each app sees ECONNRESET, never an EOF its peer did not send.
            SplicedPair.closesWithReset(fd)
            if unjoined.count >= configuration.maximumUnjoined, let oldest = unjoined.min(by: { $0.value.deadline < $1.value.deadline }) {
                badInput.drop("too many connections waiting to be joined: closed the oldest")
                drop(oldest.key)
            }
            unjoined[fd] = Unjoined(deadline: .now + configuration.helloTimeout)
        }
    }

    /// Reads at most the rest of the hello (the node's first bytes after it belong to its peer).
    private func readHello(_ fd: Int32) {
        guard var end = unjoined[fd] else { return }
        var chunk = [UInt8](repeating: 0, count: SpliceHello.size - end.hello.count)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count < 0, errno == EAGAIN || errno == EINTR { return }
        guard count > 0 else {
            badInput.drop("a connection closed before its whole splice hello")
            return drop(fd)
        }
        end.hello += chunk[0..<count]
        guard end.hello.count == SpliceHello.size else {
            unjoined[fd] = end
            return
        }
        let hello: SpliceHello
        do {
            hello = try SpliceHello(parsing: end.hello)
        } catch {
            badInput.drop("\(error)")
            return drop(fd)
        }
        guard let session = directory.spliceSession(hello.connectionID, role: hello.role), hello.proven(by: session) else {
            badInput.drop("a splice hello for connection \(hello.connectionID) that no relayed connection's \(hello.role) end sent")
            return drop(fd)
        }
        guard let partner = waiting[hello.connectionID] else {
            end.proven = hello
            end.deadline = .now + configuration.partnerTimeout
            unjoined[fd] = end
            waiting[hello.connectionID] = fd
            return
        }
        guard unjoined[partner]?.proven?.role != hello.role else {
            badInput.drop("a second \(hello.role) end for connection \(hello.connectionID)")
            return drop(fd)
        }
        waiting[hello.connectionID] = nil
        unjoined[fd] = nil
        unjoined[partner] = nil
        do {
            let fds = hello.role == .initiator ? (fd, partner) : (partner, fd)
            let pair = try SplicedPair(connectionID: hello.connectionID, fds: fds, pipeBytes: configuration.pipeBytes)
            pairs[partner] = pair
            pairs[fd] = pair
            logger.debug("spliced a relayed connection", metadata: ["connection": "\(hello.connectionID)"])
            if let ended = pair.pump() { finish(pair, ended) }
        } catch {
            logger.warning("cannot splice connection \(hello.connectionID): \(error)")
            SplicedPair.reset(partner)
            SplicedPair.reset(fd)
        }
    }

    /// Closes a connection not joined yet with a reset: its node's dial fails at once.
    private func drop(_ fd: Int32) {
        if let id = unjoined.removeValue(forKey: fd)?.proven?.connectionID, waiting[id] == fd { waiting[id] = nil }
        SplicedPair.reset(fd)
    }

    private func finish(_ pair: SplicedPair, _ ended: SplicedPair.Ending) {
        pairs[pair.fds.0] = nil
        pairs[pair.fds.1] = nil
        logger.debug(
            "spliced connection ended",
            metadata: [
                "connection": "\(pair.connectionID)", "how": "\(ended)", "initiator_to_acceptor": "\(pair.forward.moved)",
                "acceptor_to_initiator": "\(pair.backward.moved)",
            ])
    }
}
