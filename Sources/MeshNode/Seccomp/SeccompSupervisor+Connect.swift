import FoundationEssentials
import Glibc
import WireFormat

/// Outbound: the app's connect() to a mesh address, and bind() to its own mesh address.
extension SeccompSupervisor {
    /// connect(fd, addr, len) to a mesh address: the node builds the link (``LinkManager/connect(to:port:)``, as
    /// for the shim) and puts its socket at the app's descriptor number, with the app's blocking mode and
    /// close-on-exec flag; the call returns 0. Anything else — another address, a UDP socket — runs untouched.
    ///
    /// The app's thread waits for the link even on a non-blocking socket (the replacement must happen while the
    /// call is pending). Go registers a socket with epoll only after connect() returns, so its poller sees the new
    /// socket; an event loop that registered it before would lose that registration.
    func connect(_ trapped: TrappedCall) {
        guard let target = trapped.socketAddress(pointer: 1, length: 2), target.isMesh(in: subnet), let ipv4 = target.ipv4
        else { return trapped.proceed() }
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        let stream = Self.isStream(socket)
        let nonBlocking = Self.isNonBlocking(socket)
        close(socket)
        guard stream else { return trapped.proceed() }
        let closeOnExec = trapped.isCloseOnExec(0)
        let (links, logger) = (links, logger)
        Task {
            let link: Link
            do throws(SocketError) {
                link = try await links.connect(to: ipv4, port: target.port)
            } catch {
                logger.notice("connect to \(ipv4):\(target.port) failed: \(error.description)")
                return trapped.fail(error.code)
            }
            Self.setNonBlocking(link.fd, nonBlocking)
            remember(link)
            if trapped.inject(link.fd, at: trapped.fd(0), closeOnExec: closeOnExec, returning: false) != nil {
                trapped.succeed()
            } else {
                logger.warning("the app gave up a connect to \(ipv4):\(target.port) before its link was up (interrupted)")
            }
            close(link.fd)  // the app holds the only copy now: its close() sends the FIN
        }
    }

    /// bind() to the node's own mesh address binds the wildcard address instead (the mesh address is not one of
    /// the host's): mesh connections arrive through the node either way.
    func bind(_ trapped: TrappedCall) {
        guard let address = trapped.socketAddress(pointer: 1, length: 2), address.ipv4 == links.me.ipv4, !address.isUnspecified
        else { return trapped.proceed() }
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        defer { close(socket) }
        let bytes = address.unspecified.bytes
        let result = bytes.withUnsafeBytes {
            Glibc.bind(socket, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(bytes.count))
        }
        result == 0 ? trapped.succeed() : trapped.fail(errno)
    }
}
