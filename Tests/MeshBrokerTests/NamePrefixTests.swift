import Logging
import MeshBroker
import MeshNode
import Testing
import WireFormat

@Suite("Name prefixes and leave reasons")
struct NamePrefixTests {
    @Test("a prefix gets the first free <prefix>-N, a freed number is given again, and the session keeps the name")
    func prefixCompletion() async throws {
        try await TestBroker.with { broker in
            try await broker.session("worker", prefix: true) { first in
                #expect(first.welcome.self_p.name == "worker-1")
                // A rejoin after a broker restart asks for the name given, not for another number.
                #expect(first.join.nodeName == "worker-1" && !first.join.nameIsPrefix)
                try await broker.session("worker", prefix: true) { second in
                    #expect(second.welcome.self_p.name == "worker-2")
                    try await broker.session("worker-3") { _ in
                        let fourth = try await broker.session("worker", prefix: true) { $0.welcome.self_p.name }
                        #expect(fourth == "worker-4")
                    }
                    #expect(try await second.resolve(name: "worker-1").address == first.welcome.self_p.address)
                }
            }
            #expect(try await broker.session("worker", prefix: true) { $0.welcome.self_p.name } == "worker-1")
        }
    }

    @Test("a prefix that cannot make a name is refused with the rule it breaks")
    func invalidPrefix() async throws {
        try await TestBroker.with { broker in
            let long = String(repeating: "p", count: MeshName.maximumPrefixLength + 1)
            let error = await #expect(throws: BrokerRefusal.self) { try await broker.session(long, prefix: true) { _ in } }
            #expect(error?.code == .errorInvalidName)
            #expect(error?.message.contains("longer than 56 characters") == true)
        }
    }

    @Test("a leave's reason reaches the tap, cut to 200 characters")
    func leaveReason() async throws {
        try await TestBroker.with { broker in
            let tap = try await TapRecorder(broker)
            defer { tap.stop() }
            try await join(broker, "short", thenLeave: "app exited with status 0")
            try await join(broker, "long", thenLeave: String(repeating: "r", count: 500))
            var leaves: [TapEvent] { tap.events.filter { $0.membership.kind == .leave } }
            try #require(await eventually { leaves.count >= 2 })
            #expect(leaves[0].membership.member.name == "short")
            #expect(leaves[0].membership.reason == "app exited with status 0")
            #expect(leaves[1].membership.reason == String(repeating: "r", count: 200))
        }
    }

    /// Joins as `name` and leaves once, with `reason`.
    private func join(_ broker: TestBroker, _ name: String, thenLeave reason: String) async throws {
        let join = JoinRequest(mesh: "test", nodeName: name, secret: broker.secret)
        try await ControlClient.withConnection(to: broker.endpoints.control) { client in
            let session = try await MeshSession.open(join, client: client, connectTimeout: .seconds(5), logger: Logger(label: "test-node"))
            await session.leave(reason: reason)
        }
    }
}
