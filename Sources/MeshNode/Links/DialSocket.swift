import Glibc
import WireFormat
import ZeroMQ

/// An outbound socket, optionally from a fixed local port shared with SO_REUSEADDR|SO_REUSEPORT: the socket of a
/// ``STUNClient`` exchange and of each punch attempt. Non-blocking; every wait is a `poll()` bounded by a deadline.
struct DialSocket {
    let fd: Int32
    let server: Endpoint
    let transport: STUNClient.Transport

    /// Creates the socket, sets SO_REUSEADDR|SO_REUSEPORT (if `reuse`) before binding `localPort` (if given), and
    /// for UDP connects it to the server so that an ICMP "port unreachable" shows up as `refused`.
    init(server: Endpoint, transport: STUNClient.Transport, localPort: UInt16?, reuse: Bool) throws {
        self.server = server
        self.transport = transport
        let family: Int32
        let any: Endpoint
        switch server.host {
        case .v4:
            family = AF_INET
            any = Endpoint(IPv4Address.any, port: localPort ?? 0)
        case .v6:
            family = AF_INET6
            any = Endpoint(IPv6Address.any, port: localPort ?? 0)
        }
        let type = transport == .udp ? Int32(SOCK_DGRAM.rawValue) : Int32(SOCK_STREAM.rawValue)
        fd = socket(family, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Self.error(.socket, server, transport, "cannot create a socket", errno) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        if reuse {
            var one: Int32 = 1
            for option in [SO_REUSEADDR, SO_REUSEPORT] {
                guard setsockopt(fd, SOL_SOCKET, option, &one, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
                    let code = errno
                    Glibc.close(fd)
                    throw Self.error(.socket, server, transport, "cannot set SO_REUSEADDR/SO_REUSEPORT", code)
                }
            }
        }
        if localPort != nil {
            var (storage, length) = any.socketAddress
            let bound = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
            }
            guard bound == 0 else {
                let code = errno
                Glibc.close(fd)
                throw Self.error(.socket, server, transport, "cannot bind local port \(any.port)", code)
            }
        }
        if transport == .udp {
            let result = connectOnce()
            guard result == 0 else {
                let code = errno
                Glibc.close(fd)
                throw Self.error(.socket, server, transport, "cannot address \(server)", code)
            }
        }
    }

    /// Closes the socket; a TCP socket with an RST (SO_LINGER 0) so that its port leaves no TIME_WAIT behind.
    func close() {
        if transport == .tcp {
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
        Glibc.close(fd)
    }

    /// Binds to a specific local address (a signal connection's 127.77.0.1 source).
    func bind(to endpoint: Endpoint) throws {
        var (storage, length) = endpoint.socketAddress
        let bound = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        guard bound == 0 else { throw Self.error(.socket, server, transport, "cannot bind \(endpoint)", errno) }
    }

    /// The local address and port the socket is bound to.
    func localEndpoint() throws -> Endpoint {
        guard let endpoint = Endpoint.local(of: fd) else { throw Self.error(.socket, server, transport, "getsockname failed", errno) }
        return endpoint
    }

    /// TCP: starts connecting without waiting. True when already connected; false when under way (wait for
    /// POLLOUT, then ``pendingError()``); throws at once when refused or otherwise impossible.
    func beginConnect() throws -> Bool {
        if connectOnce() == 0 { return true }
        let code = errno
        guard code == EINPROGRESS || code == EINTR else { throw connectError(code) }
        return false
    }

    /// TCP: the outcome of a connect under way (SO_ERROR): 0 once connected.
    func pendingError() -> Int32 {
        var failure: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &length)
        return failure
    }

    /// TCP: connects to the server by the deadline.
    func connect(deadline: ContinuousClock.Instant, timeout: Duration) throws {
        if try beginConnect() { return }
        guard try finishConnect(until: deadline) else {
            throw STUNClientError(.timeout, server, transport, "no TCP connection within \(timeout)")
        }
    }

    /// TCP: waits for a connect under way (``beginConnect()``) until `deadline` (one already past only looks):
    /// true once connected, false while still under way; throws when it failed.
    func finishConnect(until deadline: ContinuousClock.Instant) throws -> Bool {
        guard try wait(for: Int16(POLLOUT), until: deadline) else { return false }
        let failure = pendingError()
        if failure != 0 { throw connectError(failure) }
        return true
    }

    /// UDP: sends one datagram.
    func send(_ bytes: [UInt8]) throws {
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent < 0 {
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { return }  // lost like any datagram
            throw receiveError(code, "cannot send")
        }
    }

    /// UDP: the next datagram, or nil once the deadline has passed.
    func receiveDatagram(until deadline: ContinuousClock.Instant) throws -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: STUNMessage.defaultMaximumLength)
        while try wait(for: Int16(POLLIN), until: deadline) {
            let count = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if count >= 0 { return Array(buffer[0..<count]) }
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { continue }
            throw receiveError(code, "cannot receive")
        }
        return nil
    }

    /// TCP: sends all bytes by the deadline.
    func sendAll(_ bytes: [UInt8], deadline: ContinuousClock.Instant, timeout: Duration) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if sent >= 0 {
                offset += sent
                continue
            }
            let code = errno
            guard code == EAGAIN || code == EWOULDBLOCK || code == EINTR else {
                throw receiveError(code, "cannot send the request")
            }
            guard try wait(for: Int16(POLLOUT), until: deadline) else {
                throw STUNClientError(.timeout, server, transport, "request not sent within \(timeout)")
            }
        }
    }

    /// TCP: the next bytes of the stream by the deadline.
    func receiveStream(until deadline: ContinuousClock.Instant, timeout: Duration, received: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 2048)
        while try wait(for: Int16(POLLIN), until: deadline) {
            let count = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 { return Array(buffer[0..<count]) }
            if count == 0 {
                throw STUNClientError(
                    .badResponse, server, transport, "server closed the connection after \(received) bytes of answer")
            }
            let code = errno
            if code == EAGAIN || code == EWOULDBLOCK || code == EINTR { continue }
            throw receiveError(code, "cannot receive")
        }
        throw STUNClientError(
            .timeout, server, transport, "no complete answer within \(timeout) (\(received) bytes received)")
    }

    /// Waits for `events`; false when the deadline passed first (one already past still looks once).
    private func wait(for events: Int16, until deadline: ContinuousClock.Instant) throws -> Bool {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&entry, 1, remaining.pollTimeout)
            if ready > 0 { return true }
            if ready < 0 && errno != EINTR {
                throw Self.error(.socket, server, transport, "poll failed", errno)
            }
            if ContinuousClock.now >= deadline { return false }
        }
    }

    private func connectOnce() -> Int32 {
        var (storage, length) = server.socketAddress
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
        }
    }

    private func connectError(_ code: Int32) -> STUNClientError {
        if code == ECONNREFUSED {
            return STUNClientError(.refused, server, transport, "connection refused")
        }
        return Self.error(.socket, server, transport, "cannot connect", code)
    }

    private func receiveError(_ code: Int32, _ what: String) -> STUNClientError {
        if code == ECONNREFUSED {
            return STUNClientError(.refused, server, transport, "refused (nothing listens on \(server))")
        }
        return Self.error(.socket, server, transport, what, code)
    }

    private static func error(
        _ code: STUNClientError.Code, _ server: Endpoint, _ transport: STUNClient.Transport, _ what: String,
        _ errnoValue: Int32
    ) -> STUNClientError {
        let code = code == .socket && (errnoValue == EADDRINUSE || errnoValue == EADDRNOTAVAIL) ? .portTaken : code
        return STUNClientError(code, server, transport, "\(what): \(String(cString: strerror(errnoValue)))")
    }
}
