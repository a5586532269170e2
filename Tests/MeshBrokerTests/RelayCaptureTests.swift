import Foundation
import MeshBroker
import MeshNode
import Testing
import WireFormat
import ZeroMQ

@Suite("The relay's payload capture (broker opt-in)")
struct RelayCaptureTests {
    /// A raw SUB socket on the capture endpoint, used on one thread only.
    final class Subscriber {
        let socket: ZMQSocket
        let key: TapKey

        init(_ context: ZMQContext, _ endpoint: String, key: TapKey) throws {
            self.key = key
            socket = try ZMQSocket(context, .subscriber)
            try socket.subscribe(Array(key.prefix(.capture).utf8))
            try socket.connect(endpoint)
            try socket.waitForSubscriptionAnswer(Array(key.prefix(.capture).utf8))
        }

        /// The next event and its topic, or an error after `timeout`.
        func next(timeout: Duration = .seconds(5)) throws -> (topic: String, event: TapEvent) {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                if let frames = try? socket.receive(), frames.count == 2 {
                    return (String(decoding: frames[0], as: UTF8.self), try key.open(frames[1]))
                }
                usleep(1000)
            }
            throw FixtureFailure("no capture event within \(timeout)")
        }
    }

    @Test("open, data with per-direction offsets, fin and rst are published sealed, with mesh addresses and ports")
    func publishes() async throws {
        let endpoint = "ipc://\(FileManager.default.temporaryDirectory.path)/boxer-capture-\(UUID()).ipc"
        var configuration = RelayConfiguration()
        configuration.capture = RelayCaptureConfiguration(endpoint: endpoint, secret: TestBroker.secret)
        let tests = RelayBrokerTests()
        try await RelayTestBroker.with(relay: configuration) { broker in
            try await tests.node(broker, "a") { a in
                try await tests.node(broker, "b") { b in
                    let first = try await tests.signal(from: a, to: b)
                    let second = try await tests.signal(from: a, to: b)
                    let (tokenA, tokenB) = (a.welcome.session, b.welcome.session)
                    let (addressA, addressB) = (a.welcome.self_p.address, b.welcome.self_p.address)
                    try await onTestThread {
                        let context = try ZMQContext()
                        let key = TapKey(secret: TestBroker.secret, mesh: "test")
                        let subscriber = try Subscriber(context, endpoint, key: key)
                        let other = try Subscriber(context, endpoint, key: TapKey(secret: TestBroker.secret, mesh: "other"))
                        let (dealerA, dealerB) = try Dealer.attachedPair(context, broker.relay, tokenA, tokenB)
                        dealerA.send(.with(first, .open(.init())))
                        #expect(try dealerA.next().open.window > 0)
                        #expect(try dealerB.next().open.window > 0)
                        // One side at a time (each waits for the frames to arrive), so the events' order is known.
                        for chunk in ["GET / ", "HTTP/1.0\r\n\r\n"] { dealerA.send(.with(first, .data(Data(chunk.utf8)))) }
                        for _ in 0..<2 { _ = try dealerB.next() }
                        dealerB.send(.with(first, .data(Data("200 OK".utf8))))
                        _ = try dealerA.next()
                        dealerA.send(.with(first, .fin(true)))
                        #expect(try dealerB.next().fin)
                        dealerB.send(.with(first, .fin(true)))
                        #expect(try dealerA.next().fin)

                        let port = UInt32(RelayFrame.initiatorPort(connectionID: first))
                        var events: [TapEvent] = []
                        for _ in 0..<6 {
                            let (topic, event) = try subscriber.next()
                            let fromA = event.capture.sourceAddress == addressA
                            #expect(topic == key.topic(.capture, node: fromA ? "a" : "b"))
                            events.append(event)
                        }
                        #expect(events.map(\.sequence) == Array(1...6))
                        #expect(events.allSatisfy { $0.mesh == "test" && $0.capture.connectionID == first })
                        let segments = events.map(\.capture)
                        #expect(segments.map(\.kind) == [.open, .data, .data, .data, .fin, .fin])
                        // Initiator -> acceptor: the initiator's relay port to the port it connected to.
                        #expect(segments[0].sourceAddress == addressA && segments[0].sourcePort == port)
                        #expect(segments[0].destinationAddress == addressB && segments[0].destinationPort == 5000)
                        #expect(segments.map(\.offset) == [0, 0, 6, 0, 18, 6])
                        let texts = segments.map { String(decoding: $0.data, as: UTF8.self) }
                        #expect(texts == ["", "GET / ", "HTTP/1.0\r\n\r\n", "200 OK", "", ""])
                        #expect(segments[3].sourceAddress == addressB && segments[3].sourcePort == 5000)
                        #expect(segments[3].destinationAddress == addressA && segments[3].destinationPort == port)
                        #expect(segments[5].sourceAddress == addressB)

                        // A reset names the side that sent it.
                        dealerA.send(.with(second, .open(.init())))
                        #expect(try dealerA.next().open.window > 0)
                        dealerB.send(.with(second, .rst(.with { $0.reason = "bye" })))
                        let opened = try subscriber.next().event.capture
                        let reset = try subscriber.next().event.capture
                        #expect(opened.kind == .open && opened.connectionID == second)
                        #expect(reset.kind == .rst && reset.sourceAddress == addressB && reset.destinationAddress == addressA)
                        // Another mesh's subscriber hears nothing of this mesh.
                        #expect(throws: FixtureFailure.self) { _ = try other.next(timeout: .seconds(1)) }
                    }
                }
            }
        }
    }
}
