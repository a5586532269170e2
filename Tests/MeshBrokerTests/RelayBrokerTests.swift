import Foundation
import Logging
import MeshBroker
import MeshNode
import Synchronization
import Testing
import WireFormat
import ZeroMQ

/// A control plane and a relay sharing one directory, on loopback with ephemeral ports.
struct RelayTestBroker {
    let control: String
    let relay: String
    let secret = TestBroker.secret

    static func with<T: Sendable>(
        relay configuration: RelayConfiguration = .init(), _ body: (RelayTestBroker) async throws -> T
    ) async throws -> T {
        var control = BrokerConfiguration(secret: TestBroker.secret)
        control.controlEndpoint = "tcp://127.0.0.1:*"
        control.tapEndpoint = "tcp://127.0.0.1:*"
        control.expiry = .seconds(30)
        control.subnet = try IPv4Subnet("100.64.0.0/24")
        var relay = configuration
        relay.endpoint = "tcp://127.0.0.1:*"
        var logger = Logger(label: "test-relay")
        logger.logLevel = .critical
        let directory = RelayDirectory()
        let (controlReady, controlContinuation) = AsyncStream<String>.makeStream()
        let (relayReady, relayContinuation) = AsyncStream<String>.makeStream()
        let plane = ControlPlane(configuration: control, logger: logger, relay: directory) { controlContinuation.yield($0.control) }
        let relayService = Relay(configuration: relay, directory: directory, logger: logger) { relayContinuation.yield($0) }
        let tasks = [Task { try await plane.run() }, Task { try await relayService.run() }]
        defer { for task in tasks { task.cancel() } }
        var controlIterator = controlReady.makeAsyncIterator()
        var relayIterator = relayReady.makeAsyncIterator()
        guard let controlEndpoint = await controlIterator.next(), let relayEndpoint = await relayIterator.next() else {
            throw CancellationError()
        }
        return try await body(RelayTestBroker(control: controlEndpoint, relay: relayEndpoint))
    }
}

struct FixtureFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

@Suite("The broker's relay: attach, open, forward, credit windows, memory budget")
struct RelayBrokerTests {
    /// Joins `name`; an accepting node answers every incoming connection with a made-up endpoint.
    func node<T: Sendable>(
        _ broker: RelayTestBroker, _ name: String, _ body: (MeshSession) async throws -> T
    ) async throws -> T {
        try await ControlClient.withConnection(to: broker.control) { client in
            let holder = SignallingTests.SessionHolder()
            client.onPush { message in
                guard case .incomingConnection(let incoming) = message.body, let session = holder.session.withLock({ $0 }) else { return }
                Task {
                    _ = try await session.request(.connectAnswer(.with {
                        $0.connectionID = incoming.connectionID
                        $0.accepted = true
                        $0.endpoint = .with { $0.address = 0xCB00_7166; $0.port = 40002 }
                    }))
                }
            }
            let session = try await MeshSession.open(
                JoinRequest(mesh: "test", nodeName: name, secret: broker.secret), client: client, connectTimeout: .seconds(5),
                logger: Logger(label: "test"))
            holder.session.withLock { $0 = session }
            return try await body(session)
        }
    }

    /// Signals a connection from `from` to `to` through the control plane; returns its id.
    func signal(from: MeshSession, to: MeshSession) async throws -> UInt64 {
        let reply = try await from.request(.connectRequest(.with {
            $0.targetAddress = to.welcome.self_p.address
            $0.port = 5000
            $0.endpoint = .with { $0.address = 0xCB00_7165; $0.port = 40001 }
        }))
        guard case .connectOffer(let offer) = reply.body else { throw FixtureFailure("no offer: \(reply)") }
        return offer.connectionID
    }

    @Test("only sessions the control plane knows attach; the relay opens only signalled connections, from their initiator")
    func attachAndOpen() async throws {
        try await RelayTestBroker.with { broker in
            try await node(broker, "a") { a in
                try await node(broker, "b") { b in
                    let id = try await signal(from: a, to: b)
                    let (tokenA, tokenB) = (a.welcome.session, b.welcome.session)
                    try await onTestThread {
                        let context = try ZMQContext()
                        let (dealerA, dealerB, stranger) = try (Dealer(context, broker.relay), Dealer(context, broker.relay), Dealer(context, broker.relay))
                        stranger.send(.with(0, .hello(.with { $0.session = Data(repeating: 7, count: 16) })))
                        #expect(try stranger.next().rst.reason.contains("no such session"))
                        stranger.send(.with(id, .open(.init())))
                        #expect(try stranger.next().rst.reason.contains("not attached"))
                        dealerA.send(.with(0, .hello(.with { $0.session = tokenA })))
                        dealerB.send(.with(0, .hello(.with { $0.session = tokenB })))
                        #expect(try dealerA.next().hello.session.isEmpty)
                        #expect(try dealerB.next().hello.session.isEmpty)
                        dealerB.send(.with(id, .open(.init())))
                        #expect(try dealerB.next().rst.reason.contains("signalled no connection"))
                        dealerA.send(.with(id + 100, .open(.init())))
                        #expect(try dealerA.next().rst.reason.contains("signalled no connection"))
                        dealerA.send(.with(id, .open(.init())))
                        let opened = try dealerA.next()
                        #expect(opened.connectionID == id && opened.open.window == UInt32(RelayConfiguration().maximumWindow))
                        #expect(try dealerB.next().open.window == opened.open.window)
                        // Both directions, unchanged, in order; the ends of the stream; then the connection is gone.
                        for index in 0..<5 { dealerA.send(.with(id, .data(Data([UInt8(index)])))) }
                        for index in 0..<5 { #expect(try dealerB.next().data == Data([UInt8(index)])) }
                        // Several frames in one message (parts) are several frames, forwarded in order.
                        try? dealerA.socket.send((5..<9).map { RelayFrame.with(id, .data(Data([UInt8($0)]))).frame() })
                        for index in 5..<9 { #expect(try dealerB.next().data == Data([UInt8(index)])) }
                        dealerB.send(.with(id, .data(Data("back".utf8))))
                        #expect(try dealerA.next().data == Data("back".utf8))
                        dealerB.send(.with(id, .credit(5)))
                        #expect(try dealerA.next().credit == 5)
                        dealerA.send(.with(id, .fin(true)))
                        #expect(try dealerB.next().fin)
                        dealerB.send(.with(id, .fin(true)))
                        #expect(try dealerA.next().fin)
                        dealerA.send(.with(id, .data(Data([1]))))
                        #expect(try dealerA.next().rst.reason.contains("carries no connection"))
                        // A stranger's frames for a connection it is not part of never reach its nodes.
                        #expect(dealerB.next(timeout: .milliseconds(200)) == nil)
                    }
                }
            }
        }
    }

    @Test("a sender past its window is reset on both ends; credit for bytes never sent too")
    func windows() async throws {
        var configuration = RelayConfiguration()
        configuration.maximumWindow = 64 << 10
        try await RelayTestBroker.with(relay: configuration) { broker in
            try await node(broker, "a") { a in
                try await node(broker, "b") { b in
                    let first = try await signal(from: a, to: b)
                    let second = try await signal(from: a, to: b)
                    let (tokenA, tokenB) = (a.welcome.session, b.welcome.session)
                    try await onTestThread {
                        let context = try ZMQContext()
                        let (dealerA, dealerB) = try Dealer.attachedPair(context, broker.relay, tokenA, tokenB)
                        for id in [first, second] {
                            dealerA.send(.with(id, .open(.init())))
                            #expect(try dealerA.next().open.window == 64 << 10)
                            #expect(try dealerB.next().open.window == 64 << 10)
                        }
                        // A full window goes through; credit reopens it; one byte more than the window is a violation.
                        let chunk = Data(repeating: 9, count: 32 << 10)
                        dealerA.send(.with(first, .data(chunk)))
                        dealerA.send(.with(first, .data(chunk)))
                        #expect(try dealerB.next().data.count == chunk.count)
                        #expect(try dealerB.next().data.count == chunk.count)
                        dealerB.send(.with(first, .credit(UInt32(chunk.count))))
                        #expect(try dealerA.next().credit == UInt32(chunk.count))
                        dealerA.send(.with(first, .data(chunk)))
                        #expect(try dealerB.next().data.count == chunk.count)
                        dealerA.send(.with(first, .data(Data([1]))))
                        #expect(try dealerA.next().rst.reason.contains("beyond its window"))
                        #expect(try dealerB.next().rst.reason.contains("beyond its window"))
                        // Credit for bytes never sent.
                        dealerB.send(.with(second, .credit(1)))
                        #expect(try dealerA.next().rst.reason.contains("credit for bytes never sent"))
                        #expect(try dealerB.next().rst.reason.contains("credit for bytes never sent"))
                    }
                }
            }
        }
    }

    @Test("the memory budget: full windows while it has room, smaller ones as it fills, refusals when full, room again when connections end")
    func budget() async throws {
        var configuration = RelayConfiguration()
        configuration.maximumWindow = 64 << 10
        configuration.minimumWindow = 16 << 10
        configuration.memoryBudget = 160 << 10
        configuration.windowShare = 1
        try await RelayTestBroker.with(relay: configuration) { broker in
            try await node(broker, "a") { a in
                try await node(broker, "b") { b in
                    var ids: [UInt64] = []
                    for _ in 0..<4 { ids.append(try await signal(from: a, to: b)) }
                    let (tokenA, tokenB) = (a.welcome.session, b.welcome.session)
                    try await onTestThread { [ids] in
                        let context = try ZMQContext()
                        let (dealerA, dealerB) = try Dealer.attachedPair(context, broker.relay, tokenA, tokenB)
                        dealerA.send(.with(ids[0], .open(.init())))
                        #expect(try dealerA.next().open.window == 64 << 10)  // 128 KiB of 160 reserved
                        dealerA.send(.with(ids[1], .open(.init())))
                        #expect(try dealerA.next().open.window == 16 << 10)  // what is left: 32 KiB
                        dealerA.send(.with(ids[2], .open(.init())))
                        #expect(try dealerA.next().rst.reason.contains("relay full"))
                        for _ in 0..<2 { _ = try dealerB.next() }
                        dealerA.send(.with(ids[0], .rst(.with { $0.reason = "done" })))
                        #expect(try dealerB.next().rst.reason == "done")
                        dealerA.send(.with(ids[3], .open(.init())))
                        #expect(try dealerA.next().open.window == 64 << 10)
                    }
                }
            }
        }
    }
}

@Test("default relay budget: the first 65 connections get full windows, then windows shrink, and hundreds fit")
func defaultWindowShares() {
    let configuration = RelayConfiguration()
    var free = configuration.memoryBudget
    var windows: [Int] = []
    while let window = configuration.window(free: free) {
        windows.append(window)
        free -= 2 * window
    }
    #expect(windows.prefix(65).allSatisfy { $0 == configuration.maximumWindow })
    #expect(windows[65] < configuration.maximumWindow)
    #expect(zip(windows, windows.dropFirst()).allSatisfy { $0 >= $1 })
    #expect(windows.count == 242 && (windows.last ?? 0) >= configuration.minimumWindow, "\(windows.count) connections fit")
    #expect(free >= 0 && configuration.window(free: free) == nil)
}

/// A raw relay DEALER, used on one thread only.
final class Dealer {
    let socket: ZMQSocket

    init(_ context: ZMQContext, _ endpoint: String) throws {
        socket = try ZMQSocket(context, .dealer)
        try socket.connect(endpoint)
    }

    /// Two dealers on the relay at `endpoint`, attached with the sessions `a` and `b`.
    static func attachedPair(_ context: ZMQContext, _ endpoint: String, _ a: Data, _ b: Data) throws -> (Dealer, Dealer) {
        let pair = try (Dealer(context, endpoint), Dealer(context, endpoint))
        try pair.0.attach(a)
        try pair.1.attach(b)
        return pair
    }

    func send(_ frame: RelayFrame) { try? socket.send([frame.frame()]) }

    func attach(_ token: Data) throws {
        send(.with(0, .hello(.with { $0.session = token })))
        guard case .hello = try next().body else { throw FixtureFailure("not attached") }
    }

    /// Parts received but not yet looked at (the relay may batch several frames into one message).
    var queue: [[UInt8]] = []

    func next(timeout: Duration) -> RelayFrame? {
        let deadline = ContinuousClock.now + timeout
        while queue.isEmpty && ContinuousClock.now < deadline {
            if let frames = try? socket.receive() { queue += frames } else { usleep(1000) }
        }
        guard !queue.isEmpty else { return nil }
        return try? RelayFrame(frame: queue.removeFirst())
    }

    func next() throws -> RelayFrame {
        guard let frame = next(timeout: .seconds(5)) else { throw FixtureFailure("no relay frame within 5 s") }
        return frame
    }
}

/// Runs blocking socket work on a thread of its own (ZeroMQ sockets stay on the thread that made them).
func onTestThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
