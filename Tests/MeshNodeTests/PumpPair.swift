import Foundation
import Logging
import Synchronization
import Testing
import WireFormat
import ZeroMQ

@testable import MeshNode

/// Two relay pumps — the connection's initiator and its acceptor — joined by a relay the test controls: frames each
/// pump sends wait in its outbox until the test delivers them, so the test decides every crossing. The blocking
/// steps of an upgrade are recorded and resolved by the test too. The apps' ends are real loopback sockets and
/// the direct link a real socketpair; no broker, no root, no sleeps (waits are polls on the sockets themselves).
final class PumpPair {
    /// One side: its pump, what it sent and asked for, and the app's end of the relayed connection.
    final class Side {
        let name: String
        var pump: RelayPump!
        let expectations = RelayExpectations()
        /// Frames sent and not yet delivered to the other side.
        var outbox: [[UInt8]] = []
        var gathers: [(id: UInt64, attempt: UInt32)] = []
        var punches: [(id: UInt64, attempt: UInt32, request: UpgradePunch)] = []
        var upgrades: [UInt64] = []
        /// Handoff offers made to this side's app, and what the pump reported of them.
        var offers: [UInt64] = []
        var handoffEvents: [HandoffEvent] = []
        /// Set: offers do not reach this side's app (its shim connection is full), for this reason.
        var undeliverable: String?
        /// The app's end of the relayed connection (non-blocking).
        var app: Int32 = -1
        /// What the app has read so far.
        var received: [UInt8] = []
        var appReadEOF = false
        /// The app does not read (its socket fills, and the pump queues what the peer sends).
        var paused = false

        init(name: String) { self.name = name }

        var stream: RelayStream? { pump.streams[PumpPair.id] }

        /// The frames sent so far (not delivered), decoded.
        var sentFrames: [RelayFrame] { outbox.compactMap { try? RelayFrame(frame: $0) } }
    }

    static let id: UInt64 = 42
    static let window = 256 * 1024
    let initiator = Side(name: "initiator")
    let acceptor = Side(name: "acceptor")
    let token = LinkToken(Array(repeating: 7, count: 32))

    /// The broker's splice port, for sides that splice.
    static let splicePort = Endpoint(IPv4Address(203, 0, 113, 10), port: 7704)

    /// `upgrade`: both sides punch; `splice`: which sides move connections onto the broker's splice port;
    /// `takesHandoff`: each app takes handoff offers (as the preload shim does); the test answers them.
    init(upgrade: Bool = true, splice: (initiator: Bool, acceptor: Bool) = (false, false), takesHandoff: Bool = false) {
        var logger = Logger(label: "pump-test")
        logger.logLevel = .critical
        for side in [initiator, acceptor] {
            var options = RelayOptions(endpoint: "inproc://unused")
            options.upgrade = upgrade
            options.splice = (side === initiator ? splice.initiator : splice.acceptor) ? Self.splicePort : nil
            let effects = RelayPumpEffects(
                send: { frames in
                    side.outbox += frames.map { [UInt8]($0.bytes) }.filter { (try? RelayFrameHeader(scanning: $0))?.connectionID != 0 }
                },
                session: { Data([1, 2, 3]) },
                gather: { id, attempt in side.gathers.append((id, attempt)) },
                punch: { id, attempt, request in side.punches.append((id, attempt, request)) },
                upgraded: { id, _, _ in side.upgrades.append(id) },
                handOff: { id, _, _ in
                    side.offers.append(id)
                    if let why = side.undeliverable { return .undelivered(why) }
                    return takesHandoff ? .sent : .noTaker
                },
                handoff: { _, _, event in side.handoffEvents.append(event) })
            side.pump = RelayPump(options: options, effects: effects, expectations: side.expectations, logger: logger)
        }
    }

    func other(_ side: Side) -> Side { side === initiator ? acceptor : initiator }

    /// Opens the relayed connection on both sides as the broker would, and gives each app its end.
    /// `punchFailedRecently`: the initiator relayed at once because a punch towards the peer had just failed.
    func open(punchFailedRecently: Bool = false) throws {
        let started = ContinuousClock.now
        var context = RelayStreamContext(token: token, initiator: true, peer: IPv4Address(100, 64, 0, 2), port: 5000, started: started)
        context.punchFailedRecently = punchFailedRecently
        let peer = IPv4Address(100, 64, 0, 2)
        let delivered = Delivered()
        acceptor.expectations.expect(
            Self.id,
            .init(context: RelayStreamContext(token: token, initiator: false, peer: peer, port: 5000, started: started)) {
                delivered.append($0)
            })
        initiator.pump.handle(.open(Self.id, context) { delivered.append($0) })
        initiator.outbox.removeAll()  // the open request went to the broker, which answers both sides:
        let open = RelayFrame.with(Self.id, .open(.with { $0.window = UInt32(Self.window) })).frame()
        initiator.pump.received(open)
        acceptor.pump.received(open)
        let fds = try delivered.results.withLock { try $0.map { try $0.get() } }
        guard fds.count == 2 else { throw PumpTestFailure("the pumps delivered \(fds.count) sockets, not 2") }
        (initiator.app, acceptor.app) = (fds[0], fds[1])
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    }

    // MARK: Moving frames and bytes

    /// Delivers `side`'s outbox to the other side, all or the first `count` frames.
    func deliver(from side: Side, count: Int? = nil) {
        let taken = Array(side.outbox.prefix(count ?? side.outbox.count))
        side.outbox.removeFirst(taken.count)
        for frame in taken { other(side).pump.received(frame) }
    }

    /// Drops `side`'s outbox (a relay that lost those frames).
    func discard(from side: Side) { side.outbox.removeAll() }

    /// Runs both pumps' socket work and delivers every frame, until nothing moves any more.
    func settle(deliverFrames: Bool = true) {
        for _ in 0..<10_000 {
            var moved = false
            for side in [initiator, acceptor] {
                var entries = side.pump.descriptors.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
                if !entries.isEmpty, poll(&entries, nfds_t(entries.count), 0) > 0 {
                    for entry in entries where entry.revents != 0 {
                        side.pump.ready(descriptor: entry.fd, events: entry.revents)
                        moved = true
                    }
                }
                readApp(side)
                if deliverFrames, !side.outbox.isEmpty {
                    deliver(from: side)
                    moved = true
                }
            }
            if !moved { return }
        }
    }

    /// Runs until `condition` holds, waiting on the sockets (never longer than `timeout` in all).
    func settle(until condition: () -> Bool, timeout: Duration = .seconds(5)) throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            settle()
            if condition() { return }
            guard ContinuousClock.now < deadline else { throw PumpTestFailure("condition not met within \(timeout)") }
            // Wait for any socket to become ready (the kernel moves loopback bytes between our calls).
            var entries = (initiator.pump.descriptors + acceptor.pump.descriptors).map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
            entries += [initiator.app, acceptor.app].filter { $0 >= 0 }.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            _ = poll(&entries, nfds_t(entries.count), 50)
        }
    }

    /// The app writes `bytes` (all of them: the test writes less than the socket buffers hold).
    func write(_ side: Side, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let count = bytes[offset...].withUnsafeBytes { send(side.app, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count < 0 {
                guard errno == EAGAIN else { throw PumpTestFailure("app write failed: \(String(cString: strerror(errno)))") }
                settle()
                continue
            }
            offset += count
        }
    }

    /// Makes the app's socket and the pump's end of it hold little, so that a paused app soon holds bytes back.
    /// With `small` false they are large again (at 4 KiB the rest would crawl, one delayed ACK per segment).
    func shrinkBuffers(_ side: Side, small: Bool = true) throws {
        let stream = try #require(side.stream)
        var size: Int32 = small ? 4096 : 1 << 20
        _ = setsockopt(stream.fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(side.app, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// The app shuts its socket for writing.
    func shutWrite(_ side: Side) { shutdown(side.app, Int32(SHUT_WR)) }

    private func readApp(_ side: Side) {
        guard side.app >= 0, !side.appReadEOF, !side.paused else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(side.app, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                side.received += buffer[..<count]
                continue
            }
            if count == 0 { side.appReadEOF = true }
            return
        }
    }

    // MARK: Upgrade steps

    /// Starts the initiator's first upgrade attempt (its timer is due 1 s after the open).
    func startAttempt() {
        initiator.pump.tick(now: .now + Timing.Choice.upgradeFirst + .milliseconds(1))
    }

    /// Resolves `side`'s newest gather with a made-up public endpoint.
    func gathered(_ side: Side, port: UInt16) {
        let request = side.gathers.removeLast()
        side.pump.handle(
            .gathered(request.id, attempt: request.attempt,
                .success(DirectPath.PunchPort(port: port, endpoint: Endpoint(IPv4Address(198, 51, 100, 1), port: port)))))
    }

    /// Resolves `side`'s newest punch with `fd` (a proven socket) or a failure.
    func punched(_ side: Side, _ result: Result<Int32, SocketError>) {
        let request = side.punches.removeLast()
        side.pump.handle(.punched(request.id, attempt: request.attempt, result))
    }

    /// A connected pair standing in for a punched, proven direct link: (initiator's end, acceptor's end).
    static func directPair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
            throw PumpTestFailure("socketpair failed: \(String(cString: strerror(errno)))")
        }
        return (fds[0], fds[1])
    }

    /// Runs an upgrade up to the point where both sides hold a proven socket, with no READY sent yet.
    func punchBoth() throws -> (Int32, Int32) {
        startAttempt()
        gathered(initiator, port: 40001)  // → OFFER
        deliver(from: initiator)
        gathered(acceptor, port: 40002)  // → punching, ANSWER
        deliver(from: acceptor)  // the initiator punches too
        return try Self.directPair()
    }

    func close() {
        for side in [initiator, acceptor] {
            side.pump.shutdown()
            if side.app >= 0 { Glibc.close(side.app) }
        }
    }
}

/// What the pumps delivered to their waiters (the waiters are @Sendable; the pumps call them on this thread).
final class Delivered: Sendable {
    let results = Mutex<[Result<Int32, SocketError>]>([])
    func append(_ result: Result<Int32, SocketError>) { results.withLock { $0.append(result) } }
}

struct PumpTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Bytes with a pattern, so that a lost, doubled or reordered byte shows.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) }
}

extension RelayPump {
    /// Delivers an encoded frame as the relay loop does: in a message of its own.
    func received(_ frame: [UInt8]) { received(ZMQMessage(frame)) }
}
