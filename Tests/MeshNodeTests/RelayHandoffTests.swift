import Foundation
import Testing
import WireFormat

@testable import MeshNode

/// Handing an upgraded connection's direct socket to the app, on the pump's side: when it is offered, that the
/// node copies nothing while the app's shim holds the sockets, and what a decline and a take do.
@Suite("Relayed connection handoff to the app, driven directly")
struct RelayHandoffTests {
    /// Upgrades a fresh pair's connection; both sides are on the direct link with nothing held in the node.
    func upgraded(_ pair: PumpPair) throws {
        try pair.open()
        let (near, far) = try pair.punchBoth()
        pair.punched(pair.initiator, .success(near))
        pair.punched(pair.acceptor, .success(far))
        pair.settle()
        for side in [pair.initiator, pair.acceptor] { #expect(side.stream?.inbound == .direct && side.stream?.outbound == .direct) }
    }

    func answer(_ side: PumpPair.Side, taken: Bool, reason: String = "") {
        side.pump.handle(.handoffAnswered(.with { $0.connection = PumpPair.id; $0.taken = taken; $0.reason = reason }))
    }

    @Test("offered once both directions are direct; nothing is copied while offered; a decline resumes copying and offers again later; a take forgets the connection")
    func offerDeclineTake() throws {
        let pair = PumpPair(takesHandoff: true)
        defer { pair.close() }
        try upgraded(pair)
        let side = pair.initiator
        side.pump.tick(now: .now)
        #expect(side.offers == [PumpPair.id])
        #expect(side.stream?.handoff.phase == .offered)
        #expect(side.stream?.descriptors.isEmpty == true, "the node polls sockets the app's shim holds")
        guard case .offered(_, let relayedOut, let relayedIn) = side.handoffEvents.first else {
            Issue.record("no offered event: \(side.handoffEvents)")
            return
        }
        #expect(relayedOut == side.stream?.sentOnRelay && relayedIn == side.stream?.receivedOnRelay)
        // While offered, the app's bytes stay where they are (its shim carries them).
        let held = pattern(10_000, seed: 9)
        try pair.write(side, held)
        pair.settle()
        #expect(pair.acceptor.received.isEmpty)
        answer(side, taken: false, reason: "thread 7 did not stop")
        guard case .declined(let why, let final) = side.handoffEvents.last else {
            Issue.record("no declined event: \(side.handoffEvents)")
            return
        }
        #expect(why == "thread 7 did not stop" && !final)
        #expect(side.stream?.handoff.phase == .waiting)
        try pair.settle(until: { pair.acceptor.received == held })
        side.pump.tick(now: .now)
        #expect(side.offers.count == 1, "offered again before the retry delay")
        side.pump.tick(now: .now + Timing.Choice.handoffRetry + .milliseconds(1))
        #expect(side.offers.count == 2)
        answer(side, taken: true)
        #expect(side.stream == nil)
        guard case .taken(_, _, let failure) = side.handoffEvents.last else {
            Issue.record("no taken event: \(side.handoffEvents)")
            return
        }
        #expect(failure == nil)
        // A late or stray answer changes nothing.
        answer(side, taken: true)
        #expect(side.stream == nil)
    }

    @Test("an offer that cannot reach the app's shim now is a decline: the pump copies on and offers again after the retry delay")
    func undelivered() throws {
        let pair = PumpPair(takesHandoff: true)
        defer { pair.close() }
        try upgraded(pair)
        let side = pair.initiator
        side.undeliverable = "the app's shim did not take the offer: Resource temporarily unavailable"
        side.pump.tick(now: .now)
        #expect(side.offers == [PumpPair.id])
        guard case .declined(let why, let final) = side.handoffEvents.last else {
            Issue.record("no declined event: \(side.handoffEvents)")
            return
        }
        #expect(why == side.undeliverable && !final)
        #expect(side.stream?.handoff.phase == .waiting)
        let bytes = pattern(20_000, seed: 5)
        try pair.write(side, bytes)
        try pair.settle(until: { pair.acceptor.received == bytes })
        side.undeliverable = nil
        side.pump.tick(now: .now + Timing.Choice.handoffRetry + .milliseconds(1))
        #expect(side.offers.count == 2)
        #expect(side.stream?.handoff.phase == .offered)
    }

    @Test("an app without a shim that takes handoffs stays on the copy loop, and the pump says why once")
    func noTaker() throws {
        let pair = PumpPair()
        defer { pair.close() }
        try upgraded(pair)
        pair.initiator.pump.tick(now: .now)
        pair.initiator.pump.tick(now: .now + .seconds(60))
        #expect(pair.initiator.offers == [PumpPair.id])
        #expect(pair.initiator.stream?.handoff.phase == HandoffState.Phase.none)
        let declines = pair.initiator.handoffEvents.filter { if case .declined(_, true) = $0 { true } else { false } }
        #expect(declines.count == 1, "\(pair.initiator.handoffEvents)")
        let bytes = pattern(20_000, seed: 3)
        try pair.write(pair.initiator, bytes)
        try pair.settle(until: { pair.acceptor.received == bytes })
    }

    @Test("the accepting side waits for its turn (the connecting side settled), then offers")
    func acceptorWaitsForTurn() throws {
        let pair = PumpPair(takesHandoff: true)
        defer { pair.close() }
        try upgraded(pair)
        pair.acceptor.pump.tick(now: .now + .seconds(60))
        #expect(pair.acceptor.offers.isEmpty)
        #expect(pair.acceptor.stream?.handoff.phase == .awaitingTurn)
        pair.acceptor.pump.handle(.handoffTurn(PumpPair.id))
        pair.acceptor.pump.tick(now: .now)
        #expect(pair.acceptor.offers == [PumpPair.id])
        // A turn for the connecting side, or for a connection it does not know, changes nothing.
        pair.initiator.pump.handle(.handoffTurn(PumpPair.id))
        pair.acceptor.pump.handle(.handoffTurn(99))
        #expect(pair.acceptor.stream?.handoff.phase == .offered)
    }
}
