import Foundation
import MeshBroker
import MeshNode
import Synchronization
import Testing
import WireFormat
import ZeroMQ

@Suite("Control plane over real ZeroMQ sockets")
struct ControlPlaneTests {
    @Test("two nodes join with distinct addresses and resolve each other, only inside their mesh")
    func joinAndResolve() async throws {
        try await TestBroker.with { broker in
            try await broker.session("alpha") { alpha in
                try await broker.session("beta") { beta in
                    let a = alpha.welcome.self_p
                    let b = beta.welcome.self_p
                    #expect(a.name == "alpha" && b.name == "beta")
                    #expect(a.address != b.address)
                    let subnet = try IPv4Subnet("100.64.0.0/24")
                    #expect(subnet.contains(a.ipv4) && subnet.contains(b.ipv4))
                    #expect(try await alpha.resolve(name: "beta").address == b.address)
                    #expect(try await beta.resolve(address: a.ipv4).name == "alpha")
                    // Names are case-insensitive host names.
                    #expect(try await beta.resolve(name: "ALPHA").address == a.address)
                    try await broker.session(nil, mesh: "other") { outsider in
                        await #expect(throws: BrokerRefusal.self) { try await outsider.resolve(name: "alpha") }
                    }
                }
            }
        }
    }

    @Test("a second live node with the same name is refused, and the name is free again after leave")
    func uniqueNames() async throws {
        try await TestBroker.with { broker in
            try await broker.session("db") { first in
                let error = await #expect(throws: BrokerRefusal.self) { try await broker.session("db") { _ in } }
                #expect(error?.code == .errorNameTaken)
                #expect(error?.message.contains("'db' is already in use") == true)
                _ = first
            }
            // The first session left when its block ended: the name is free at once.
            let again = try await broker.session("db") { $0.welcome.self_p }
            #expect(again.name == "db")
            // The same name in another mesh is a different node.
            try await broker.session("db", mesh: "elsewhere") { _ in }
        }
    }

    @Test("a wrong secret is refused with a clear error, and the broker goes on serving")
    func wrongSecret() async throws {
        try await TestBroker.with { broker in
            let wrong = MeshSecret(Array("not the secret".utf8))
            let error = await #expect(throws: JoinError.self) { try await broker.session("eve", secret: wrong) { _ in } }
            #expect(error?.description.contains("wrong mesh secret") == true)
            try await broker.session("alice") { #expect($0.welcome.self_p.name == "alice") }
        }
    }

    @Test("a node that stops heartbeating is expired, shows on the tap, and frees its name")
    func expiry() async throws {
        try await TestBroker.with(expiry: .milliseconds(800)) { broker in
            let tap = try await TapRecorder(broker)
            defer { tap.stop() }
            let started = ContinuousClock.now
            let ghost = try await broker.abandonedSession("ghost")
            var expired: TapEvent?
            while expired == nil, ContinuousClock.now - started < .seconds(5) {
                try await Task.sleep(for: .milliseconds(50))
                expired = tap.events.first { $0.membership.kind == .expire }
            }
            let event = try #require(expired)
            #expect(event.membership.member.name == "ghost")
            #expect(event.membership.member.address == ghost.address)
            #expect(ContinuousClock.now - started < .seconds(3))
            #expect(tap.events.first?.membership.kind == .join)
            try await broker.session("ghost") { #expect($0.welcome.self_p.name == "ghost") }
        }
    }

    @Test("a tap is subscribed once the broker answered its subscription: the first event after that arrives, every time")
    func subscribedMeansNothingMissed() async throws {
        try await TestBroker.with { broker in
            for round in 0..<10 {
                let tap = try await TapRecorder(broker)
                defer { tap.stop() }
                try await broker.session("n\(round)") { _ in }
                let joined = await eventually {
                    tap.events.contains { $0.membership.kind == .join && $0.membership.member.name == "n\(round)" }
                }
                #expect(joined, "round \(round): \(tap.events.map(\.membership.kind))")
            }
        }
    }

    @Test("a request that finds the session gone after the node left fails clearly and never joins the mesh again")
    func noRejoinAfterLeave() async throws {
        try await TestBroker.with { broker in
            try await broker.session("watcher") { watcher in
                try await broker.session("leaver") { leaver in
                    await leaver.leave(reason: "app exited")
                    // What the app's last connects do while the node shuts down: the broker no longer knows us.
                    let error = await #expect(throws: ControlError.self) { try await leaver.resolve(name: "watcher") }
                    #expect(error?.description == "this node has left the mesh")
                    #expect(leaver.hasLeft)
                    let members = try await watcher.members().map(\.name)
                    #expect(members == ["watcher"])
                }
            }
        }
    }

    @Test("--wait-for: the barrier answers once the mesh has enough members")
    func barrier() async throws {
        try await TestBroker.with { broker in
            try await broker.session("one") { one in
                let waiting = Task { try await one.waitForMembers(3) }
                try await broker.session("two") { _ in
                    try await Task.sleep(for: .milliseconds(200))
                    try await broker.session("three") { _ in
                        let members = try await waiting.value
                        #expect(members.map(\.name).sorted() == ["one", "three", "two"])
                    }
                }
            }
        }
    }

    @Test("garbage, truncated, oversized and unknown messages are dropped; the broker keeps serving")
    func badInput() async throws {
        try await TestBroker.with { broker in
            // Not ZeroMQ at all, on both ports.
            for port in [broker.controlPort, broker.tapPort] {
                try sendRawTCP(Array(repeating: 0xff, count: 4096), toPort: port)
                try sendRawTCP((0..<2000).map { _ in UInt8.random(in: 0...255) }, toPort: port)
                try sendRawTCP([0xff, 0, 0, 0], toPort: port)  // a truncated ZMTP greeting
            }
            // ZeroMQ, but nonsense inside.
            let dealer = try ZMQSocket(ZMQContext(), .dealer)
            try dealer.connect(broker.endpoints.control)
            try dealer.send([[0x0a, 0xff, 0xff]], dontWait: false)  // truncated protobuf
            try dealer.send([[]], dontWait: false)  // empty: no message type
            try dealer.send([Array(repeating: 0x42, count: 100)], dontWait: false)
            try dealer.send([[1], [2], [3]], dontWait: false)  // too many frames
            var unknownType = ControlMessage()
            unknownType.welcome = .init()  // a broker-to-node message sent to the broker
            try dealer.send([unknownType.frame()], dontWait: false)
            var replies: [ControlMessage] = []
            let deadline = ContinuousClock.now + .seconds(3)
            while replies.count < 4, ContinuousClock.now < deadline {
                if let frames = try dealer.receive() { replies.append(try ControlMessage(frame: frames[0])) }
                else { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(replies.count == 4)
            for reply in replies {
                guard case .error(let error) = reply.body else { Issue.record("expected an error reply"); continue }
                #expect(error.code == .errorBadRequest || error.code == .errorNoSession)
            }
            // Larger than the frame limit: libzmq drops this peer; the broker stays up.
            let big = try ZMQSocket(ZMQContext(), .dealer)
            try big.connect(broker.endpoints.control)
            try big.send([Array(repeating: 7, count: ControlMessage.maximumFrameSize + 1)], dontWait: false)
            try await Task.sleep(for: .milliseconds(200))
            let found = try await broker.session("survivor") { try await $0.resolve(name: "survivor") }
            #expect(found.name == "survivor")
        }
    }

    @Test("invalid names are refused with the rule they break")
    func invalidNames() async throws {
        try await TestBroker.with { broker in
            var hello = Boxermesh_V1_Hello()
            hello.protocolVersion = 1
            hello.mesh = "test"
            hello.nodeName = "bad name!"
            hello.role = .node
            hello.clientNonce = Data(Sodium.randomBytes(32))
            var message = ControlMessage()
            message.hello = hello
            let error = await #expect(throws: BrokerRefusal.self) {
                try await ControlClient.withConnection(to: broker.endpoints.control) {
                    try await $0.request(message, timeout: .seconds(5))
                }
            }
            #expect(error?.code == .errorInvalidName)
            #expect(error?.message.contains("may only contain letters, digits and '-'") == true)
        }
    }
}

@Suite("Tap confidentiality on the real PUB socket")
struct TapConfidentialityTests {
    @Test("a subscriber to everything sees neither names nor addresses, and a wrong secret opens nothing")
    func outsiderLearnsNothing() async throws {
        try await TestBroker.with { broker in
            let loop = SocketLoop<Never>(name: "raw-sub")
            let frames = Mutex<[[UInt8]]>([])
            let answered = Atomic(false)
            let subscriber = Task {
                try await loop.run {
                    try RawSubscriber(endpoint: broker.endpoints.tap) { _, message in
                        // The broker's answer to the subscription to everything: an empty topic, an empty message.
                        if message == [[], []] { return answered.store(true, ordering: .relaxed) }
                        frames.withLock { $0.append(contentsOf: message) }
                    }
                }
            }
            defer { loop.stop(); subscriber.cancel() }
            #expect(await eventually(timeout: .seconds(10)) { answered.load(ordering: .relaxed) }, "the broker answers a subscription")
            try await broker.session("secretive-node") { _ in try await Task.sleep(for: .milliseconds(100)) }
            let seen = await eventually { frames.withLock { $0.count } >= 4 }  // join and leave, two frames each
            #expect(seen)
            let all = frames.withLock { $0 }
            for frame in all {
                let text = String(decoding: frame, as: UTF8.self)
                #expect(!text.contains("secretive") && !text.contains("test") && !text.contains("100.64"), "\(text)")
            }
            let payloads = stride(from: 1, to: all.count, by: 2).map { all[$0] }
            let wrong = TapKey(secret: MeshSecret(Array("guess".utf8)), mesh: "test")
            for payload in payloads { #expect(throws: FrameError.self) { try wrong.open(payload) } }
            let right = TapKey(secret: broker.secret, mesh: "test")
            let events = try payloads.map { try right.open($0) }
            #expect(events.map(\.membership.kind) == [.join, .leave])
            #expect(events.map(\.sequence) == [1, 2])
        }
    }
}

/// A SUB socket subscribed to everything, handing each raw multipart message to `received`.
final class RawSubscriber: SocketLoopHandler {
    typealias Command = Never
    let socket: ZMQSocket
    let received: @Sendable (Int, [[UInt8]]) -> Void

    init(endpoint: String, received: @escaping @Sendable (Int, [[UInt8]]) -> Void) throws {
        socket = try ZMQSocket(ZMQContext(), .subscriber)
        try socket.subscribe([])
        try socket.connect(endpoint)
        self.received = received
    }

    var sockets: [ZMQSocket] { [socket] }
    var nextTick: ContinuousClock.Instant? { nil }
    func readable(socketAt index: Int) { while let frames = try? socket.receive() { received(index, frames) } }
    func handle(_ command: Never) {}
    func tick(now: ContinuousClock.Instant) {}
    func shutdown() { socket.close() }
}

func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}
