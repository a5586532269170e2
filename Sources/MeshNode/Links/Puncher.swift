import FoundationEssentials
import Glibc
import WireFormat
import ZeroMQ

/// Opens a direct TCP connection through two NATs by simultaneous open: both ends connect() from the port the
/// reflector saw to the other's public endpoint, at the same time, until the SYNs cross. Blocking: only
/// ``DirectPath`` calls it, on its pool.
enum Puncher {
    /// A free local TCP port for a new link: a random one of the ephemeral range that no socket holds, not even
    /// one in TIME_WAIT (bound once, without SO_REUSEADDR, to ask the kernel). After ``freePortTries`` taken ones,
    /// one that only sockets sharing it hold (TIME_WAIT, as a rule: a link from it runs to another endpoint), and
    /// after as many again the kernel's pick. Not the kernel's pick first: with SO_REUSEADDR a bind to port 0
    /// scans the whole range for a port no socket holds, and an app that opens a connection per request fills it
    /// with TIME_WAIT sockets (measured: redis-benchmark -k 0, 1,500 connections a second, spent a quarter of both
    /// cores in that scan).
    static func freeLocalPort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError.lastError("cannot create a socket to find a free port") }
        defer { close(fd) }
        let range = ephemeralPorts
        for attempt in 0..<2 * freePortTries {
            if attempt == freePortTries {
                var one: Int32 = 1
                for option in [SO_REUSEADDR, SO_REUSEPORT] { _ = setsockopt(fd, SOL_SOCKET, option, &one, socklen_t(MemoryLayout<Int32>.size)) }
            }
            let port = UInt16.random(in: range)
            if bind(fd, port: port) { return port }
            guard errno == EADDRINUSE else { break }
        }
        guard bind(fd, port: 0), let bound = Endpoint.local(of: fd) else { throw SocketError.lastError("no free local port") }
        return bound.port
    }

    /// Random ports tried in each round: with the range nine tenths full, 16 tries find a free one four times in
    /// five.
    static let freePortTries = 16

    /// The ephemeral port range of this network namespace (ip_local_port_range), where a new link's port comes from.
    static let ephemeralPorts: ClosedRange<UInt16> = {
        let fields = (ReadOnlyFile("/proc/sys/net/ipv4/ip_local_port_range")?.read(upTo: 64)).map {
            String(decoding: $0, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { UInt16($0) }
        } ?? []
        guard fields.count == 2, fields[0] > 0, fields[0] <= fields[1] else { return 32768...60999 }
        return fields[0]...fields[1]
    }()

    private static func bind(_ fd: Int32, port: UInt16) -> Bool {
        var (address, length) = Endpoint(IPv4Address.any, port: port).socketAddress
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) == 0 } }
    }

    /// Connects from `localPort` to `remote`, one attempt per ``Timing/Choice/punchAttempt`` (a SYN the far NAT
    /// dropped is never answered, so each attempt sends a fresh one), until `deadline` or until `abandoned` says
    /// so. Returns a blocking connected socket.
    ///
    /// With `listening` (the accepting end) the port also listens: where nothing filters between the two ends
    /// (loopback, public addresses) SYNs never cross, because each is refused at once; then the other end's plain
    /// connect lands here. Either way it is the one connection of this address pair.
    static func punch(
        from localPort: UInt16, to remote: Endpoint, until deadline: ContinuousClock.Instant, listening: Bool,
        abandoned: () -> Bool
    ) throws(SocketError) -> Int32 {
        let listener = listening ? try listen(on: localPort) : nil
        defer { if let listener { close(listener) } }
        var attempts = 0
        var lastError = "no answer"
        while ContinuousClock.now < deadline {
            if abandoned() { throw SocketError(ECANCELED, "punching to \(remote) was abandoned") }
            // A connection the other end made to our listener wins; its address pair also blocks our attempts.
            if let listener, let accepted = acceptPending(listener) { return established(accepted) }
            attempts += 1
            let socket: DialSocket
            do {
                socket = try DialSocket(server: remote, transport: .tcp, localPort: localPort, reuse: true)
            } catch {
                throw SocketError(EHOSTUNREACH, "punch to \(remote) failed: \(error)")
            }
            var started = false
            do {
                if try socket.beginConnect() { return established(socket.fd) }
                started = true
            } catch let error as STUNClientError where error.code == .refused || listener != nil {
                // Refused: the far side had no SYN out yet and its host answered with RST. Any other failure
                // while listening: the pair is taken by a connection waiting in our listener. Retry shortly.
                lastError = error.detail
            } catch {
                socket.close()
                throw SocketError(EHOSTUNREACH, "punch to \(remote) failed: \(error)")
            }
            // Never negative: the deadline may pass inside the loop, and poll() takes a negative wait as "forever".
            let wait = max(.zero, min(started ? Timing.Choice.punchAttempt : Timing.Choice.punchRetry, ContinuousClock.now.duration(to: deadline)))
            var entries = [pollfd(fd: started ? socket.fd : -1, events: Int16(POLLOUT), revents: 0)]
            if let listener { entries.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0)) }
            // In slices, so a punch abandoned meanwhile (an offer withdrawn, a race decided) stops within one.
            let end = ContinuousClock.now + wait
            repeat {
                let slice = min(Timing.Choice.punchSlice, ContinuousClock.now.duration(to: end))
                if poll(&entries, nfds_t(entries.count), Int32(clamping: max(.zero, slice).milliseconds)) != 0 || abandoned() { break }
            } while ContinuousClock.now < end
            if started, entries[0].revents != 0 {
                let failure = socket.pendingError()
                if failure == 0 { return established(socket.fd) }
                lastError = String(cString: strerror(failure))
            }
            socket.close()
        }
        throw SocketError(
            ETIMEDOUT, "no direct path to \(remote) after \(attempts) attempts (last: \(lastError))")
    }

    /// A listener on the punch port, sharing it with the outgoing attempts (SO_REUSEADDR|SO_REUSEPORT).
    private static func listen(on port: UInt16) throws(SocketError) -> Int32 {
        let probe: DialSocket
        do {
            probe = try DialSocket(server: Endpoint(IPv4Address.loopback, port: 9), transport: .tcp, localPort: port, reuse: true)
        } catch {
            throw SocketError(EADDRINUSE, "cannot listen on punch port \(port): \(error)")
        }
        guard Glibc.listen(probe.fd, 4) == 0 else {
            let error = SocketError.lastError("cannot listen on punch port \(port)")
            Glibc.close(probe.fd)
            throw error
        }
        return probe.fd
    }

    private static func acceptPending(_ listener: Int32) -> Int32? {
        let accepted = accept(listener, nil, nil)
        return accepted >= 0 ? accepted : nil
    }

    /// Every direct link leaves here (connecting, accepting, upgrading a relayed connection): blocking, with the
    /// liveness settings of ``LinkLiveness``.
    private static func established(_ fd: Int32) -> Int32 {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        LinkLiveness.apply(to: fd)
        return fd
    }

    /// Sends this end's proof and checks the other end's, reading exactly one proof so the app's first bytes stay
    /// in the socket; with an answer (``DirectPath/Proof/answer``) it checks first, then sends proof and answer in
    /// one segment. Closes nothing; throws when the peer is not who the broker paired us with.
    static func verify(_ fd: Int32, _ proof: DirectPath.Proof, until deadline: ContinuousClock.Instant) throws(SocketError) {
        let (token, connectionID, initiator) = (proof.token, proof.connectionID, proof.initiator)
        let ours = token.proof(initiator: initiator, connectionID: connectionID)
        if proof.answer.isEmpty { try FixedMessage.send(ours, on: fd, "link proof") }
        let theirs = try FixedMessage.receive(LinkToken.proofSize, from: fd, until: deadline, "link proof")
        guard token.matches(theirs, initiator: !initiator, connectionID: connectionID) else {
            throw SocketError(ECONNREFUSED, "the peer's link proof is wrong: not the node the broker paired")
        }
        if !proof.answer.isEmpty { try FixedMessage.send(ours + proof.answer, on: fd, "link proof") }
    }
}
