import CNodeSupport
import CSeccomp
import FoundationEssentials
import Glibc
import Logging
import Synchronization
import WireFormat
import ZeroMQ

/// The node's side of the seccomp filter its app runs under (an app the preload shim cannot reach: static, Go).
/// The filter hands the node connect, bind, listen, accept, getsockname, getpeername, and the file calls that
/// names need (`+Hosts`); the node acts on mesh addresses with the same ``LinkManager`` the shim service uses and
/// lets everything else run untouched. Data never passes through here: the app gets the kernel socket itself.
///
/// One thread ("seccomp") reads notifications; calls that wait on the network (connect, a blocking accept, a
/// names file that asks the broker) are answered from a task or thread of their own, so one slow connect never
/// holds up another thread's call.
final class SeccompSupervisor: Sendable {
    let listener: Int32
    let links: LinkManager
    let hosts: HostsFile?
    /// Answers the app's DNS queries for mesh names, if it could start.
    let dns: DNSResponder?
    let logger: Logger
    /// The mesh's addresses: connects there are the node's to make.
    let subnet: IPv4Subnet
    /// Mesh addresses of the sockets the node put into the app, by socket cookie (unique per boot, unlike an fd
    /// number or inode), for getsockname and getpeername. Those the app closed are forgotten as the table grows.
    let meshSockets = Mutex<[UInt64: Boxermesh_V1_ShimConnection]>([:])
    /// The table's size after its last pruning.
    private let prunedSize = Atomic<Int>(0)
    /// Sockets remembered between two prunings.
    static let pruneEvery = 256
    /// Links being built for the app's connects, which a retried connect joins.
    let connects = ConnectAttempts()
    /// Non-blocking connects in progress, by the stand-in the app holds meanwhile.
    let standIns: StandIns
    private let stopping = Atomic<Bool>(false)

    /// Takes over `listener`, the filter's descriptor from ``AppProcess/supervised(arguments:environment:output:)``.
    init(listener: Int32, links: LinkManager, hosts: HostsFile?, dns: DNSResponder?, logger: Logger) {
        self.listener = listener
        self.links = links
        self.hosts = hosts
        self.dns = dns
        self.logger = logger
        standIns = StandIns(logger: logger)
        subnet = (try? IPv4Subnet(links.session.welcome.subnet)) ?? IPv4Subnet.sharedAddressSpace
    }

    /// Starts answering the app's trapped calls on a thread of its own, until no process is left under the filter
    /// or ``stop()``.
    func start() {
        startThread(named: "seccomp") { [self] in
            var notification = boxer_sc_notification()
            while !stopping.load(ordering: .relaxed) {
                let got = boxer_sc_receive(listener, 250, &notification)
                if got == 0 { continue }
                guard got > 0 else {
                    if errno != EPIPE { logger.error("the seccomp supervisor stopped: \(String(cString: strerror(errno)))") }
                    break
                }
                handle(TrappedCall(listener: listener, notification))
            }
            close(listener)
        }
    }

    /// Stops the thread (within a quarter second); the app's later trapped calls fail with ENOSYS.
    func stop() { stopping.store(true, ordering: .relaxed) }

    private func handle(_ trapped: TrappedCall) {
        switch trapped.call {
        case BOXER_SC_CONNECT: connect(trapped)
        case BOXER_SC_BIND: bind(trapped)
        case BOXER_SC_LISTEN: listen(trapped)
        case BOXER_SC_ACCEPT, BOXER_SC_ACCEPT4: accept(trapped)
        case BOXER_SC_GETSOCKNAME, BOXER_SC_GETPEERNAME: socketName(trapped)
        case BOXER_SC_GETSOCKOPT: socketError(trapped)
        case BOXER_SC_OPEN, BOXER_SC_OPENAT: openFile(trapped)
        case BOXER_SC_NEWFSTATAT: statFile(trapped)
        default: trapped.proceed()
        }
    }

    // MARK: Mesh sockets the app holds

    /// Remembers the mesh addresses of a socket about to go into the app.
    func remember(_ link: Link) {
        let cookie = boxer_socket_cookie(link.fd)
        guard cookie != 0 else { return }
        let count = meshSockets.withLock { table in
            table[cookie] = link.connection
            return table.count
        }
        if count >= prunedSize.load(ordering: .relaxed) + Self.pruneEvery { prune() }
    }

    /// Forgets the sockets the app closed: those no longer among this network namespace's TCP sockets. Only
    /// sockets remembered before the look are judged by it.
    private func prune() {
        let judged = meshSockets.withLock { Set($0.keys) }
        var counters = [boxer_tcp_counters](repeating: boxer_tcp_counters(), count: 2 * judged.count + 256)
        var count = boxer_tcp_dump(&counters, Int32(counters.count))
        if Int(count) > counters.count {  // more sockets than room: once more, with room for them
            counters = [boxer_tcp_counters](repeating: boxer_tcp_counters(), count: Int(count) + 256)
            count = boxer_tcp_dump(&counters, Int32(counters.count))
        }
        guard count >= 0, Int(count) <= counters.count else { return }
        let alive = Set(counters.prefix(Int(count)).map(\.cookie))
        let (forgotten, kept) = meshSockets.withLock { table in
            let closed = judged.filter { !alive.contains($0) }
            for cookie in closed { table[cookie] = nil }
            return (closed.count, table.count)
        }
        prunedSize.store(kept, ordering: .relaxed)
        logger.debug("forgot \(forgotten) mesh sockets the app closed; \(kept) left")
    }

    /// getsockname/getpeername on a socket the node put in: the mesh addresses (the kernel would tell the punched
    /// endpoint, or loopback for a relayed link). A stand-in's link goes in first if it is up; getpeername on one
    /// still connecting fails with ENOTCONN. Any other socket: the kernel answers.
    private func socketName(_ trapped: TrappedCall) {
        guard let copy = trapped.takeDescriptor(0) else { return trapped.proceed() }
        let cookie = boxer_socket_cookie(copy)
        var connection = meshSockets.withLock { $0[cookie] }
        let stage = connection == nil ? question(trapped, standIn: copy, tellsError: false) : nil
        close(copy)  // before the answer (see connectInBackground)
        switch stage {
        case .ready(let link), .bridged(let link): connection = link.connection
        case .building, .failed:
            if trapped.call == BOXER_SC_GETPEERNAME { return trapped.fail(ENOTCONN) }
        case nil: break
        }
        guard let connection else { return trapped.proceed() }
        let address = trapped.call == BOXER_SC_GETPEERNAME
            ? AppSocketAddress(family: AF_INET, ipv4: IPv4Address(connection.peerAddress), port: UInt16(truncatingIfNeeded: connection.peerPort))
            : AppSocketAddress(family: AF_INET, ipv4: IPv4Address(connection.localAddress), port: UInt16(truncatingIfNeeded: connection.localPort))
        trapped.store(address.bytes, pointer: 1, lengthPointer: 2) ? trapped.succeed() : trapped.fail(EFAULT)
    }
}

extension SeccompSupervisor {
    /// Whether a descriptor is a stream socket (TCP, for an internet one).
    static func isStream(_ fd: Int32) -> Bool {
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 && type == Int32(SOCK_STREAM.rawValue)
    }

    /// Whether a descriptor is a datagram socket.
    static func isDatagram(_ fd: Int32) -> Bool {
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 && type == Int32(SOCK_DGRAM.rawValue)
    }

    /// Whether a descriptor's file is non-blocking (shared by every copy of it: the app's and the node's).
    static func isNonBlocking(_ fd: Int32) -> Bool { fcntl(fd, F_GETFL) & O_NONBLOCK != 0 }

    /// Makes a socket the app is about to get blocking or not, as the app asked.
    static func setNonBlocking(_ fd: Int32, _ on: Bool) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK)
    }
}
