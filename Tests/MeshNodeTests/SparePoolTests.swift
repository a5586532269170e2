import Glibc
import Testing
import WireFormat
import ZeroMQ

@testable import MeshNode

private let peer = IPv4Address(100, 64, 0, 2)
private let other = IPv4Address(100, 64, 0, 3)

private func spare(_ fd: Int32, to address: IPv4Address = peer) -> SparePool.Spare {
    SparePool.Spare(
        fd: fd, id: UInt64(fd), peer: .with { $0.name = "p\(fd)"; $0.address = address.value }, localPort: UInt16(40000 + fd),
        via: Endpoint(IPv4Address(203, 0, 113, 101), port: 5000), token: LinkToken([UInt8](repeating: 1, count: 32)))
}

/// The app's first connects to `address`, before the pool makes spares for it; returns what the last one reserved.
private func demand(_ pool: SparePool, _ address: IPv4Address, now: ContinuousClock.Instant = .now) -> Int {
    for _ in 1..<SparePool.connectsBeforeSpares { #expect(pool.reserve(towards: address, now: now) == 0) }
    return pool.reserve(towards: address, now: now)
}

/// An app process the pool lends spares to; it hears recalls only.
private final class Borrower: SpareBorrower {
    func lend(_ spare: Boxermesh_V1_ShimSpare, fd: Int32) -> Bool { true }
    func recall(_ id: UInt64) {}
}

@Suite("The spare-link pool's bookkeeping")
struct SparePoolTests {
    @Test("ready spares go to the peer's last borrower; a loan stays held until claimed or given back, and ends with its borrower")
    func lending() {
        let pool = SparePool(perPeer: 2)
        let (first, second) = (Borrower(), Borrower())
        #expect(pool.lend(towards: peer, to: first) == nil, "no entry for the peer before its first connect")
        #expect(demand(pool, peer) == 2)
        #expect(pool.lend(towards: peer, to: first) == nil, "nothing ready yet")
        #expect(pool.made(spare(3)))
        #expect(pool.made(spare(4)))
        let lent = pool.lend(towards: peer)
        #expect(lent.map { ObjectIdentifier($0.0) } == ObjectIdentifier(first) && lent?.1.map(\.fd) == [3, 4], "to the borrower named before")
        for spare in lent?.1 ?? [] { #expect(pool.recordLoan(.init(spare: spare, successor: nil, borrower: first))) }
        #expect(pool.ready(towards: peer) == 0 && pool.take(towards: peer) == nil)
        #expect(pool.reserve(towards: peer) == 0, "two wanted, two lent: lent spares count as held")
        #expect(pool.endLoan(3, of: ObjectIdentifier(second), claimed: true) == nil, "not the borrower's loan")
        #expect(pool.endLoan(3, of: ObjectIdentifier(first), claimed: true)?.spare.fd == 3)
        #expect(pool.endLoan(3, of: ObjectIdentifier(first), claimed: true) == nil, "ended once")
        #expect(pool.reserve(towards: peer) == 1, "the claimed one's room is free again")
        #expect(pool.made(spare(6)))
        #expect(pool.lend(towards: peer, to: second).map { ObjectIdentifier($0.0) } == ObjectIdentifier(second), "the latest connecting process")
        #expect(pool.endLoans(of: ObjectIdentifier(first)).map(\.spare.fd) == [4])
        #expect(pool.endLoans(of: ObjectIdentifier(first)).isEmpty)
        // An idle peer's loans are asked back once, and the peer is kept until they end.
        #expect(pool.recordLoan(.init(spare: spare(7), successor: nil, borrower: second)))
        let idle = ContinuousClock.now + Timing.Choice.spareIdle + .seconds(1)
        #expect(pool.sweep(now: idle).recalling.map(\.spare.fd) == [7])
        #expect(pool.sweep(now: idle).recalling.isEmpty, "asked once")
        #expect(pool.endLoan(7, of: ObjectIdentifier(second), claimed: false)?.spare.fd == 7)
        #expect(pool.sweep(now: idle).closing.isEmpty)
        #expect(pool.lend(towards: peer, to: second) == nil, "the idle peer was forgotten")
    }

    @Test("a peer gets spares from the third connect within 10 s on; connects further apart do not count")
    func demandFirst() {
        let pool = SparePool(perPeer: 8)
        let start = ContinuousClock.now
        #expect(pool.reserve(towards: peer, now: start) == 0)
        #expect(pool.reserve(towards: peer, now: start + .seconds(6)) == 0)
        #expect(pool.reserve(towards: peer, now: start + .seconds(12)) == 0, "the first connect is out of the window")
        #expect(pool.reserve(towards: peer, now: start + .seconds(13)) == 2)
        #expect(pool.reserve(towards: peer, now: start + .seconds(40)) == 0, "demand shown once is kept: two are on their way")
    }

    @Test("a peer starts with two spares; the newest is taken first; a take that finds none while more are made doubles the want")
    func growsOnDemand() {
        let pool = SparePool(perPeer: 8)
        #expect(pool.take(towards: peer) == nil, "an unknown peer has no spares")
        #expect(demand(pool, peer) == 2)
        #expect(pool.reserve(towards: peer) == 0, "two are being made already")
        #expect(pool.made(spare(10)) && pool.made(spare(11)))
        #expect(pool.take(towards: peer)?.fd == 11)
        #expect(pool.reserve(towards: peer) == 1, "one to replace the one taken")
        #expect(pool.take(towards: peer)?.fd == 10)
        #expect(pool.take(towards: peer) == nil, "ran dry while one is being made")
        #expect(pool.reserve(towards: peer) == 3, "the want doubled to 4; one is on its way")
    }

    @Test("a claim asks for its spare's successor only while the pool wants one more; a successor not coming frees its place")
    func successors() {
        let pool = SparePool(perPeer: 8)
        #expect(!pool.reserveSuccessor(towards: peer), "an unknown peer gets none")
        #expect(demand(pool, peer) == 2)
        #expect(pool.made(spare(10)) && pool.made(spare(11)))
        #expect(!pool.reserveSuccessor(towards: peer), "the pool is full")
        #expect(pool.take(towards: peer)?.fd == 11)
        #expect(pool.reserveSuccessor(towards: peer), "the spare taken leaves room for its successor")
        #expect(pool.reserve(towards: peer) == 0, "the successor is counted as being made")
        pool.abandonSuccessor(towards: peer)
        #expect(pool.reserve(towards: peer) == 1, "the successor did not come: the broker's way makes it")
    }

    @Test("the bounds hold: at most perPeer towards a peer, at most total in all; perPeer 0 keeps none")
    func bounded() {
        let pool = SparePool(perPeer: 4, total: 5)
        #expect(demand(pool, peer) == 2)
        #expect(pool.made(spare(1)))
        #expect(pool.take(towards: peer)?.fd == 1)
        #expect(pool.take(towards: peer) == nil)  // dry while one is made: the want grows to 4
        #expect(pool.take(towards: peer) == nil)  // and no further than perPeer
        #expect(demand(pool, other) == 2)
        #expect(pool.reserve(towards: peer) == 2, "4 wanted, 1 on its way, but only 5 - 3 = 2 fit in all")
        #expect(pool.reserve(towards: peer) == 0)
        #expect(SparePool(perPeer: 0).reserve(towards: peer) == 0)
    }

    @Test("a refused spare, or three failures in a row, back the peer off; an idle peer loses its spares; a forgotten one too")
    func backoffIdleForget() {
        let pool = SparePool(perPeer: 8)
        let start = ContinuousClock.now
        #expect(demand(pool, peer, now: start) == 2)
        pool.failed(towards: peer, refused: false, now: start)
        pool.failed(towards: peer, refused: false, now: start)
        #expect(pool.reserve(towards: peer, now: start) == 2)
        pool.failed(towards: peer, refused: false, now: start)
        pool.failed(towards: peer, refused: false, now: start)
        #expect(pool.reserve(towards: peer, now: start) == 0, "the third failure in a row backed it off")
        let other = IPv4Address(100, 64, 0, 9)
        #expect(demand(pool, other, now: start) == 2)
        #expect(pool.made(spare(5, to: other)))
        pool.failed(towards: other, refused: false, now: start)
        #expect(pool.reserve(towards: other, now: start) == 1, "one failure alone does not back it off")
        _ = pool.forget(other)
        #expect(pool.reserve(towards: peer, now: start + Timing.Choice.spareBackoff) == 2)
        pool.failed(towards: peer, refused: true, now: start)
        #expect(pool.reserve(towards: peer, now: start + .seconds(1)) == 0)
        #expect(pool.reserve(towards: peer, now: start + Timing.Choice.spareBackoff + .seconds(1)) == 1, "one failed, one still on its way")
        #expect(pool.made(spare(7)))
        #expect(pool.sweep(now: start + Timing.Choice.spareBackoff + .seconds(2)).closing.isEmpty, "used just now")
        #expect(pool.sweep(now: start + Timing.Choice.spareBackoff + Timing.Choice.spareIdle + .seconds(2)).closing.map(\.fd) == [7])
        #expect(!pool.made(spare(8)), "a spare for a forgotten peer is not wanted")
        #expect(demand(pool, other) == 2)
        #expect(pool.made(spare(9, to: other)))
        #expect(pool.forget(other).spares.map(\.fd) == [9])
        #expect(pool.ready(towards: other) == 0)
    }

    @Test("a take that must be usable takes only a usable newest spare, and counts nothing when there is none")
    func usableOnly() {
        let pool = SparePool(perPeer: 8)
        #expect(demand(pool, peer) == 2)
        #expect(pool.made(spare(3)))
        #expect(pool.take(towards: peer, onlyIf: { _ in false }) == nil)
        #expect(pool.ready(towards: peer) == 1, "an unusable spare stays for a take that waits for its answer")
        #expect(pool.take(towards: peer, onlyIf: { $0.fd == 3 })?.fd == 3)
        // Empty while one more is made: only the plain take doubles the want.
        #expect(pool.take(towards: peer, onlyIf: { _ in true }) == nil)
        #expect(pool.reserve(towards: peer) == 1, "still 2 wanted, 1 being made")
        #expect(pool.take(towards: peer) == nil)
        #expect(pool.reserve(towards: peer) == 2, "4 wanted now, 2 being made")
    }

    @Test("a spare's keepalive keeps it fresh in the kernel's eyes; a socket nobody probes grows stale")
    func freshness() async throws {
        let pairs = try Self.loopbackPairs(2)
        defer { for (a, b) in pairs { close(a); close(b) } }
        let (probed, silent) = (pairs[0].0, pairs[1].0)
        LinkLiveness.apply(to: probed, idle: Timing.Choice.spareProbeSeconds)
        #expect(LinkLiveness.silence(on: silent).map { $0 < .milliseconds(500) } == true, "just connected")
        try await Task.sleep(for: Timing.Choice.spareFreshness + .seconds(1))
        let (fresh, stale) = (LinkLiveness.silence(on: probed), LinkLiveness.silence(on: silent))
        #expect(fresh.map { $0 <= Timing.Choice.spareFreshness } == true, "probed: \(String(describing: fresh))")
        #expect(stale.map { $0 > Timing.Choice.spareFreshness } == true, "silent: \(String(describing: stale))")
        #expect(LinkLiveness.silence(on: -1) == nil)
    }

    @Test("a corked claim waits in the socket until uncorked; the app's bytes written meanwhile follow it, in order")
    func corkedClaim() throws {
        let pairs = try Self.loopbackPairs(1)
        defer { for (a, b) in pairs { close(a); close(b) } }
        let (ours, theirs) = pairs[0]
        let claim = SpareClaim.claim(SpareClaim.Claim(port: 5000, answered: false, successor: nil))
        LinkManager.cork(ours, true)
        try FixedMessage.send(claim, on: ours, "spare-link claim")
        #expect(send(ours, "GET", 3, 0) == 3, "the app writes before the node uncorks")
        var entry = pollfd(fd: theirs, events: Int16(POLLIN), revents: 0)
        #expect(poll(&entry, 1, 100) == 0, "nothing leaves while corked")
        LinkManager.cork(ours, false)
        #expect(try FixedMessage.receive(SpareClaim.claimSize, from: theirs, until: .now + .seconds(2), "claim") == claim)
        #expect(try FixedMessage.receive(3, from: theirs, until: .now + .seconds(2), "app bytes") == Array("GET".utf8))
    }

    /// `count` connected TCP pairs on loopback: (connecting end, accepted end).
    private static func loopbackPairs(_ count: Int) throws -> [(Int32, Int32)] {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var size = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, size) == 0 && getsockname(listener, $0, &size) == 0 }
        }
        try #require(bound && listen(listener, 4) == 0)
        var pairs: [(Int32, Int32)] = []
        for _ in 0..<count {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, size) == 0 }
            }
            try #require(connected)
            pairs.append((client, accept(listener, nil, nil)))
        }
        return pairs
    }
}
