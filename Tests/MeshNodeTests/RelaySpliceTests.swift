import Foundation
import Glibc
import Testing
import WireFormat

@testable import MeshNode

/// Moving a relayed connection onto the broker's splice port (--relay-splice), driven step by step: the same
/// switch as a punched upgrade, with the splice port's socket instead of a punched one.
@Suite("Relayed connection splice: the offer, the dial, the switch, driven directly")
struct RelaySpliceTests {
    /// The splice requests `side` made so far: its hello and where it dials.
    func spliceDials(_ side: PumpPair.Side) -> [(broker: Endpoint, hello: SpliceHello)] {
        side.punches.compactMap {
            if case .splice(let broker, let hello) = $0.request.route { return (broker, hello) }
            return nil
        }
    }

    @Test("a node that only relays moves the connection at once: both ends dial the splice port with their own hello, and the switch keeps every byte")
    func spliceOnly() throws {
        let pair = PumpPair(upgrade: false, splice: (true, true))
        defer { pair.close() }
        try pair.open()
        let before = (pattern(80_000, seed: 1), pattern(70_000, seed: 2))
        try pair.write(pair.initiator, before.0)
        try pair.write(pair.acceptor, before.1)
        pair.initiator.pump.tick(now: .now)  // due at once: no punch to wait for
        let offer = try #require(pair.initiator.sentFrames.last { if case .punch = $0.body { true } else { false } })
        #expect(offer.punch.stage == .offer && offer.punch.splice && offer.punch.attempt == 1)
        pair.deliver(from: pair.initiator)
        #expect(pair.initiator.gathers.isEmpty && pair.acceptor.gathers.isEmpty, "a splice learns no endpoints")
        for (side, role) in [(pair.initiator, SpliceHello.Role.initiator), (pair.acceptor, .acceptor)] {
            let dials = spliceDials(side)
            #expect(dials.count == 1 && dials[0].broker == PumpPair.splicePort, "\(side.name): \(dials)")
            #expect(dials.first?.hello.role == role && dials.first?.hello.connectionID == PumpPair.id)
            #expect(dials.first?.hello.proven(by: [1, 2, 3]) == true, "the hello is proven with the node's session")
        }
        let (near, far) = try PumpPair.directPair()
        pair.punched(pair.initiator, .success(near))
        pair.punched(pair.acceptor, .success(far))
        pair.settle()
        for side in [pair.initiator, pair.acceptor] {
            #expect(side.upgrades == [PumpPair.id], "\(side.name) did not report the move")
            #expect(side.stream?.context.path == .spliced)
            #expect(side.stream?.outbound == .direct)
        }
        let after = (pattern(60_000, seed: 3), pattern(50_000, seed: 4))
        try pair.write(pair.initiator, after.0)
        try pair.write(pair.acceptor, after.1)
        try pair.settle(until: {
            pair.acceptor.received.count == before.0.count + after.0.count && pair.initiator.received.count == before.1.count + after.1.count
        })
        #expect(pair.acceptor.received == before.0 + after.0)
        #expect(pair.initiator.received == before.1 + after.1)
    }

    @Test("an acceptor that does not splice refuses the offer and dials nothing; the initiator stays relayed and tries again later")
    func acceptorRefuses() throws {
        let pair = PumpPair(upgrade: false, splice: (true, false))
        defer { pair.close() }
        try pair.open()
        pair.initiator.pump.tick(now: .now)
        pair.deliver(from: pair.initiator)
        #expect(spliceDials(pair.acceptor).isEmpty)
        let refusal = try #require(pair.acceptor.sentFrames.last { if case .punch = $0.body { true } else { false } })
        #expect(refusal.punch.stage == .failed && refusal.punch.reason.contains("does not splice"), "\(refusal.punch)")
        pair.deliver(from: pair.acceptor)
        let stream = try #require(pair.initiator.stream)
        #expect(stream.upgrade.phase == .idle && stream.upgrade.next != nil && stream.outbound == .relay)
        // The initiator's dial finishing after the refusal is closed, not used.
        let (near, far) = try PumpPair.directPair()
        defer { Glibc.close(far) }
        pair.punched(pair.initiator, .success(near))
        var byte: UInt8 = 0
        let got = recv(far, &byte, 1, Int32(MSG_DONTWAIT))
        #expect(got == 0 || (got < 0 && errno == ECONNRESET), "the late socket was closed (its peer end read \(got))")
        #expect(pair.initiator.upgrades.isEmpty)
        try pair.write(pair.initiator, [1, 2, 3])
        try pair.settle(until: { pair.acceptor.received == [1, 2, 3] })
    }

    @Test("towards a peer a punch just failed for, a node that punches splices first, at once")
    func punchJustFailed() throws {
        let pair = PumpPair(upgrade: true, splice: (true, true))
        defer { pair.close() }
        try pair.open(punchFailedRecently: true)
        pair.initiator.pump.tick(now: .now)  // due at once, not after the punch's 1 s
        #expect(pair.initiator.gathers.isEmpty)
        #expect(spliceDials(pair.initiator).count == 1)
        #expect(pair.initiator.stream?.upgrade.phase == .punching(1))
    }

    @Test("a node that punches tries punching first: attempts 1 and 2 punch, attempt 3 splices, attempt 4 punches again")
    func punchesFirst() throws {
        let pair = PumpPair(upgrade: true, splice: (true, true))
        defer { pair.close() }
        try pair.open()
        pair.initiator.pump.tick(now: .now)
        #expect(pair.initiator.gathers.isEmpty && spliceDials(pair.initiator).isEmpty, "a first punch waits its 1 s")
        for attempt in 1...2 {
            pair.initiator.pump.tick(now: .now + .seconds(3600))
            #expect(pair.initiator.gathers.count == 1 && spliceDials(pair.initiator).isEmpty, "attempt \(attempt)")
            pair.initiator.pump.handle(.gathered(PumpPair.id, attempt: UInt32(attempt), .failure(SocketError(ETIMEDOUT, "no endpoint"))))
            pair.initiator.gathers.removeAll()
        }
        pair.initiator.pump.tick(now: .now + .seconds(3600))
        #expect(pair.initiator.gathers.isEmpty)
        #expect(spliceDials(pair.initiator).count == 1)
        #expect(pair.initiator.stream?.upgrade.phase == .punching(3))
        pair.punched(pair.initiator, .failure(SocketError(ECONNREFUSED, "splice port closed")))
        pair.initiator.pump.tick(now: .now + .seconds(3600))
        #expect(pair.initiator.gathers.count == 1 && spliceDials(pair.initiator).isEmpty, "attempt 4 punches")
    }
}
