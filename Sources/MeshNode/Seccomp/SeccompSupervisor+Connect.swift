import CNodeSupport
import FoundationEssentials
import Glibc
import WireFormat

/// Outbound: the app's connect() to a mesh address, and bind() to its own mesh address.
extension SeccompSupervisor {
    /// connect(fd, addr, len) to a mesh address: the node builds the link (``LinkManager/connect(to:port:)``, as
    /// for the shim) and puts its socket at the app's descriptor number, with the app's blocking mode and
    /// close-on-exec flag. A UDP socket to port 53 goes to the DNS responder (``connectResolver(_:server:dns:)``);
    /// anything else — another address, a UDP socket elsewhere — runs untouched.
    ///
    /// A blocking connect returns 0 once the link is in. A retry after a signal joins the link being built
    /// (``ConnectAttempts``); a connect on a socket that is a link already fails with EISCONN.
    ///
    /// A non-blocking connect returns EINPROGRESS at once (``connectInBackground(_:original:to:port:)``).
    func connect(_ trapped: TrappedCall) {
        guard let target = trapped.socketAddress(pointer: 1, length: 2) else { return trapped.proceed() }
        if target.port == 53, let dns, let server = target.ipv4, !target.isMesh(in: subnet) {
            return connectResolver(trapped, server: server, dns: dns)
        }
        guard target.isMesh(in: subnet), let ipv4 = target.ipv4 else { return trapped.proceed() }
        guard let socket = trapped.takeDescriptor(0) else { return trapped.proceed() }
        let (stream, nonBlocking, cookie) = (Self.isStream(socket), Self.isNonBlocking(socket), boxer_socket_cookie(socket))
        if stream && nonBlocking && !meshSockets.withLock({ $0[cookie] != nil }) {
            // Linux's answers to a connect() again while a non-blocking one is under way, and once it ended.
            let stage = question(trapped, standIn: socket)
            guard stage != nil else { return connectInBackground(trapped, original: socket, to: ipv4, port: target.port) }
            close(socket)
            switch stage {
            case .building: return trapped.fail(EALREADY)
            case .ready, nil: return trapped.succeed()
            case .failed(let error): return trapped.fail(error.code)
            case .bridged: return trapped.fail(EISCONN)
            }
        }
        let options = Self.socketOptions(of: socket)  // for the link, which replaces this socket
        close(socket)
        guard stream else { return trapped.proceed() }
        if meshSockets.withLock({ $0[cookie] != nil }) {
            return connects.claimUnseen(cookie: cookie) ? trapped.succeed() : trapped.fail(EISCONN)
        }
        let key = ConnectAttempts.Key(cookie: cookie, address: ipv4, port: target.port)
        guard case .build(let serial) = connects.begin(trapped, key: key, closeOnExec: trapped.isCloseOnExec(0)) else {
            return logger.debug("a retried connect to \(ipv4):\(target.port) joins its link")
        }
        let (links, logger) = (links, logger)
        Task {
            let outcome: Result<Link, SocketError>
            do throws(SocketError) {
                let link = try await links.connect(to: ipv4, port: target.port)
                Self.setNonBlocking(link.fd, false)
                Self.apply(options, to: link.fd)
                remember(link)
                outcome = .success(link)
            } catch {
                links.logConnectFailure(to: ipv4, port: target.port, error)
                outcome = .failure(error)
            }
            guard !connects.finish(key, serial: serial, outcome: outcome) else { return }
            // The app's call was interrupted: its retry is on the way.
            try? await Task.sleep(for: Timing.Choice.unclaimedConnect)
            if connects.expire(key, serial: serial) {
                logger.warning(
                    "the app gave up a connect to \(ipv4):\(target.port): interrupted, and not made again within \(Timing.Choice.unclaimedConnect)")
            }
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
