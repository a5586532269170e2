import CSeccomp
import FoundationEssentials
import Glibc
import WireFormat

/// Names: open("/etc/hosts") gets the node's ``HostsFile``, and stat("/etc/hosts") describes it (Go re-reads the
/// file only when its mtime or size changed); every other path runs untouched. DNS queries go to the node's
/// ``DNSResponder``.
extension SeccompSupervisor {
    static let hostsPath = "/etc/hosts"

    /// open(path, flags, mode) and openat(dirfd, path, flags, mode).
    func openFile(_ trapped: TrappedCall) {
        let (pathIndex, flagsIndex) = trapped.call == BOXER_SC_OPEN ? (0, 1) : (1, 2)
        let flags = Int32(truncatingIfNeeded: trapped.args[flagsIndex])
        guard flags & O_ACCMODE == O_RDONLY, trapped.path(pathIndex) == Self.hostsPath, let hosts else { return trapped.proceed() }
        let fd = Glibc.open(hosts.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return trapped.proceed() }
        defer { close(fd) }
        _ = trapped.inject(fd, closeOnExec: flags & O_CLOEXEC != 0, returning: true)
    }

    /// newfstatat(dirfd, path, statbuf, flags).
    func statFile(_ trapped: TrappedCall) {
        guard trapped.path(1) == Self.hostsPath, trapped.args[2] != 0, let hosts else { return trapped.proceed() }
        var status = Glibc.stat()
        guard fstatat(AT_FDCWD, hosts.path, &status, 0) == 0 else { return trapped.proceed() }
        boxer_sc_write(trapped.pid, trapped.args[2], &status, MemoryLayout<Glibc.stat>.size) == 0
            ? trapped.succeed() : trapped.fail(EFAULT)
    }

    /// connect() of a UDP socket to port 53 of `server` — the app's name server, as its resolv.conf says — connects
    /// it to the node's DNS responder instead, which answers mesh names and passes every other query on to `server`.
    func connectResolver(_ trapped: TrappedCall, server: IPv4Address, dns: DNSResponder) {
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        defer { close(socket) }
        guard Self.isDatagram(socket) else { return trapped.proceed() }
        var (storage, length) = Endpoint(IPv4Address.loopback, port: dns.port).socketAddress
        let connected = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(socket, $0, length) }
        }
        guard connected == 0 else { return trapped.fail(errno) }
        guard let local = Endpoint.local(of: socket) else { return trapped.fail(errno) }
        dns.expect(client: local.port, server: Endpoint(server, port: 53))
        trapped.succeed()
    }
}
