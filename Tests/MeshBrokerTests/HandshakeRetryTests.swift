import Foundation
import MeshBroker
import MeshNode
import Testing
import WireFormat

/// A node whose Welcome comes too late asks again on the same connection (MeshSession's handshake retries after
/// two seconds): the broker must not refuse it the name its own first attempt took.
@Suite("Handshake retry on the same connection")
struct HandshakeRetryTests {
    /// Hello, Challenge, Authenticate, Welcome, by hand: the exchange MeshSession makes.
    func join(_ name: String, through client: ControlClient, broker: TestBroker) async throws -> Boxermesh_V1_Welcome {
        var hello = Boxermesh_V1_Hello()
        hello.protocolVersion = 1
        hello.mesh = "test"
        hello.nodeName = name
        hello.role = .node
        hello.clientNonce = Data(Sodium.randomBytes(32))
        var message = ControlMessage()
        message.hello = hello
        let challenge = try await client.request(message, timeout: .seconds(5)).challenge
        var authenticate = ControlMessage()
        authenticate.authenticate.clientProof = Data(
            MeshKey(secret: broker.secret, mesh: "test").proof(by: .client, hello: hello, serverNonce: [UInt8](challenge.serverNonce)))
        return try await client.request(authenticate, timeout: .seconds(5)).welcome
    }

    @Test("the retry gets the name; the first session is gone; another connection is still refused the name")
    func retry() async throws {
        try await TestBroker.with { broker in
            let tap = try await TapRecorder(broker)
            defer { tap.stop() }
            try await ControlClient.withConnection(to: broker.endpoints.control) { client in
                let first = try await join("slow", through: client, broker: broker)
                let second = try await join("slow", through: client, broker: broker)
                #expect(second.self_p.name == "slow" && second.session != first.session)
                let members = try await broker.session(nil) { try await $0.members().map(\.name) }
                #expect(members == ["slow"])
                // A different connection holding no session: refused as ever.
                let error = await #expect(throws: BrokerRefusal.self) { try await broker.session("slow") { _ in } }
                #expect(error?.code == .errorNameTaken)
            }
            #expect(tap.events.contains { $0.membership.kind == .leave && $0.membership.reason.contains("handshake retry") })
        }
    }
}
