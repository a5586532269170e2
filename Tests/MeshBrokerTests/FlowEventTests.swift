import Foundation
import MeshNode
import Synchronization
import Testing
import WireFormat
import ZeroMQ

/// Flow reports through a real control plane: flow samples and close events on the tap, one close per
/// connection, and a stuck subscriber that neither slows the broker nor hides what it missed.
// Serialized: the stuck-subscriber flood keeps a core busy, and a loaded box is what made heartbeats late.
@Suite("Flow and close events", .serialized)
struct FlowEventTests {
    /// Signals one connection from `from` to `to` and returns its id (the target hears it): flow reports name a
    /// signalled connection.
    @discardableResult
    static func signalConnection(from: MeshSession, to: MeshSession) async throws -> UInt64 {
        let announced = Mutex<UInt64?>(nil)
        to.client.onPush { message in
            if case .incomingConnection(let incoming) = message.body { announced.withLock { $0 = incoming.connectionID } }
        }
        var request = Boxermesh_V1_ConnectRequest()
        request.targetAddress = to.welcome.self_p.address
        request.port = 6379
        request.endpoint = .with { $0.address = 0xCB00_7165; $0.port = 40000 }
        // Nobody answers the target's IncomingConnection here; the id is taken when the request arrives.
        Task { _ = try? await from.request(.connectRequest(request), timeout: .seconds(1)) }
        try await Task.sleep(for: .milliseconds(200))
        guard let id = announced.withLock({ $0 }) else { throw FixtureFailure("the target heard of no connection") }
        return id
    }

    static func sample(_ id: UInt64, initiator: Bool, peer: UInt32, sent: UInt64, received: UInt64, closed: Bool) -> Boxermesh_V1_FlowSample {
        var sample = Boxermesh_V1_FlowSample()
        sample.connectionID = id
        sample.initiator = initiator
        sample.peerAddress = peer
        sample.port = 6379
        sample.path = .direct
        sample.bytesSent = sent
        sample.bytesReceived = received
        sample.rttUs = 250
        sample.durationMs = 1500
        sample.closed = closed
        sample.sendRateBps = 8000
        return sample
    }

    /// Sends a flow report (the broker answers none) and waits until the broker has handled it: a heartbeat sent
    /// after it on the same connection is answered only once the broker is past the report.
    static func report(_ session: MeshSession, _ samples: [Boxermesh_V1_FlowSample]) async throws {
        var report = Boxermesh_V1_FlowReport()
        report.samples = samples
        session.post(.flowReport(report))
        let reply = try await session.request(.heartbeat(.init()))
        #expect(reply.heartbeatAck.memberCount > 0, "the heartbeat after the report answered with \(String(describing: reply.body))")
    }

    @Test("samples become flow events from the connecting side; each side's close arrives, one close is published, in the connection's direction")
    func flowAndClose() async throws {
        try await TestBroker.with(expiry: .seconds(60)) { broker in
            let tap = try await TapRecorder(broker)
            defer { tap.stop() }
            try await broker.session("bench") { bench in
                try await broker.session("cache") { cache in
                    let id = try await Self.signalConnection(from: bench, to: cache)
                    let (benchAddress, cacheAddress) = (bench.welcome.self_p.address, cache.welcome.self_p.address)
                    // The accepting side's samples are not published (one flow line per connection).
                    try await Self.report(cache, [Self.sample(id, initiator: false, peer: benchAddress, sent: 9, received: 90, closed: false)])
                    try await Self.report(bench, [Self.sample(id, initiator: true, peer: cacheAddress, sent: 100, received: 10, closed: false)])
                    // The acceptor closes first: its view is published, turned to the connection's direction.
                    try await Self.report(cache, [Self.sample(id, initiator: false, peer: benchAddress, sent: 2000, received: 1000, closed: true)])
                    try await Self.report(bench, [Self.sample(id, initiator: true, peer: cacheAddress, sent: 1000, received: 2000, closed: true)])
                    // A sample for a connection the broker never signalled is refused as bad input, not published.
                    try await Self.report(bench, [Self.sample(id + 1_000_000, initiator: true, peer: cacheAddress, sent: 1, received: 1, closed: true)])
                    #expect(await eventually { tap.events.contains { $0.tapKind == .connection } }, "the close, the last event, arrived")
                }
            }
            let connection = tap.events.filter { $0.tapKind != .membership }.map(\.connection)
            #expect(connection.map(\.kind) == [.flow, .close], "\(connection)")
            let flow = try #require(connection.first)
            #expect(flow.from.name == "bench" && flow.to.name == "cache" && flow.port == 6379)
            #expect(flow.bytesFromTo == 100 && flow.bytesToFrom == 10 && flow.rttUs == 250 && flow.rateFromToBps == 8000)
            let close = try #require(connection.last)
            #expect(close.from.name == "bench" && close.to.name == "cache", "the connecting side is `from`, whoever reports")
            #expect(close.bytesFromTo == 1000 && close.bytesToFrom == 2000 && close.durationMs == 1500)
            // Sequences count per kind: flow and connection events are numbered apart.
            let all = tap.events
            #expect(all.filter { $0.tapKind == .flow }.map(\.sequence) == [1])
            #expect(all.filter { $0.tapKind == .connection }.map(\.sequence) == [1])
        }
    }

    @Test("a subscriber that stops reading never slows the broker; when it reads again, the sequence gap tells how many it lost")
    func stuckSubscriber() async throws {
        // A long expiry: on a loaded machine, publishing 50,000 events may hold up a heartbeat for seconds.
        try await TestBroker.with(expiry: .seconds(60)) { broker in
            let key = TapKey(secret: broker.secret, mesh: "test")
            // A raw SUB (default queue, as the tap's) that does not read while 50,000 events go out.
            let stuck = try ZMQSocket(ZMQContext(), .subscriber)
            defer { stuck.close() }
            try stuck.subscribe(Array(key.prefix(.flow).utf8))
            try stuck.connect(broker.endpoints.tap)
            try stuck.waitForSubscriptionAnswer(Array(key.prefix(.flow).utf8))
            let published = 50_000
            try await broker.session("bench") { bench in
                try await broker.session("cache") { cache in
                    let id = try await Self.signalConnection(from: bench, to: cache)
                    let sample = Self.sample(id, initiator: true, peer: cache.welcome.self_p.address, sent: 1, received: 1, closed: false)
                    // Every report is handled at once: publishing never waited for the stuck reader.
                    for _ in 0..<(published / 1000) {
                        try await Self.report(bench, Array(repeating: sample, count: 1000))
                    }
                    // The broker still answers other requests.
                    let member = try await bench.resolve(name: "cache")
                    #expect(member.name == "cache")
                    // Read what the queues kept, then one more event: its sequence number shows the gap.
                    var sequences: [UInt64] = []
                    while let frames = try stuck.receive() { sequences.append(try key.open(frames[1]).sequence) }
                    try await Self.report(bench, [sample])
                    let deadline = ContinuousClock.now + .seconds(5)
                    while sequences.last != UInt64(published + 1), ContinuousClock.now < deadline {
                        while let frames = try stuck.receive() { sequences.append(try key.open(frames[1]).sequence) }
                        try await Task.sleep(for: .milliseconds(20))
                    }
                    #expect(sequences.last == UInt64(published + 1), "the event after the flood arrived")
                    let kept = sequences.count
                    let dropped = Int(sequences.last ?? 0) - kept
                    print("stuck subscriber: kept \(kept) of \(published + 1) events; the sequence gap counts \(dropped) dropped")
                    #expect(dropped > 0, "the queues could not hold 50,000 events: some must have been dropped")
                    #expect(sequences == sequences.sorted(), "what arrives stays in order")
                }
            }
        }
    }
}
