import Glibc
import WireFormat
import ZeroMQ

/// Who a relayed connection is with, and what an upgrade to a direct link needs: the broker's token (proven on
/// the new socket as on any direct link) and which end punches first.
struct RelayStreamContext: Sendable {
    let token: LinkToken
    let initiator: Bool
    let peer: IPv4Address
    /// The accepting side's port (for reports).
    let port: UInt16
    let started: ContinuousClock.Instant
    /// Where the connection went when it left the relay: a punched link, or the broker's splice port.
    var path = Boxermesh_V1_Path.direct
    /// It relayed at once because a punch towards the peer had just failed: with --relay-splice it splices first.
    var punchFailedRecently = false
}

/// One relayed connection inside the pump: the node's end of the app's loopback socket, the credit windows of
/// both directions, the relay bytes waiting for the app, and — once upgraded — the direct socket.
///
/// Each direction is a state machine (``Outbound``, ``Inbound``); the pump moves it only through
/// ``move(_:)-(Outbound)`` and ``move(_:)-(Inbound)``, which stop the node on a transition that the design does not
/// allow — a bug in the pump, never something a peer can cause (the pump checks the peer's frames first).
final class RelayStream {
    /// App → peer.
    enum Outbound: Equatable {
        /// App bytes go on the relay, within the credit.
        case relay
        /// The app shut down writing: fin went out on the relay.
        case relayEnded
        /// After our switch marker: app bytes go to the direct socket.
        case direct
        /// The app shut down writing after the switch: SHUT_WR went out on the direct socket.
        case directEnded
    }

    /// Peer → app.
    enum Inbound: Equatable {
        /// Relay bytes are queued for the app as they come.
        case relay
        /// The peer's switch marker came: the relay bytes up to `until` still go to the app before the direct
        /// socket's.
        case draining(until: UInt64)
        /// The app gets the direct socket's bytes.
        case direct
        /// The peer is done (fin on the relay, or EOF on the direct socket): what is left goes to the app, then
        /// its socket is shut for writing.
        case ending
        /// The app's socket is shut for writing: this direction is over.
        case shut
    }

    let id: UInt64
    /// The node's end of the loopback pair (non-blocking); the app holds the other.
    let fd: Int32
    let window: Int
    var context: RelayStreamContext
    private(set) var outbound = Outbound.relay
    private(set) var inbound = Inbound.relay

    // Outbound.
    /// What went out on the relay and is not yet acknowledged, kept to send again after a broker restart.
    var resend = RelayResendBuffer()
    /// Bytes we may still send on the relay: the window less what the peer has not acknowledged.
    var credit: Int { window - resend.unacknowledged }
    var sentOnRelay: UInt64 { resend.sent }
    var directOut = Pending()

    // Inbound.
    var pending: [(frame: ZMQMessage, range: Range<Int>)] = []
    var pendingHead = 0
    var queued = 0
    var receivedOnRelay: UInt64 = 0
    var creditOwed = 0
    /// Credit returned so far, in bytes (a resume tells the peer, whose copy of some of it the relay may have lost).
    var creditSent: UInt64 = 0
    var directIn = Pending()

    // Upgrade.
    var direct: Int32?
    var upgrade = UpgradeState()
    var handoff = HandoffState()

    // Resume (the broker restarted).
    /// While the relay is away: when the connection gives up waiting for it (reset).
    var resumeBy: ContinuousClock.Instant?
    var suspendedAt: ContinuousClock.Instant?
    /// Our resume is out to the relay we are attached to now.
    var resumeSent = false
    var suspended: Bool { resumeBy != nil }

    init(id: UInt64, fd: Int32, window: Int, context: RelayStreamContext) {
        self.id = id
        self.fd = fd
        self.window = window
        self.context = context
    }

    /// Moves the outbound direction; a transition the design does not allow stops the node.
    func move(_ next: Outbound) {
        guard Self.allows(outbound, next) else {
            preconditionFailure("relayed connection \(id): outbound cannot go from \(outbound) to \(next)")
        }
        outbound = next
    }

    /// Moves the inbound direction; a transition the design does not allow stops the node.
    func move(_ next: Inbound) {
        guard Self.allows(inbound, next) else {
            preconditionFailure("relayed connection \(id): inbound cannot go from \(inbound) to \(next)")
        }
        inbound = next
    }

    /// The outbound transitions: the app's EOF ends either path; only the relay can switch to direct.
    static func allows(_ from: Outbound, _ to: Outbound) -> Bool {
        switch (from, to) {
        case (.relay, .relayEnded), (.relay, .direct), (.direct, .directEnded): true
        default: false
        }
    }

    /// The inbound transitions: fin ends the relay; the switch marker drains it before the direct link takes
    /// over, whose EOF ends it; the app's socket is shut last.
    static func allows(_ from: Inbound, _ to: Inbound) -> Bool {
        switch (from, to) {
        case (.relay, .draining), (.relay, .ending), (.draining, .direct), (.direct, .ending), (.ending, .shut): true
        default: false
        }
    }

    /// The app shut down writing (its EOF was read).
    var appEOF: Bool { outbound == .relayEnded || outbound == .directEnded }
    /// App bytes go to the direct socket.
    var outboundDirect: Bool { outbound == .direct || outbound == .directEnded }
    /// The relay carries no more of the peer's bytes (fin or switch marker received).
    var inboundRelayOver: Bool { inbound != .relay }

    /// Bytes read from one socket that the other did not take yet.
    struct Pending {
        var bytes: [UInt8] = []
        var offset = 0
        var isEmpty: Bool { offset >= bytes.count }
    }

    /// The relay carries nothing more for this connection in either direction.
    var relayDone: Bool { outbound != .relay && inboundRelayOver }

    /// Both directions are over: the app's EOF went out, and the app's socket is shut for writing.
    var finished: Bool { appEOF && directOut.isEmpty && inbound == .shut }

    /// What to poll: the app's end and, once in use, the direct socket; nothing while the app's shim has both.
    var descriptors: [PolledDescriptor] {
        guard handoff.phase != .offered else { return [] }
        var appEvents: Int16 = 0
        switch outbound {
        case .relay where credit > 0 && !suspended: appEvents |= Int16(POLLIN)
        case .direct where directOut.isEmpty: appEvents |= Int16(POLLIN)
        default: break
        }
        if queued > 0 || !directIn.isEmpty { appEvents |= Int16(POLLOUT) }
        var list: [PolledDescriptor] = []
        if appEvents != 0 { list.append(PolledDescriptor(fd: fd, events: appEvents)) }
        if let direct {
            var directEvents: Int16 = 0
            if inbound == .direct && directIn.isEmpty { directEvents |= Int16(POLLIN) }
            if !directOut.isEmpty { directEvents |= Int16(POLLOUT) }
            if directEvents != 0 { list.append(PolledDescriptor(fd: direct, events: directEvents)) }
        }
        return list
    }
}

/// Where an upgrade to a direct link stands (see the schema: punch OFFER, ANSWER, READY, FAILED).
struct UpgradeState {
    enum Phase: Equatable {
        /// Nothing under way (the initiator starts the next attempt at `next`).
        case idle
        /// Learning the public endpoint of a fresh port (a thread runs STUN).
        case gathering(UInt32)
        /// The initiator's offer is out; waiting for the answer.
        case offered(UInt32, port: UInt16)
        /// A thread punches and proves.
        case punching(UInt32)
        /// A proven direct socket is held; waiting for the peer's READY (then switch) or FAILED.
        case ready(UInt32)
        /// Switched to the direct link.
        case done
    }

    var phase = Phase.idle
    var attempt: UInt32 = 0
    var next: ContinuousClock.Instant?
    var delay = Duration.seconds(1)
    /// The newest attempt the peer said READY for.
    var peerReady: UInt32?
    /// The initiator's endpoint from its offer (the acceptor punches to it).
    var peerEndpoint: Endpoint?
    /// The current attempt dials the broker's splice port instead of punching.
    var splice = false
    /// When the current phase gives up (an offer never answered).
    var deadline: ContinuousClock.Instant?
}

/// Where handing the direct socket to the app stands, once both directions are on it (see ShimHandoff).
struct HandoffState {
    enum Phase: Equatable {
        /// Not (or no more) to be handed off: still relayed, taken by the app, or given up.
        case none
        /// The accepting side waits for the connecting side's handoff to be settled (HandoffTurn): one side's app
        /// at a time is parked, while the other side's node still reads.
        case awaitingTurn
        /// To be offered once nothing is held in the node, at `next`.
        case waiting
        /// The app's shim holds both sockets; the node copies nothing until it answers.
        case offered
    }

    var phase = Phase.none
    var next: ContinuousClock.Instant?
    /// The broker gave this (accepting) side its turn.
    var turn = false
    var declined = 0
    var delay = Timing.Choice.handoffRetry
}

/// Non-blocking socket calls: bytes moved, 0 for EOF, nil for "would block", or the errno.
enum IO {
    enum Outcome {
        case moved(Int)
        case eof
        case wouldBlock
        case failed(Int32)
    }

    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Outcome {
        while true {
            let count = recv(fd, buffer.baseAddress, buffer.count, 0)
            if count > 0 { return .moved(count) }
            if count == 0 { return .eof }
            if errno == EINTR { continue }
            return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .failed(errno)
        }
    }

    static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Outcome {
        while true {
            let count = send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if count >= 0 { return .moved(count) }
            if errno == EINTR { continue }
            return errno == EAGAIN || errno == EWOULDBLOCK ? .wouldBlock : .failed(errno)
        }
    }
}
