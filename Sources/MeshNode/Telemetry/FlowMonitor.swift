import CNodeSupport
import FoundationEssentials
import Glibc
import Logging
import Synchronization
import WireFormat
import ZeroMQ

/// Follows the app's sockets of mesh connections in the kernel's tables and tells the broker what moved, for
/// the tap's flow and close events. The node keeps no copy of a socket it hands to the app (the app's close()
/// must send the FIN), so it finds the socket again by its cookie through sock_diag: every `interval` it samples
/// bytes and RTT (TCP_INFO); the kernel's destroy notices give each socket's final counts the moment it is gone.
/// Where notices are not allowed, a socket missing from the table is closed with its last sample's counts.
///
/// Samples of connections this node opened go to the broker every interval (the tap's flow events); a closed
/// connection is reported by both sides, and the broker publishes the first report.
final class FlowMonitor: Sendable {
    private let session: MeshSession
    private let interval: Duration
    private let logger: Logger
    private let state = Mutex(State())
    private let brokerRTT: @Sendable () -> Duration?
    /// Every connection handed to the app, by the path it started on, and the relayed ones that moved to direct.
    private let counts = Mutex(LinkCounts())
    private let wake: WakePipe
    private let stopped = Atomic<Bool>(false)
    private let done = Mutex<CheckedContinuation<Void, Never>?>(nil)

    struct Flow {
        let id: UInt64
        let initiator: Bool
        let peer: IPv4Address
        let peerName: String
        let port: UInt16
        var path: Boxermesh_V1_Path
        let started: ContinuousClock.Instant
        /// The socket whose counters are the app's bytes: the app's, or after an upgrade the direct socket.
        var cookie: UInt64
        /// The app's socket's inode: how the node finds it in the app's descriptors (``peerExpired(_:)``).
        var inode: UInt64
        /// Bytes each way on the socket before the app got it (a direct link's token proofs, a splice's hello), not
        /// the app's.
        var preamble: (sent: UInt64, received: UInt64)
        /// The app's bytes each way before that socket carried them (an upgraded connection's relayed bytes).
        var base: (sent: UInt64, received: UInt64) = (0, 0)
        /// Whose RTT to report: the app's socket (direct), the node's direct socket (upgraded), or none (relayed).
        var rttCookie: UInt64?
        var sent: UInt64 = 0
        var received: UInt64 = 0
        var rttMicroseconds: UInt32 = 0
        var sampledAt: ContinuousClock.Instant
        /// Missing from one table read: gone, unless a destroy notice is still on its way.
        var missing = false
    }

    private struct State {
        var table = Table()
        var nextSample = ContinuousClock.now
        /// The destroy-notice subscription, open only while there are flows: the kernel tells every subscriber
        /// in the namespace of every TCP socket that goes, which costs nodes that share one (the scale lab)
        /// in proportion to all of their sockets. -1 when closed.
        var destroyFD: Int32 = -1
        /// The kernel refused the subscription once (no permission): close counts come from the last sample.
        var destroyRefused = false
        /// Close reports held back until `flushAt` (``Timing/Choice/closeReportDelay``) or the next sampling.
        var unsent: [Boxermesh_V1_FlowSample] = []
        var flushAt: ContinuousClock.Instant?
    }

    /// `brokerRTT`: the node's round trip to the broker, for relayed connections' RTT estimate.
    init(session: MeshSession, interval: Duration, logger: Logger, brokerRTT: @escaping @Sendable () -> Duration?) throws {
        self.session = session
        self.brokerRTT = brokerRTT
        self.interval = interval
        self.logger = logger
        wake = try WakePipe()
    }

    deinit {
        state.withLock { if $0.destroyFD >= 0 { close($0.destroyFD) } }
    }

    // MARK: What the link manager tells

    /// Follows the socket `fd` (about to go to the app) of connection `id`. A direct link's socket carried the
    /// two token proofs before the app got it; those bytes are not counted.
    /// `preamble`: what the nodes exchange on the socket before the app's bytes, where it is not just the path's
    /// (``preamble(_:)``): a spare link's claim and offer too.
    func track(
        fd: Int32, id: UInt64, initiator: Bool, peer: Member, port: UInt16, path: Boxermesh_V1_Path,
        preamble: (sent: UInt64, received: UInt64)? = nil
    ) {
        counts.withLock { path == .direct ? ($0.direct += 1) : ($0.relayed += 1) }
        let cookie = boxer_socket_cookie(fd)
        guard cookie != 0 else { return logger.debug("socket \(fd) has no cookie: its flow is not followed") }
        let now = ContinuousClock.now
        var status = stat()
        let inode = fstat(fd, &status) == 0 ? UInt64(status.st_ino) : 0
        let flow = Flow(
            id: id, initiator: initiator, peer: peer.ipv4, peerName: peer.name, port: port, path: path, started: now, cookie: cookie,
            inode: inode, preamble: preamble ?? (path == .direct ? Self.preamble(.direct) : (0, 0)), rttCookie: path == .direct ? cookie : nil, sampledAt: now)
        enum Subscription { case open, opened, refused(Int32) }
        let subscription = state.withLock { state -> Subscription in
            state.table.insert(flow)
            // Subscribed before the app has the socket, so its destroy notice cannot be missed.
            guard state.destroyFD < 0, !state.destroyRefused else { return .open }
            state.destroyFD = boxer_tcp_destroy_listen()
            state.destroyRefused = state.destroyFD < 0
            return state.destroyRefused ? .refused(errno) : .opened
        }
        switch subscription {
        case .opened: wake.wake()  // the thread polls the subscription from now on
        case .refused(let code):
            logger.notice(
                "no socket destroy notices here (\(String(cString: strerror(code)))): close events carry the last sample's counts")
            wake.wake()
        case .open: break  // polled already; the flow's first sample comes with the next pass
        }
    }

    /// What a node sends and receives on a link's socket before the app's bytes: both token proofs, and on a
    /// spliced one first its hello to the broker.
    static func preamble(_ path: Boxermesh_V1_Path) -> (sent: UInt64, received: UInt64) {
        let proof = UInt64(LinkToken.proofSize)
        return path == .spliced ? (UInt64(SpliceHello.size) + proof, proof) : (proof, proof)
    }

    /// Connection `id` moved from the relay to the direct (or spliced: `path`) socket `direct`, held by the relay pump.
    func upgraded(_ id: UInt64, direct: Int32?, path: Boxermesh_V1_Path) {
        counts.withLock { $0.upgraded += 1 }
        let cookie = direct.map { boxer_socket_cookie($0) }
        amend(id, .upgraded(path: path, rttCookie: cookie == 0 ? nil : cookie))
    }

    /// From now on the app's bytes of upgraded connection `id` are counted on its direct socket (the node's copy
    /// loop, then the app itself, moves them there), after `relayed`: the app's socket to the node is about to go.
    /// `path` is the socket's (direct or spliced).
    func follow(_ id: UInt64, direct: Int32, path: Boxermesh_V1_Path, relayed: (sent: UInt64, received: UInt64)) {
        let cookie = boxer_socket_cookie(direct)
        guard cookie != 0 else { return }
        amend(id, .follow(cookie: cookie, path: path, relayed: .init(sent: relayed.sent, received: relayed.received)))
    }

    /// The app holds connection `id`'s direct socket now (a vanished peer's connections are reset there).
    func handedOff(_ id: UInt64, direct: Int32) {
        var status = stat()
        guard fstat(direct, &status) == 0 else { return }
        amend(id, .handedOff(inode: UInt64(status.st_ino)))
    }

    /// Each of these may come before the connection's ``track(fd:id:initiator:peer:port:path:preamble:)``.
    private func amend(_ id: UInt64, _ change: Change) {
        let now = ContinuousClock.now
        state.withLock { $0.table.amend(id, change, now: now) }
    }

    /// The connections handed to the app so far.
    var linkCounts: LinkCounts { counts.withLock { $0 } }

    // MARK: What the broker tells

    /// The broker expired `peer` (it vanished without a FIN): resets the app's socket of every connection to it, so
    /// the app's calls fail with ECONNRESET now rather than when TCP gives up (keepalive after 5 s of silence; a
    /// writer's unacknowledged data only after the retransmission limit, minutes). Blocks while it reads /proc.
    func peerExpired(_ peer: Member) {
        let inodes = state.withLock { state in
            state.table.flows.values.filter { $0.peer == peer.ipv4 && $0.inode != 0 }.map(\.inode)
        }
        guard !inodes.isEmpty else { return }
        var reset = 0
        var refusal: Int32?
        for inode in inodes {
            switch boxer_reset_app_socket(inode) {
            case 1: reset += 1
            case 0: break  // the app closed it meanwhile
            default: refusal = errno
            }
        }
        logger.notice(
            "a peer vanished: its connections reset", metadata: ["peer": "\(peer.name)", "connections": "\(reset)"])
        if let refusal {
            logger.warning(
                "cannot reach the app's sockets to end them (\(String(cString: strerror(refusal)))): connections to a vanished peer end by keepalive, after 5 s of silence, or by TCP's retransmission limit",
                metadata: ["peer": "\(peer.name)"])
        }
    }

    // MARK: Running

    /// How long ``finish()`` waits for the exited app's sockets to be gone (a FIN exchange, normally).
    static let finishTimeout = Duration.seconds(1)

    /// Samples and listens for destroy notices on a thread of its own until ``finish()``.
    func start() {
        startThread(named: "flow-monitor") { [self] in
            while !stopped.load(ordering: .acquiring) {
                // While close reports are held back, further destroy notices wait in the subscription's queue and
                // are read with them: one wake-up per batch, not one per socket.
                let (wait, destroyFD) = state.withLock { state in
                    (ContinuousClock.now.duration(to: min(state.nextSample, state.flushAt ?? state.nextSample)),
                        state.flushAt == nil ? state.destroyFD : -1)
                }
                var fds = [pollfd(fd: wake.readEnd, events: Int16(POLLIN), revents: 0)]
                if destroyFD >= 0 { fds.append(pollfd(fd: destroyFD, events: Int16(POLLIN), revents: 0)) }
                _ = poll(&fds, nfds_t(fds.count), wait.pollTimeout)
                wake.drain()
                if stopped.load(ordering: .acquiring) { break }
                let sampling = ContinuousClock.now >= state.withLock { $0.nextSample }
                report(due(pass(sampling: sampling), flush: sampling))
                state.withLock { state in
                    guard state.table.flows.isEmpty, state.destroyFD >= 0 else { return }
                    close(state.destroyFD)
                    state.destroyFD = -1
                }
            }
            // The app has exited: its sockets go as soon as their FINs are exchanged. Report them before we leave,
            // while the peer is still a member the broker can name.
            var final = due([], flush: true)
            let deadline = ContinuousClock.now + Self.finishTimeout
            repeat {
                final += pass(sampling: true).filter(\.closed)
                if state.withLock({ $0.table.flows.isEmpty }) { break }
                usleep(50_000)
            } while ContinuousClock.now < deadline
            report(final)
            done.withLock { $0?.resume(); $0 = nil }
        }
    }

    /// Stops, and reports the connections whose sockets closed meanwhile (the app has exited: all of them).
    func finish() async {
        await withCheckedContinuation { continuation in
            done.withLock { $0 = continuation }
            stopped.store(true, ordering: .releasing)
            wake.wake()
        }
    }

    /// What to report now: `samples` and those held back, when `flush` says so or their delay is up; else nothing,
    /// and the samples wait for the ones that follow.
    private func due(_ samples: [Boxermesh_V1_FlowSample], flush: Bool) -> [Boxermesh_V1_FlowSample] {
        let now = ContinuousClock.now
        return state.withLock { state in
            state.unsent += samples
            guard !state.unsent.isEmpty else { return [] }
            if flush || state.flushAt.map({ now >= $0 }) == true {
                defer { (state.unsent, state.flushAt) = ([], nil) }
                return state.unsent
            }
            if state.flushAt == nil { state.flushAt = now + Timing.Choice.closeReportDelay }
            return []
        }
    }

    /// Reads destroy notices, and with `sampling` the socket table; returns the samples to report.
    private func pass(sampling: Bool) -> [Boxermesh_V1_FlowSample] {
        var destroyed: [boxer_tcp_counters] = []
        // Only this thread closes the subscription, so the descriptor stays valid while it reads.
        let destroyFD = state.withLock { $0.destroyFD }
        if destroyFD >= 0 {
            var buffer = [boxer_tcp_counters](repeating: .init(), count: 1024)
            while true {
                let count = Int(boxer_tcp_destroy_read(destroyFD, &buffer, Int32(buffer.count)))
                guard count > 0 else { break }
                destroyed += buffer[0..<count]
            }
        }
        var table: [UInt64: boxer_tcp_counters]? = nil
        // The table is read only while the app holds mesh connections.
        if sampling, state.withLock({ !$0.table.flows.isEmpty }) {
            table = Self.socketTable(logger: logger)
        }
        let now = ContinuousClock.now
        let relayRTT = brokerRTT()
        return state.withLock { state in
            var samples: [Boxermesh_V1_FlowSample] = []
            for counters in destroyed {
                guard var flow = state.table.flows.removeValue(forKey: counters.cookie) else { continue }
                Self.update(&flow, with: counters, relayRTT: relayRTT, now: now)
                samples.append(Self.sample(flow, closed: true, previous: nil, now: now))
            }
            if sampling { state.nextSample = now + interval }
            guard let table else { return samples }
            for (cookie, var flow) in state.table.flows {
                guard let counters = table[cookie] else {
                    // Gone. A destroy notice may still be on its way; without notices, the last sample is final.
                    if flow.missing || state.destroyFD < 0 {
                        state.table.flows[cookie] = nil
                        samples.append(Self.sample(flow, closed: true, previous: nil, now: now))
                    } else {
                        state.table.flows[cookie]?.missing = true
                    }
                    continue
                }
                let previous = flow
                Self.update(&flow, with: counters, relayRTT: relayRTT, now: now)
                if let rttCookie = flow.rttCookie, rttCookie != cookie, let direct = table[rttCookie] {
                    flow.rttMicroseconds = direct.rtt_us
                }
                state.table.flows[cookie] = flow
                // Only the connecting side's samples are published: one flow line per connection.
                if flow.initiator { samples.append(Self.sample(flow, closed: false, previous: previous, now: now)) }
            }
            return samples
        }
    }

    /// This namespace's TCP sockets by cookie; nil when the kernel will not tell.
    private static func socketTable(logger: Logger) -> [UInt64: boxer_tcp_counters]? {
        var buffer = [boxer_tcp_counters](repeating: .init(), count: 256)
        while true {
            let count = Int(boxer_tcp_dump(&buffer, Int32(buffer.count)))
            guard count >= 0 else {
                logger.debug("cannot read the kernel's socket table: \(String(cString: strerror(errno)))")
                return nil
            }
            // More sockets than room: read again with room for them all (and some that may have come meanwhile).
            guard count <= buffer.count else {
                buffer = [boxer_tcp_counters](repeating: .init(), count: count * 2)
                continue
            }
            return Dictionary(buffer[0..<count].map { ($0.cookie, $0) }, uniquingKeysWith: { first, _ in first })
        }
    }

    /// The kernel counts the SYN in bytes_acked, and each FIN once acknowledged or received: app bytes are the
    /// counters less those and less the preamble (a reset connection may be off by one byte).
    private static func update(_ flow: inout Flow, with counters: boxer_tcp_counters, relayRTT: Duration?, now: ContinuousClock.Instant) {
        let finished = [5, 6, 7, 11].contains(counters.state)  // FIN_WAIT2, TIME_WAIT, CLOSE, CLOSING: our FIN is out
        let finReceived = [6, 7, 8, 9, 11].contains(counters.state)  // TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING
        let overhead = 1 + (finished && counters.bytes_acked >= 2 ? 1 : 0) + flow.preamble.sent
        let receivedOverhead = (finReceived && counters.bytes_received > 0 ? 1 : 0) + flow.preamble.received
        flow.sent = max(flow.sent, flow.base.sent + (counters.bytes_acked >= overhead ? counters.bytes_acked - overhead : 0))
        flow.received = max(
            flow.received, flow.base.received + (counters.bytes_received >= receivedOverhead ? counters.bytes_received - receivedOverhead : 0))
        if flow.rttCookie == flow.cookie {
            flow.rttMicroseconds = counters.rtt_us
        } else if flow.rttCookie == nil, let relayRTT {
            // Relayed: node -> broker -> node, about twice our round trip to the broker.
            flow.rttMicroseconds = UInt32(clamping: relayRTT.microseconds * 2)
        }
        flow.missing = false
        flow.sampledAt = now
    }

    private static func sample(_ flow: Flow, closed: Bool, previous: Flow?, now: ContinuousClock.Instant) -> Boxermesh_V1_FlowSample {
        var sample = Boxermesh_V1_FlowSample()
        sample.connectionID = flow.id
        sample.initiator = flow.initiator
        sample.peerAddress = flow.peer.value
        sample.peerName = flow.peerName
        sample.port = UInt32(flow.port)
        sample.path = flow.path
        sample.bytesSent = flow.sent
        sample.bytesReceived = flow.received
        sample.rttUs = flow.rttMicroseconds
        sample.durationMs = UInt64(clamping: (now - flow.started).milliseconds)
        sample.closed = closed
        if let previous {
            let seconds = Double((now - previous.sampledAt).microseconds) / 1e6
            if seconds > 0 {
                sample.sendRateBps = UInt64(Double(flow.sent - previous.sent) * 8 / seconds)
                sample.receiveRateBps = UInt64(Double(flow.received - previous.received) * 8 / seconds)
            }
        }
        return sample
    }

    private func report(_ samples: [Boxermesh_V1_FlowSample]) {
        guard !samples.isEmpty else { return }
        var report = Boxermesh_V1_FlowReport()
        report.samples = samples
        session.post(.flowReport(report))
    }
}
