import CNodeSupport
import CSeccomp
import Glibc
import Logging
import Synchronization
import WireFormat
import ZeroMQ

/// The app's non-blocking connects in progress: for each, the stand-in socket the app holds meanwhile (a loopback
/// pair whose app end is neither readable nor writable, as a connecting socket), by the stand-in's cookie.
///
/// The link replaces the stand-in when the app asks how its connect went — getsockopt(SO_ERROR) after the socket
/// turned writable, a connect() again, getpeername — since only a pending call lets the node put a socket into the
/// app. An app that uses the stand-in first (writes at once, or waits for the server to speak) is not left
/// hanging: once the stand-in has been writable for ``Timing/Choice/standInGrace`` without a question, or carries a
/// byte, the node bridges it to the link, and the connection's bytes pass through the node from then on.
final class StandIns: Sendable {
    /// Where one connect stands.
    enum Stage: Sendable {
        case building
        case ready(Link)
        case failed(SocketError)
        /// The app used the stand-in: the link's bytes are copied to it.
        case bridged(Link)
    }

    private struct Entry {
        var nodeEnd: Int32
        /// The node's copy of the app's end, held while the link is built (so an early close by the app shows only
        /// once the stand-in is released), then closed.
        var appEnd: Int32
        let filled: Int
        var stage: Stage = .building
        var due: ContinuousClock.Instant?
    }

    private let entries = Mutex<[UInt64: Entry]>([:])
    /// A pipe that wakes the watcher: read end, write end.
    private let wakeUp: (read: Int32, write: Int32)
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
        var ends: [Int32] = [-1, -1]
        _ = pipe(&ends)
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC); _ = fcntl(end, F_SETFL, O_NONBLOCK) }
        wakeUp = (ends[0], ends[1])
        startThread(named: "seccomp-stand-ins") { [self] in watch() }
    }

    /// A fresh stand-in: the app's end to put into the app and its cookie, which names the connect from now on.
    func open() throws(SocketError) -> (appEnd: Int32, cookie: UInt64) {
        var appEnd: Int32 = -1
        var nodeEnd: Int32 = -1
        var filled = 0
        guard boxer_stand_in_open(&appEnd, &nodeEnd, &filled) == 0 else {
            throw SocketError(errno, "no stand-in socket for a non-blocking connect")
        }
        let cookie = boxer_socket_cookie(appEnd)
        entries.withLock { $0[cookie] = Entry(nodeEnd: nodeEnd, appEnd: appEnd, filled: filled) }
        return (appEnd, cookie)
    }

    /// Forgets a stand-in that never reached the app.
    func discard(_ cookie: UInt64) {
        guard let entry = entries.withLock({ $0.removeValue(forKey: cookie) }) else { return }
        close(entry.nodeEnd)
        close(entry.appEnd)
    }

    /// The link (or why there is none) for a connect: the stand-in turns writable, or is reset for an error, and
    /// waits for the app's question. Under the lock from start to end: the app may ask the moment the stand-in turns
    /// writable, and must find the link.
    func finish(_ cookie: UInt64, _ outcome: Result<Link, SocketError>) {
        let kept = entries.withLock { entries in
            guard var entry = entries[cookie] else { return false }
            switch outcome {
            case .success(let link):
                guard boxer_stand_in_drain(entry.nodeEnd, entry.filled, 100) == 0 else {
                    close(entry.nodeEnd)  // the stand-in broke: nothing can wait for this link
                    close(entry.appEnd)
                    entries[cookie] = nil
                    return false
                }
                // Buffers of a normal size, should the stand-in carry the connection after all.
                var size: Int32 = 256 * 1024
                _ = setsockopt(entry.appEnd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
                _ = setsockopt(entry.nodeEnd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
                entry.stage = .ready(link)
                entry.due = .now + Timing.Choice.standInGrace
            case .failure(let error):
                // An RST: the app's end reports an error (EPOLLERR), as a refused connect does.
                var reset = linger(l_onoff: 1, l_linger: 0)
                _ = setsockopt(entry.nodeEnd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
                close(entry.nodeEnd)
                entry.nodeEnd = -1
                entry.stage = .failed(error)
                entry.due = .now + Timing.Choice.unclaimedConnect
            }
            close(entry.appEnd)
            entry.appEnd = -1
            entries[cookie] = entry
            return true
        }
        if kept {
            nudge()
        } else if case .success(let link) = outcome {
            close(link.fd)
        }
    }

    /// The app asks about the stand-in `cookie`: where its connect stands, nil if it is not a stand-in. A ready link
    /// goes to `handOver`, which puts it into the app (true) or finds the app's call interrupted (false: the link
    /// waits for the next question); once in, the stand-in is forgotten. An error is told once, if `tellsError`.
    func question(_ cookie: UInt64, tellsError: Bool, handOver: (Link) -> Bool) -> Stage? {
        var bridge: (nodeEnd: Int32, link: Link)?
        let stage: Stage? = entries.withLock { entries in
            guard let entry = entries[cookie] else { return nil }
            switch entry.stage {
            case .building, .bridged: break
            case .failed: if tellsError { entries[cookie] = nil }
            case .ready(let link):
                // Bytes the app wrote to the stand-in (or its close) must reach the link: too late to hand it over.
                var byte: UInt8 = 0
                if recv(entry.nodeEnd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) >= 0 {
                    bridge = Self.beginBridge(cookie, &entries)
                    return entries[cookie]?.stage
                }
                guard handOver(link) else { break }
                entries[cookie] = nil
                close(entry.nodeEnd)
            }
            return entry.stage
        }
        if let bridge { runBridge(cookie, nodeEnd: bridge.nodeEnd, link: bridge.link) }
        return stage
    }

    // MARK: Stand-ins the app used

    /// Wakes the watcher: a stand-in turned writable, or was reset, and has a time to be acted on.
    private func nudge() {
        var one: UInt8 = 1
        _ = write(wakeUp.write, &one, 1)
    }

    /// The watcher's thread: a stand-in that carries a byte (or its end of file) or outlived its grace is bridged
    /// (or closed); an error nobody asked about is forgotten. Sleeps while no connect waits for a question.
    private func watch() {
        while true {
            let (watched, next) = entries.withLock { entries in
                let watched = entries.compactMap { cookie, entry -> (UInt64, Int32)? in
                    guard case .ready = entry.stage else { return nil }
                    return (cookie, entry.nodeEnd)
                }
                return (watched, entries.values.compactMap(\.due).min())
            }
            var ends = [pollfd(fd: wakeUp.read, events: Int16(POLLIN), revents: 0)]
            ends += watched.map { pollfd(fd: $0.1, events: Int16(POLLIN), revents: 0) }
            let wait = next.map { Int32(clamping: max(.zero, ContinuousClock.now.duration(to: $0)).milliseconds + 1) } ?? -1
            _ = poll(&ends, nfds_t(ends.count), wait)
            if ends[0].revents != 0 {
                var drained = [UInt8](repeating: 0, count: 64)
                _ = read(wakeUp.read, &drained, drained.count)
            }
            var due = Set(zip(watched, ends.dropFirst()).filter { $0.1.revents != 0 }.map(\.0.0))
            let now = ContinuousClock.now
            due.formUnion(entries.withLock { $0.filter { $0.value.due.map { $0 <= now } ?? false }.keys })
            due.forEach(act)
        }
    }

    private func act(on cookie: UInt64) {
        let bridge: (nodeEnd: Int32, link: Link)? = entries.withLock { entries in
            guard case .failed = entries[cookie]?.stage else { return Self.beginBridge(cookie, &entries) }
            entries[cookie] = nil  // nobody asked
            return nil
        }
        if let bridge { runBridge(cookie, nodeEnd: bridge.nodeEnd, link: bridge.link) }
    }

    /// A ready stand-in becomes bridged: its node end and link, for ``runBridge(_:nodeEnd:link:)``.
    private static func beginBridge(_ cookie: UInt64, _ entries: inout [UInt64: Entry]) -> (nodeEnd: Int32, link: Link)? {
        guard var entry = entries[cookie], case .ready(let link) = entry.stage else { return nil }
        entry.stage = .bridged(link)
        entry.due = nil
        entries[cookie] = entry
        return (entry.nodeEnd, link)
    }

    /// Copies between the stand-in and the link on a thread of its own until both ends are done; a stand-in the app
    /// closed without a word closes the link instead.
    private func runBridge(_ cookie: UInt64, nodeEnd: Int32, link: Link) {
        let peer = "\(IPv4Address(link.connection.peerAddress)):\(link.connection.peerPort)"
        var byte: UInt8 = 0
        if recv(nodeEnd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0 {
            logger.debug("the app closed its connect to \(peer) before it finished; the link is closed")
            close(nodeEnd)
            close(link.fd)
            entries.withLock { $0[cookie] = nil }
            return
        }
        logger.notice(
            "the app used its socket before asking whether its connect to \(peer) finished (no getsockopt SO_ERROR): this connection's bytes pass through the node")
        startThread(named: "seccomp-bridge") { [self] in
            var sent: UInt64 = 0
            var received: UInt64 = 0
            boxer_bridge(nodeEnd, link.fd, &sent, &received)
            logger.debug("the bridged connection to \(peer) ended: \(sent) bytes sent, \(received) received")
            entries.withLock { $0[cookie] = nil }
        }
    }
}
