import CSeccomp
import FoundationEssentials
import Glibc
import WireFormat
import ZeroMQ

/// Inbound: listen() announces a port to the node, and accept() hands the app the link behind a signal connection.
extension SeccompSupervisor {
    /// listen(fd, backlog): listens on the app's socket and, for an internet stream socket on the wildcard
    /// address, tells the node that the port takes mesh connections.
    func listen(_ trapped: TrappedCall) {
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        defer { close(socket) }
        guard Self.isStream(socket), AppSocketAddress(localOf: socket) != nil else { return trapped.proceed() }
        guard Glibc.listen(socket, Int32(truncatingIfNeeded: trapped.args[1])) == 0 else { return trapped.fail(errno) }
        // Read after listen(): a socket that was never bound has a port only now.
        if let local = AppSocketAddress(localOf: socket), local.isUnspecified {
            links.listen(on: local.port)
        }
        trapped.succeed()
    }

    /// accept/accept4 on a socket listening for the mesh: the node accepts on the app's listener itself. A signal
    /// connection (from ``LinkManager/signalSource``) stands for a mesh link: the app gets that link's socket and
    /// its peer's mesh address. A local client is handed over as it is. A blocking accept waits on a thread of its
    /// own and gives up once the app's thread was interrupted.
    func accept(_ trapped: TrappedCall) {
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        guard Self.isStream(socket), let local = AppSocketAddress(localOf: socket),
            links.announces(port: local.port)
        else {
            close(socket)
            return trapped.proceed()
        }
        let flags = trapped.call == BOXER_SC_ACCEPT4 ? Int32(truncatingIfNeeded: trapped.args[3]) : 0
        if Self.isNonBlocking(socket) {
            finishAccept(trapped, listener: socket, port: local.port, family: local.family, flags: flags, blocking: false)
        } else {
            startThread(named: "seccomp-accept") { [self] in
                finishAccept(trapped, listener: socket, port: local.port, family: local.family, flags: flags, blocking: true)
            }
        }
    }

    private func finishAccept(_ trapped: TrappedCall, listener: Int32, port: UInt16, family: Int32, flags: Int32, blocking: Bool) {
        defer { close(listener) }
        while true {
            if blocking {
                var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard trapped.isPending else { return }
                if poll(&ready, 1, 250) <= 0 { continue }
            }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let accepted = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(listener, $0, &length) }
            }
            guard accepted >= 0 else {
                if blocking && (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) { continue }
                return trapped.fail(errno)
            }
            _ = fcntl(accepted, F_SETFD, FD_CLOEXEC)
            guard let peer = AppSocketAddress(storage: storage, length: length) else {
                close(accepted)
                return trapped.fail(ECONNABORTED)
            }
            var handed = accepted
            var shownPeer = peer
            var link: Link?
            if peer.ipv4 == LinkManager.signalSource {
                close(accepted)
                link = links.take(port: port, signalPort: peer.port)
                guard let link else {
                    if blocking { continue }
                    return trapped.fail(EAGAIN)  // a stale signal connection: nothing to accept after all
                }
                handed = link.fd
                shownPeer = AppSocketAddress(
                    family: family, ipv4: IPv4Address(link.connection.peerAddress), port: UInt16(truncatingIfNeeded: link.connection.peerPort))
                remember(link)
            }
            Self.setNonBlocking(handed, flags & Int32(SOCK_NONBLOCK.rawValue) != 0)
            guard trapped.store(shownPeer.bytes, pointer: 1, lengthPointer: 2) else {
                close(handed)
                return trapped.fail(EFAULT)
            }
            if trapped.inject(handed, closeOnExec: flags & Int32(SOCK_CLOEXEC.rawValue) != 0, returning: true) != nil {
                close(handed)  // the app's copy is the only one left
            } else if let link {
                // A signal interrupted the accept as the link arrived: the link waits for the app's next accept.
                links.announce(link, port: port)
            } else {
                close(handed)
                logger.warning("the app's accept was interrupted as a local connection arrived; the connection is dropped", metadata: ["port": "\(port)"])
            }
            return
        }
    }
}
