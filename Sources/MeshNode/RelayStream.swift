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
}

/// One relayed connection inside the pump: the node's end of the app's loopback socket, the credit windows of
/// both directions, the relay bytes waiting for the app, and — once upgraded — the direct socket.
///
/// Outbound (app → peer): read the app's socket only while there is credit, one frame (≤ 64 KiB) per turn;
/// app EOF → fin; after the switch to a direct link, bytes go to the direct socket instead.
/// Inbound (peer → app): relay data is queued and written to the app's socket as it takes it; credit goes back
/// for what it took; fin → shutdown(SHUT_WR) after the last byte; the switch marker → read the direct socket
/// once every relay byte up to it is written.
final class RelayStream {
    let id: UInt64
    /// The node's end of the loopback pair (non-blocking); the app holds the other.
    let fd: Int32
    let window: Int
    let context: RelayStreamContext

    // Outbound.
    /// What went out on the relay and is not yet acknowledged, kept to send again after a broker restart.
    var outbound = RelayResendBuffer()
    /// Bytes we may still send on the relay: the window less what the peer has not acknowledged.
    var credit: Int { window - outbound.unacknowledged }
    var sentOnRelay: UInt64 { outbound.sent }
    /// The app shut down writing (EOF read); fin sent on the relay, or SHUT_WR on the direct socket.
    var appEOF = false
    /// Outbound bytes go to the direct socket (after our switch marker).
    var outboundDirect = false
    var directOut = Pending()

    // Inbound.
    var inbound: [(frame: [UInt8], range: Range<Int>)] = []
    var inboundHead = 0
    var queued = 0
    var receivedOnRelay: UInt64 = 0
    var creditOwed = 0
    /// Credit returned so far, in bytes (a resume tells the peer, whose copy of some of it the relay may have lost).
    var creditSent: UInt64 = 0
    var finReceived = false
    /// The peer's switch marker: its relay stream ends after this many bytes.
    var switchAt: UInt64?
    var inboundDirect = false
    var directIn = Pending()
    var directEOF = false
    var appWriteShut = false

    // Upgrade.
    var direct: Int32?
    var upgrade = UpgradeState()

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

    /// Bytes read from one socket that the other did not take yet.
    struct Pending {
        var bytes: [UInt8] = []
        var offset = 0
        var isEmpty: Bool { offset >= bytes.count }
    }

    /// The relay carries nothing more for this connection in either direction.
    var relayDone: Bool {
        (appEOF || outboundDirect) && (finReceived || switchAt != nil)
    }

    /// Both directions are over: the app read EOF (or we are resetting) and the app shut down writing.
    var finished: Bool {
        appEOF && directOut.isEmpty && appWriteShut
    }

    /// What to poll: the app's end and, once in use, the direct socket.
    var descriptors: [PolledDescriptor] {
        var appEvents: Int16 = 0
        if !appEOF && (outboundDirect ? directOut.isEmpty : credit > 0 && !suspended) { appEvents |= Int16(POLLIN) }
        if queued > 0 || !directIn.isEmpty { appEvents |= Int16(POLLOUT) }
        var list: [PolledDescriptor] = []
        if appEvents != 0 { list.append(PolledDescriptor(fd: fd, events: appEvents)) }
        if let direct {
            var directEvents: Int16 = 0
            if inboundDirect && directIn.isEmpty && !directEOF { directEvents |= Int16(POLLIN) }
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
    /// When the current phase gives up (an offer never answered).
    var deadline: ContinuousClock.Instant?
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
