import Glibc
import WireFormat

/// One TCP client of the reflector: what it sent that is not yet a whole message, and answers not yet written.
struct ReflectorConnection {
    let peer: Endpoint
    var input: [UInt8] = []
    var output: [UInt8] = []
    var lastActivity: ContinuousClock.Instant
    /// Requests answered on this connection.
    var answered = 0
}

extension ReflectorLoop {
    /// Accepts waiting connections; beyond ``ReflectorConfiguration/maximumTCPConnections`` the longest-idle
    /// connection is closed to make room, so idle connections cannot lock real clients out.
    func acceptConnections(_ listener: Int32) {
        for _ in 0..<Self.batch {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    accept(listener, $0, &length)
                }
            }
            if fd >= 0 {
                // accept4 needs _GNU_SOURCE, which Swift's Glibc module does not set.
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
            if fd < 0 {
                let code = errno
                switch code {
                case EINTR, ECONNABORTED, EPROTO:
                    continue
                case EAGAIN, EWOULDBLOCK:
                    return
                default:
                    // EMFILE and friends: the connection stays queued; stop watching the listener for a moment.
                    tcpBadInput.drop("cannot accept a connection: \(ReflectorSocket.describe(errno: code))")
                    acceptPausedUntil = clock.now + .milliseconds(100)
                    return
                }
            }
            guard let peer = Endpoint(socketAddress: storage) else {
                Glibc.close(fd)
                continue
            }
            if connections.count >= max(1, configuration.maximumTCPConnections) {
                evictLongestIdle()
            }
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            connections[fd] = ReflectorConnection(peer: peer, lastActivity: clock.now)
        }
    }

    /// Reads, answers complete requests, and writes pending answers for one connection.
    func serviceConnection(_ fd: Int32, revents: Int16) {
        guard var connection = connections[fd] else { return }
        if revents & Int16(POLLOUT) != 0, !connection.output.isEmpty {
            guard flush(fd, &connection) else { return close(fd) }
        }
        if revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if count == 0 {
                return close(fd)  // the client is done
            }
            if count < 0 {
                let code = errno
                if code == EAGAIN || code == EWOULDBLOCK || code == EINTR {
                    connections[fd] = connection
                    return
                }
                return close(fd)  // ECONNRESET and the like: the client went away
            }
            connection.input.append(contentsOf: chunk[0..<count])
            // Answer every complete message in the buffer; keep the partial one for later.
            while true {
                let needed: Int?
                do {
                    needed = try STUNMessage.frameLength(ofPrefix: connection.input)
                } catch {
                    tcpBadInput.drop("\(error) from \(connection.peer); connection closed")
                    return close(fd)
                }
                guard let needed, connection.input.count >= needed else { break }
                let frame = connection.input[0..<needed]
                let answer = Reflector.answer(
                    to: frame, from: connection.peer, software: configuration.software, allowingClassicRFC3489: false)
                switch answer {
                case .drop(let reason):
                    tcpBadInput.drop("\(reason); connection closed")
                    return close(fd)
                case .reply(let response):
                    connection.output.append(contentsOf: response.encoded())
                    connection.answered += 1
                    tcpAnswered += 1
                }
                connection.input.removeFirst(needed)
                connection.lastActivity = clock.now
            }
            guard connection.output.count <= Self.maximumPendingOutput else {
                tcpBadInput.drop("\(connection.peer) does not read its answers; connection closed")
                return close(fd)
            }
            if !connection.output.isEmpty {
                guard flush(fd, &connection) else { return close(fd) }
            }
        }
        connections[fd] = connection
    }

    /// Closes connections that sent no complete request for ``ReflectorConfiguration/idleTimeout``.
    func closeIdleConnections() {
        let deadline = clock.now - configuration.idleTimeout
        for (fd, connection) in connections where connection.lastActivity <= deadline {
            if connection.answered > 0 {
                logger.debug("STUN TCP connection from \(connection.peer) idle; closed")
            } else {
                let idle = configuration.idleTimeout
                tcpBadInput.drop("\(connection.peer) sent no request for \(idle); connection closed")
            }
            close(fd)
        }
    }

    /// Writes as much pending output as the socket takes; false if the connection failed.
    private func flush(_ fd: Int32, _ connection: inout ReflectorConnection) -> Bool {
        while !connection.output.isEmpty {
            let sent = connection.output.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if sent < 0 {
                let code = errno
                if code == EINTR { continue }
                return code == EAGAIN || code == EWOULDBLOCK
            }
            connection.output.removeFirst(sent)
        }
        return true
    }

    private func evictLongestIdle() {
        guard let (fd, connection) = connections.min(by: { $0.value.lastActivity < $1.value.lastActivity }) else {
            return
        }
        tcpBadInput.drop(
            "\(configuration.maximumTCPConnections) TCP connections open; "
                + "closed the longest idle, from \(connection.peer)")
        close(fd)
    }

    private func close(_ fd: Int32) {
        connections[fd] = nil
        Glibc.close(fd)
    }
}
