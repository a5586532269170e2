import Glibc
import Logging
import WireFormat
import ZeroMQ

/// The reflector's poll loop. Created on, and confined to, the reflector thread: its state needs no locks.
/// UDP handling is in `Reflector+UDP.swift`, TCP handling in `Reflector+TCP.swift`.
final class ReflectorLoop {
    let udp: Int32?
    let listener: Int32?
    let wake: ReflectorWake
    let configuration: ReflectorConfiguration
    let logger: Logger
    let clock = ContinuousClock()

    /// Open TCP connections by file descriptor.
    var connections: [Int32: ReflectorConnection] = [:]
    /// Dropped input, logged a few lines per second at most, per transport.
    let udpBadInput: BadInputLog
    let tcpBadInput: BadInputLog
    /// Receive buffer for UDP datagrams (one more byte than accepted, to spot oversized ones).
    var datagram: [UInt8]

    /// Set when accept() ran out of file descriptors: the listener is left out of poll() until then, so a queued
    /// connection that cannot be accepted does not spin the loop.
    var acceptPausedUntil: ContinuousClock.Instant?

    /// Counters, logged at debug level when the loop ends.
    var udpAnswered = 0
    var tcpAnswered = 0

    /// Most datagrams or connections taken per poll wake-up, so one busy socket cannot starve the others.
    static let batch = 256
    /// A client that does not read its answers gets its connection closed once this much output is pending.
    static let maximumPendingOutput = 16 * 1024

    init(sockets: ReflectorSockets, wake: ReflectorWake, configuration: ReflectorConfiguration, logger: Logger) {
        self.udp = sockets.udp
        self.listener = sockets.tcp
        self.wake = wake
        self.configuration = configuration
        self.logger = logger
        self.udpBadInput = BadInputLog(logger: logger, port: "STUN UDP")
        self.tcpBadInput = BadInputLog(logger: logger, port: "STUN TCP")
        self.datagram = [UInt8](repeating: 0, count: STUNMessage.defaultMaximumLength + 1)
    }

    /// Polls until ``ReflectorWake/stop()``.
    func run() {
        while !wake.isStopping {
            var fds: [pollfd] = [pollfd(fd: wake.readEnd, events: Int16(POLLIN), revents: 0)]
            var udpIndex: Int?
            var listenerIndex: Int?
            if let udp {
                udpIndex = fds.count
                fds.append(pollfd(fd: udp, events: Int16(POLLIN), revents: 0))
            }
            if let listener, acceptPausedUntil.map({ clock.now >= $0 }) ?? true {
                acceptPausedUntil = nil
                listenerIndex = fds.count
                fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
            }
            let firstConnection = fds.count
            for (fd, connection) in connections {
                let events = connection.output.isEmpty ? POLLIN : POLLIN | POLLOUT
                fds.append(pollfd(fd: fd, events: Int16(events), revents: 0))
            }
            let ready = poll(&fds, nfds_t(fds.count), pollTimeoutMilliseconds())
            if ready < 0 {
                let code = errno
                if code == EINTR { continue }
                logger.error("STUN reflector poll failed: \(ReflectorSocket.describe(errno: code)); stopping")
                return
            }
            if fds[0].revents != 0 { wake.drain() }
            if wake.isStopping { return }
            if let udp, let udpIndex, fds[udpIndex].revents != 0 { readDatagrams(udp) }
            if let listener, let listenerIndex, fds[listenerIndex].revents != 0 { acceptConnections(listener) }
            for entry in fds[firstConnection...] where entry.revents != 0 {
                serviceConnection(entry.fd, revents: entry.revents)
            }
            closeIdleConnections()
            udpBadInput.flush()
            tcpBadInput.flush()
        }
    }

    /// Closes the connections and listening sockets.
    func closeAll() {
        for fd in connections.keys { Glibc.close(fd) }
        connections.removeAll()
        if let udp { Glibc.close(udp) }
        if let listener { Glibc.close(listener) }
        logger.debug(
            "STUN reflector loop ended",
            metadata: [
                "udpAnswered": "\(udpAnswered)", "tcpAnswered": "\(tcpAnswered)",
                "udpDropped": "\(udpBadInput.total)", "tcpDropped": "\(tcpBadInput.total)",
            ])
    }

    /// Wake up at the next idle deadline, and at least once a second so that drop summaries get logged.
    private func pollTimeoutMilliseconds() -> Int32 {
        var wait = Duration.seconds(1)
        if let oldest = connections.values.map(\.lastActivity).min() {
            wait = min(wait, clock.now.duration(to: oldest + configuration.idleTimeout))
        }
        if let acceptPausedUntil {
            wait = min(wait, clock.now.duration(to: acceptPausedUntil))
        }
        return wait.pollTimeout
    }
}
