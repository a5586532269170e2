import Glibc
import Logging
import Synchronization
import WireFormat
import ZeroMQ

/// Answers the app's DNS queries for mesh names from the node's table (``MeshNames``) on a loopback UDP port of its
/// own, and passes every other query on to the resolver the app was asking. The seccomp supervisor points an app's
/// DNS socket here (``SeccompSupervisor/connect(_:)``): Go's resolver, glibc's and busybox's connect their UDP
/// socket to the name server from resolv.conf, so no file of the system changes. Mesh answers have a TTL of 0: a
/// name that left stops resolving at once.
final class DNSResponder: Sendable {
    /// The loopback port the responder listens on.
    let port: UInt16
    private let socket: Int32
    private let names: MeshNames
    private let logger: Logger
    /// Where each client's other queries go (the name server it connected to), by the client's loopback port, and
    /// since when: Go opens a socket per lookup, so old entries are dropped.
    private let upstreams = Mutex<[UInt16: (server: Endpoint, since: ContinuousClock.Instant)]>([:])

    /// How long a forwarded query waits for its answer, and a client's name server is remembered.
    static let forwardTimeout = Duration.seconds(5)
    static let upstreamMemory = Duration.seconds(60)

    /// Listens on 127.0.0.1 (a free port) and answers from a thread of its own.
    init(names: MeshNames, logger: Logger) throws(SocketError) {
        let fd = Glibc.socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(errno, "no socket for the DNS responder") }
        var (storage, length) = Endpoint(IPv4Address.loopback, port: 0).socketAddress
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        guard bound == 0, let local = Endpoint.local(of: fd) else {
            let error = SocketError(errno, "the DNS responder cannot listen on 127.0.0.1")
            close(fd)
            throw error
        }
        socket = fd
        port = local.port
        self.names = names
        self.logger = logger
        startThread(named: "dns") { [self] in serve() }
    }

    /// Queries from the loopback port `client` that are not for a mesh name go to `server`.
    func expect(client: UInt16, server: Endpoint) {
        let now = ContinuousClock.now
        upstreams.withLock { upstreams in
            upstreams = upstreams.filter { now - $0.value.since < Self.upstreamMemory }
            upstreams[client] = (server, now)
        }
    }

    /// A query forwarded to a name server: the socket its answer comes on, for whom, until when.
    private struct Forward {
        let fd: Int32
        let client: UInt16
        let deadline: ContinuousClock.Instant
    }

    private func serve() {
        var forwards: [Forward] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            var ends = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0)]
            ends += forwards.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let wait = forwards.map(\.deadline).min().map {
                Int32(clamping: max(.zero, ContinuousClock.now.duration(to: $0)).milliseconds + 1)
            } ?? -1
            guard poll(&ends, nfds_t(ends.count), wait) >= 0 || errno == EINTR else {
                return logger.error("the DNS responder stopped: \(String(cString: strerror(errno)))")
            }
            let now = ContinuousClock.now
            for (forward, end) in zip(forwards, ends.dropFirst()) where end.revents != 0 || forward.deadline <= now {
                if end.revents != 0 {
                    let got = recv(forward.fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                    if got > 0 { reply(Array(buffer[..<got]), to: forward.client) }
                }
                close(forward.fd)
            }
            forwards = zip(forwards, ends.dropFirst()).filter { $0.1.revents == 0 && $0.0.deadline > now }.map(\.0)
            guard ends[0].revents != 0 else { continue }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let got = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(socket, &buffer, buffer.count, Int32(MSG_DONTWAIT), $0, &length) }
            }
            guard got > 0, let client = Endpoint(socketAddress: storage) else { continue }
            if let forward = answer(Array(buffer[..<got]), from: client.port) { forwards.append(forward) }
        }
    }

    /// Answers one query, or forwards it (the returned ``Forward``).
    private func answer(_ bytes: [UInt8], from client: UInt16) -> Forward? {
        let query: DNSQuery
        do throws(DNSQueryError) { query = try DNSQuery(parsing: bytes) } catch {
            logger.debug("\(error) (from 127.0.0.1:\(client)); dropped")
            return nil
        }
        if !query.name.contains("."), query.queryClass == DNSQuery.classIN {
            switch names.lookup(name: query.name) {
            case .found(let member):
                let wantsA = query.type == DNSQuery.typeA || query.type == DNSQuery.typeANY
                reply(query.answer(addresses: wantsA ? [member.ipv4] : []), to: client)  // no AAAA: the mesh is IPv4
                return nil
            case .notSynced:
                reply(query.answer(.serverFailure), to: client)  // the client asks again
                return nil
            case .notFound:
                break  // a single-label name the app's own name server may know
            }
        }
        guard let server = upstreams.withLock({ $0[client]?.server }) else {
            reply(query.answer(.serverFailure), to: client)
            return nil
        }
        return forward(bytes, to: server, for: client) ?? {
            reply(query.answer(.serverFailure), to: client)
            return nil
        }()
    }

    private func forward(_ bytes: [UInt8], to server: Endpoint, for client: UInt16) -> Forward? {
        let family = if case .v4 = server.host { AF_INET } else { AF_INET6 }
        let fd = Glibc.socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var (storage, length) = server.socketAddress
        let connected = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
        }
        guard connected == 0, send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count else {
            logger.debug("a DNS query could not go on to \(server): \(String(cString: strerror(errno)))")
            close(fd)
            return nil
        }
        return Forward(fd: fd, client: client, deadline: .now + Self.forwardTimeout)
    }

    private func reply(_ bytes: [UInt8], to client: UInt16) {
        var (storage, length) = Endpoint(IPv4Address.loopback, port: client).socketAddress
        _ = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(socket, bytes, bytes.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), $0, length)
            }
        }
    }
}
