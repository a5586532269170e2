import Glibc

/// The plain socket steps of a relayed connection: the loopback TCP pair whose one end the app gets, and the
/// small per-descriptor settings. The app's end is a real TCP socket, so every TCP option, shutdown() and
/// reset behaves as on a direct link.
enum RelaySockets {
    /// A connected TCP pair on 127.0.0.1: (the app's end, blocking; the node's end, non-blocking).
    static func loopbackPair() throws(SocketError) -> (app: Int32, node: Int32) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw failure("cannot create a socket") }
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 1) == 0
                    && getsockname(listener, pointer, &length) == 0
            }
        }
        guard bound else { throw failure("cannot listen on a loopback port") }
        let app = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard app >= 0 else { throw failure("cannot create a socket") }
        // A loopback connect to a listening socket completes at once (the backlog has room for this one).
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(app, $0, length) }
        }
        guard connected == 0 else {
            let error = failure("cannot connect the loopback pair")
            close(app)
            throw error
        }
        let node = accept(listener, nil, nil)
        guard node >= 0 else {
            let error = failure("cannot accept the loopback pair")
            close(app)
            throw error
        }
        _ = fcntl(node, F_SETFD, FD_CLOEXEC)
        setNonBlocking(node)
        setNoDelay(node)
        return (app, node)
    }

    static func setNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Small writes (a reply, a redis command) go out at once instead of waiting for the previous ACK.
    static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Closes with an RST (SO_LINGER 0): the peer's next read or write fails with ECONNRESET.
    static func reset(_ fd: Int32) {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
    }

    private static func failure(_ what: String) -> SocketError { SocketError.lastError(what) }
}
