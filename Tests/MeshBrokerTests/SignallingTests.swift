import Foundation
import Logging
import MeshBroker
import MeshNode
import Synchronization
import Testing
import WireFormat

@Suite("Hole-punch signalling over real ZeroMQ sockets")
struct SignallingTests {
    /// Joins `name` with a push handler installed before the handshake, and runs `body` with the session.
    func node<T: Sendable>(
        _ broker: TestBroker, _ name: String, onPush: @escaping @Sendable (ControlMessage, MeshSession?) -> Void = { _, _ in },
        _ body: (MeshSession) async throws -> T
    ) async throws -> T {
        try await ControlClient.withConnection(to: broker.endpoints.control) { client in
            let holder = SessionHolder()
            client.onPush { onPush($0, holder.session.withLock { $0 }) }
            let session = try await MeshSession.open(
                JoinRequest(mesh: "test", nodeName: name, secret: broker.secret), client: client, connectTimeout: .seconds(5),
                logger: Logger(label: "test"))
            holder.session.withLock { $0 = session }
            let result = try await body(session)
            await session.leave()
            return result
        }
    }

    final class SessionHolder: Sendable {
        let session = Mutex<MeshSession?>(nil)
    }

    func connectRequest(to address: UInt32, port: UInt32) -> ControlMessage.OneOf_Body {
        .connectRequest(.with {
            $0.targetAddress = address
            $0.port = port
            $0.endpoint = .with { $0.address = 0xCB00_7165; $0.port = 40001 }
        })
    }

    /// The last connection a target was asked to accept.
    final class Seen: Sendable {
        let incoming = Mutex<Boxermesh_V1_IncomingConnection?>(nil)
        /// Connections the target answered, and withdrawals the requester heard.
        let answered = Box<[UInt64]>([])
        let withdrawn = Box<[Boxermesh_V1_ConnectWithdrawn]>([])
    }

    final class Box<Value: Sendable>: Sendable {
        private let value: Mutex<Value>
        init(_ value: Value) { self.value = Mutex(value) }
        func withLock<T>(_ body: (inout Value) -> T) -> T { value.withLock { body(&$0) } }
    }

    /// A target that accepts every connection from endpoint 203.0.113.102:40002, keeping the last request in `seen`.
    func accepting(into seen: Seen) -> @Sendable (ControlMessage, MeshSession?) -> Void {
        { message, session in
            guard case .incomingConnection(let incoming) = message.body, let session else { return }
            seen.incoming.withLock { $0 = incoming }
            Task {
                _ = try await session.request(.connectAnswer(.with {
                    $0.connectionID = incoming.connectionID
                    $0.accepted = true
                    $0.endpoint = .with { $0.address = 0xCB00_7166; $0.port = 40002 }
                }))
            }
        }
    }

    @Test("the target gets the request with the requester's endpoint and a token; the requester gets the answer and the same token")
    func offer() async throws {
        try await TestBroker.with { broker in
            let seen = Seen()
            try await node(broker, "server", onPush: accepting(into: seen)) { server in
                try await node(broker, "client") { client in
                    let reply = try await client.request(connectRequest(to: server.welcome.self_p.address, port: 5000))
                    guard case .connectOffer(let offer) = reply.body else { Issue.record("no offer: \(reply)"); return }
                    let incoming = try #require(seen.incoming.withLock { $0 })
                    #expect(incoming.peer.name == "client")
                    #expect(incoming.port == 5000)
                    #expect(incoming.endpoint.port == 40001)
                    #expect(incoming.token.count == 32)
                    #expect(offer.token == incoming.token)
                    #expect(offer.connectionID == incoming.connectionID)
                    #expect(offer.peer.name == "server")
                    #expect(offer.endpoint.port == 40002)
                }
            }
        }
    }

    @Test("an advertised endpoint goes to the next requester at once, once; a refusal after it arrives as a withdrawal push")
    func advertisedEndpoint() async throws {
        try await TestBroker.with { broker in
            let advert = Boxermesh_V1_PublicEndpoint.with { $0.address = 0xCB00_7166; $0.port = 41000 }
            // The target answers only after a while, and refuses port 1: an offer before that came from the advert.
            let seen = Seen()
            let answered = seen.answered
            try await node(broker, "server", onPush: { message, session in
                guard case .incomingConnection(let incoming) = message.body, let session else { return }
                seen.incoming.withLock { $0 = incoming }
                Task {
                    try await Task.sleep(for: .milliseconds(500))
                    answered.withLock { $0.append(incoming.connectionID) }
                    _ = try await session.request(.connectAnswer(.with {
                        $0.connectionID = incoming.connectionID
                        $0.accepted = incoming.port != 1
                        $0.reason = incoming.port != 1 ? "" : "nothing listens on port 1"
                        $0.endpoint = .with { $0.address = 0xCB00_7166; $0.port = 40002 }
                    }))
                }
            }) { server in
                let withdrawn = seen.withdrawn
                try await node(broker, "client", onPush: { message, _ in
                    if case .connectWithdrawn(let push) = message.body { withdrawn.withLock { $0.append(push) } }
                }) { client in
                    // An advert is not answered: the heartbeat after it is, once the broker is past the advert.
                    let advertise = { (endpoint: Boxermesh_V1_PublicEndpoint) in
                        server.post(.endpointAdvert(.with { $0.endpoint = endpoint }))
                        _ = try await server.request(.heartbeat(.init()))
                    }
                    try await advertise(advert)
                    let address = server.welcome.self_p.address
                    let early = try await client.request(connectRequest(to: address, port: 5000)).connectOffer
                    #expect(early.advertised && early.endpoint == advert, "\(early)")
                    #expect(answered.withLock { !$0.contains(early.connectionID) }, "the offer did not wait for the target's answer")
                    // The request reaches the target as a push of its own, which may land after the early offer.
                    #expect(await eventually { seen.incoming.withLock { $0?.advertised } == advert },
                        "the target learns which endpoint it punches from")
                    // Used once: the next requester waits for the target's answer and its endpoint.
                    let late = try await client.request(connectRequest(to: address, port: 5000)).connectOffer
                    #expect(!late.advertised && late.endpoint.port == 40002 && answered.withLock { $0.contains(late.connectionID) })
                    // A refusal of an early offer comes as a push, with the connection's id.
                    try await advertise(advert)
                    let refused = try await client.request(connectRequest(to: address, port: 1)).connectOffer
                    #expect(refused.advertised)
                    #expect(await eventually { withdrawn.withLock { !$0.isEmpty } })
                    let push = try #require(withdrawn.withLock { $0.first })
                    #expect(push.connectionID == refused.connectionID && push.code == .errorConnectionRefused, "\(push)")
                    #expect(push.reason.contains("nothing listens on port 1"), "\(push)")
                    // An advert without a port is bad input, and changes nothing.
                    try await advertise(.init())
                    #expect(try await client.request(connectRequest(to: address, port: 5000)).connectOffer.advertised == false)
                }
            }
        }
    }

    @Test("a refusal reaches the requester as connection refused; silence as peer unreachable; a stranger address as not found")
    func failures() async throws {
        // These sessions do not heartbeat; the expiry must outlast the broker's 5 s wait for a silent peer.
        try await TestBroker.with(expiry: .seconds(30)) { broker in
            try await node(broker, "refuser", onPush: { message, session in
                guard case .incomingConnection(let incoming) = message.body, let session else { return }
                Task { _ = try await session.request(.connectAnswer(.with { $0.connectionID = incoming.connectionID; $0.reason = "closed" })) }
            }) { refuser in
                try await node(broker, "silent") { silent in
                    try await node(broker, "client") { client in
                        let refused = await #expect(throws: BrokerRefusal.self) {
                            try await client.request(connectRequest(to: refuser.welcome.self_p.address, port: 1))
                        }
                        #expect(refused?.code == .errorConnectionRefused)
                        // A BrokerRefusal (not a local timeout) proves the broker gave up on the silent peer by itself.
                        let silence = await #expect(throws: BrokerRefusal.self) {
                            try await client.request(connectRequest(to: silent.welcome.self_p.address, port: 1), timeout: .seconds(60))
                        }
                        #expect(silence?.code == .errorPeerUnreachable)
                        let stranger = await #expect(throws: BrokerRefusal.self) {
                            try await client.request(connectRequest(to: 0x6440_C8C8, port: 1))
                        }
                        #expect(stranger?.code == .errorNotFound)
                    }
                }
            }
        }
    }

    @Test("a spare link is signalled like a connection, port 0 and marked spare; port 0 without the mark, or a spare without an endpoint to punch, is a bad request")
    func spare() async throws {
        try await TestBroker.with { broker in
            let seen = Seen()
            try await node(broker, "server", onPush: accepting(into: seen)) { server in
                try await node(broker, "client") { client in
                    let address = server.welcome.self_p.address
                    guard case .connectRequest(var request) = connectRequest(to: address, port: 0) else { return }
                    request.spare = true
                    let reply = try await client.request(.connectRequest(request))
                    guard case .connectOffer(let offer) = reply.body else { Issue.record("no offer: \(reply)"); return }
                    let incoming = try #require(seen.incoming.withLock { $0 })
                    #expect(incoming.spare && incoming.port == 0 && incoming.connectionID == offer.connectionID)
                    #expect(offer.endpoint.port == 40002 && offer.token == incoming.token)
                    let unmarked = await #expect(throws: BrokerRefusal.self) {
                        try await client.request(connectRequest(to: address, port: 0))
                    }
                    #expect(unmarked?.code == .errorBadRequest)
                    request.endpoint.port = 0
                    let nowhere = await #expect(throws: BrokerRefusal.self) { try await client.request(.connectRequest(request)) }
                    #expect(nowhere?.code == .errorBadRequest, "a spare is direct only: it needs an endpoint")
                }
            }
        }
    }
}
