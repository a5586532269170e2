import Foundation
import Testing
import WireFormat

@testable import MeshNode

/// The upgrade of a relayed connection to a direct link, driven step by step: every order in which the two
/// sides' punch results and READY / FAILED frames can meet, with bytes in flight in both directions throughout.
/// Whatever the order, the apps get every byte once and in order.
@Suite("Relayed connection upgrade: the punch signal races, driven directly")
struct RelayUpgradeTests {
    /// The orders in which a successful attempt's READYs can meet.
    enum ReadyOrder: String, CaseIterable, CustomTestStringConvertible {
        /// The initiator is READY first; its READY reaches the acceptor after the acceptor's own punch succeeded.
        case initiatorFirst
        /// The acceptor is READY first; the initiator hears it while it still punches.
        case acceptorFirstWhilePunching
        /// Both punch, both say READY, and the two READYs cross on the relay.
        case crossing
        var testDescription: String { rawValue }
    }

    @Test("a successful upgrade switches both directions, losing and doubling nothing", arguments: ReadyOrder.allCases)
    func upgrade(order: ReadyOrder) throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        let before = (pattern(100_000, seed: 1), pattern(90_000, seed: 2))
        try pair.write(pair.initiator, before.0)
        try pair.write(pair.acceptor, before.1)
        let (near, far) = try pair.punchBoth()
        // Bytes written while the upgrade is under way go on the relay until each side switches.
        let during = (pattern(50_000, seed: 3), pattern(40_000, seed: 4))
        try pair.write(pair.initiator, during.0)
        switch order {
        case .initiatorFirst:
            pair.punched(pair.initiator, .success(near))
            pair.deliver(from: pair.initiator)  // READY reaches an acceptor that still punches
            #expect(pair.acceptor.stream?.upgrade.phase == .punching(1))
            pair.punched(pair.acceptor, .success(far))
        case .acceptorFirstWhilePunching:
            pair.punched(pair.acceptor, .success(far))
            pair.deliver(from: pair.acceptor)
            #expect(pair.initiator.stream?.upgrade.phase == .punching(1))
            pair.punched(pair.initiator, .success(near))
        case .crossing:
            pair.punched(pair.initiator, .success(near))
            pair.punched(pair.acceptor, .success(far))
            #expect(pair.initiator.stream?.upgrade.phase == .ready(1))
            #expect(pair.acceptor.stream?.upgrade.phase == .ready(1))
        }
        try pair.write(pair.acceptor, during.1)
        pair.settle()
        for side in [pair.initiator, pair.acceptor] {
            #expect(side.upgrades == [PumpPair.id], "\(side.name) did not report the upgrade")
            #expect(side.stream?.upgrade.phase == .done)
            #expect(side.stream?.outbound == .direct)
        }
        // After the switch the relay carries nothing: bytes go straight to the direct socket.
        let after = (pattern(70_000, seed: 5), pattern(60_000, seed: 6))
        try pair.write(pair.initiator, after.0)
        try pair.write(pair.acceptor, after.1)
        try pair.settle(until: {
            pair.acceptor.received.count == before.0.count + during.0.count + after.0.count
                && pair.initiator.received.count == before.1.count + during.1.count + after.1.count
        })
        #expect(pair.acceptor.received == before.0 + during.0 + after.0)
        #expect(pair.initiator.received == before.1 + during.1 + after.1)
        #expect(pair.initiator.stream?.inbound == .direct)
        #expect(pair.acceptor.stream?.inbound == .direct)
        // Both apps close: the connection ends cleanly on both sides and the pumps forget it.
        pair.shutWrite(pair.initiator)
        pair.shutWrite(pair.acceptor)
        try pair.settle(until: { pair.initiator.appReadEOF && pair.acceptor.appReadEOF && pair.initiator.stream == nil && pair.acceptor.stream == nil })
    }

    @Test("the switch marker reaches an app that is not reading: the relay's queued bytes drain first, then the direct link's")
    func switchWhileDraining() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        try pair.shrinkBuffers(pair.acceptor)
        pair.acceptor.paused = true
        let relayed = pattern(150_000, seed: 12)
        try pair.write(pair.initiator, relayed)
        let (near, far) = try pair.punchBoth()
        pair.punched(pair.initiator, .success(near))
        pair.punched(pair.acceptor, .success(far))
        pair.settle()
        let stream = try #require(pair.acceptor.stream)
        #expect(stream.queued > 0, "nothing was held back: the test does not exercise draining")
        // What the relay carried before the switch: one read of the initiator's pump may take only part of what
        // the app wrote (a frame holds up to 256 KiB, and a short read ends its turn); the rest goes direct.
        #expect(stream.inbound == .draining(until: stream.receivedOnRelay))
        let direct = pattern(20_000, seed: 13)
        try pair.write(pair.initiator, direct)
        pair.settle()
        pair.acceptor.paused = false
        try pair.shrinkBuffers(pair.acceptor, small: false)
        try pair.settle(until: { pair.acceptor.received.count == relayed.count + direct.count })
        #expect(pair.acceptor.received == relayed + direct)
        #expect(pair.acceptor.stream?.inbound == .direct)
    }

    /// The ways an attempt fails on one side while the other succeeded.
    enum FailureRace: String, CaseIterable, CustomTestStringConvertible {
        /// The acceptor said READY; then the initiator's punch fails: its FAILED makes the acceptor drop its socket.
        case failedAfterPeerReady
        /// The initiator's FAILED and the acceptor's READY cross on the relay.
        case failedCrossesReady
        /// The acceptor's punch fails while the initiator holds a proven socket.
        case acceptorFails
        var testDescription: String { rawValue }
    }

    @Test("a failed attempt leaves the connection on the relay, every byte intact, and the initiator tries again later",
        arguments: FailureRace.allCases)
    func failedAttempt(race: FailureRace) throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        try pair.write(pair.initiator, pattern(30_000, seed: 7))
        let (near, far) = try pair.punchBoth()
        let failure = SocketError(ETIMEDOUT, "no direct path (test)")
        switch race {
        case .failedAfterPeerReady:
            pair.punched(pair.acceptor, .success(far))
            pair.deliver(from: pair.acceptor)
            pair.punched(pair.initiator, .failure(failure))
            Glibc.close(near)
        case .failedCrossesReady:
            pair.punched(pair.acceptor, .success(far))
            pair.punched(pair.initiator, .failure(failure))
            Glibc.close(near)
            // Both frames are on the relay before either side reads the other's.
            let (fromInitiator, fromAcceptor) = (pair.initiator.outbox, pair.acceptor.outbox)
            pair.discard(from: pair.initiator)
            pair.discard(from: pair.acceptor)
            for frame in fromInitiator { pair.acceptor.pump.received(frame) }
            for frame in fromAcceptor { pair.initiator.pump.received(frame) }
        case .acceptorFails:
            pair.punched(pair.initiator, .success(near))
            pair.punched(pair.acceptor, .failure(failure))
            Glibc.close(far)
        }
        pair.settle()
        for side in [pair.initiator, pair.acceptor] {
            #expect(side.upgrades.isEmpty, "\(side.name) reported an upgrade that did not happen")
            #expect(side.stream?.direct == nil, "\(side.name) kept the socket of a failed attempt")
            #expect(side.stream?.upgrade.phase == .idle)
            #expect(side.stream?.outbound == .relay)
        }
        // The initiator backs off and tries again; the acceptor waits for its offer.
        #expect(pair.initiator.stream?.upgrade.next != nil)
        #expect(pair.acceptor.stream?.upgrade.next == nil)
        let more = pattern(20_000, seed: 8)
        try pair.write(pair.initiator, more)
        try pair.settle(until: { pair.acceptor.received.count == 50_000 })
        #expect(pair.acceptor.received == pattern(30_000, seed: 7) + more)
    }

    @Test("an offer nobody answers is given up at its deadline, and the next attempt follows its backoff")
    func unansweredOffer() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        pair.startAttempt()
        pair.gathered(pair.initiator, port: 40001)
        #expect(pair.initiator.sentFrames.map(\.punch.stage) == [.offer])
        let deadline = try #require(pair.initiator.stream?.upgrade.deadline)
        pair.discard(from: pair.initiator)  // the relay lost the offer
        pair.initiator.pump.tick(now: deadline - .milliseconds(1))
        #expect(pair.initiator.outbox.isEmpty, "gave up before the deadline")
        // At the deadline: FAILED goes out, and the first backoff (1 s, shorter than the answer's 5 s) has passed
        // by then, so attempt 2 starts in the same turn.
        pair.initiator.pump.tick(now: deadline)
        #expect(pair.initiator.sentFrames.map(\.punch.stage) == [.failed])
        #expect(pair.initiator.gathers.count == 1, "the second attempt did not start")
        #expect(pair.initiator.stream?.upgrade.phase == .gathering(2))
        #expect(pair.initiator.stream?.upgrade.delay == Timing.Choice.upgradeFirst * 2, "the backoff did not double")
    }

    @Test("an answer to an abandoned attempt is ignored; the current attempt goes on")
    func staleAnswer() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        pair.startAttempt()
        pair.gathered(pair.initiator, port: 40001)
        pair.deliver(from: pair.initiator)
        // Attempt 1 is given up at its deadline, and attempt 2 starts.
        pair.initiator.pump.tick(now: .now + Timing.Wire.upgradeAnswer + .milliseconds(1))
        pair.discard(from: pair.initiator)
        pair.gathered(pair.initiator, port: 40003)  // attempt 2 offered
        #expect(pair.initiator.stream?.upgrade.phase == .offered(2, port: 40003))
        pair.gathered(pair.acceptor, port: 40002)  // the acceptor's late answer to attempt 1
        pair.deliver(from: pair.acceptor)
        #expect(pair.initiator.punches.isEmpty, "the initiator punched for an abandoned attempt")
        #expect(pair.initiator.stream?.upgrade.phase == .offered(2, port: 40003))
    }

    @Test("an offer after the app ended its side is refused: no upgrade for a connection that is closing")
    func offerAfterEOF() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        pair.shutWrite(pair.acceptor)
        pair.settle()
        #expect(pair.acceptor.stream?.outbound == .relayEnded)
        #expect(pair.initiator.stream?.inbound == .ending || pair.initiator.stream?.inbound == .shut)
        pair.initiator.pump.tick(now: .now + Timing.Choice.upgradeFirst + .milliseconds(1))
        #expect(pair.initiator.gathers.isEmpty, "the initiator started an upgrade of a connection whose peer had ended")
        // Driven by hand anyway, the acceptor refuses.
        pair.acceptor.pump.received(
            RelayFrame.with(PumpPair.id, .punch(.with { $0.attempt = 9; $0.stage = .offer })).frame())
        let refusal = try #require(pair.acceptor.sentFrames.last)
        #expect(refusal.punch.stage == .failed)
        #expect(pair.acceptor.gathers.isEmpty)
    }

    @Test("FIN during the switch: the side that ended stays ended, the other direction switches, every byte and both EOFs arrive")
    func finDuringSwitch() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        let last = pattern(40_000, seed: 9)
        let (near, far) = try pair.punchBoth()
        try pair.write(pair.initiator, last)
        pair.shutWrite(pair.initiator)  // the app ends its side while both sides punch
        pair.settle()
        pair.punched(pair.initiator, .success(near))
        pair.punched(pair.acceptor, .success(far))
        pair.settle()
        #expect(pair.initiator.stream?.outbound == .relayEnded, "an ended direction switched")
        #expect(pair.acceptor.stream?.outbound == .direct)
        try pair.settle(until: { pair.acceptor.appReadEOF })
        #expect(pair.acceptor.received == last)
        let reply = pattern(25_000, seed: 10)
        try pair.write(pair.acceptor, reply)
        pair.shutWrite(pair.acceptor)
        try pair.settle(until: { pair.initiator.appReadEOF && pair.initiator.stream == nil && pair.acceptor.stream == nil })
        #expect(pair.initiator.received == reply)
    }

    /// The inode of the file at descriptor `fd`, nil when none is open there.
    private func inode(_ fd: Int32) -> UInt? {
        var status = stat()
        return fstat(fd, &status) == 0 ? UInt(status.st_ino) : nil
    }

    @Test("RST during an upgrade: the app sees a reset at once, and the attempt's socket arriving later is closed, not leaked")
    func resetDuringUpgrade() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try pair.open()
        let (near, far) = try pair.punchBoth()
        Glibc.close(far)
        pair.initiator.pump.received(RelayFrame.with(PumpPair.id, .rst(.with { $0.reason = "peer reset (test)" })).frame())
        #expect(pair.initiator.stream == nil)
        var byte: UInt8 = 0
        var entry = pollfd(fd: pair.initiator.app, events: Int16(POLLIN), revents: 0)
        #expect(poll(&entry, 1, 5000) == 1)
        #expect(recv(pair.initiator.app, &byte, 1, 0) == -1 && errno == ECONNRESET)
        let socket = inode(near)
        pair.punched(pair.initiator, .success(near))
        // By inode, not by descriptor number: tests run in parallel, and another may get the freed number at once.
        #expect(inode(near) != socket, "the late direct socket was not closed")
        #expect(pair.initiator.outbox.isEmpty, "a forgotten connection sent a frame")
    }
}
