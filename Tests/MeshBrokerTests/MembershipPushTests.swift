import Foundation
import Logging
import MeshBroker
import Testing
import WireFormat

@testable import MeshNode

/// The broker pushes each mesh's membership to its nodes; a node's table answers lookups without a round trip.
@Suite("Membership pushes: every node's table follows joins, leaves and expiries")
struct MembershipPushTests {
    /// Joins as `name` with a table of names, as `boxer-mesh node` does, heartbeats, runs `body`, leaves.
    func node<T: Sendable>(
        _ broker: TestBroker, _ name: String, _ body: (MeshSession, MeshNames) async throws -> T
    ) async throws -> T {
        let names = MeshNames(logger: Logger(label: "test-names"))
        return try await ControlClient.withConnection(to: broker.endpoints.control) { client in
            client.onPush { _ = names.receive($0) }
            let session = try await MeshSession.open(
                JoinRequest(mesh: "test", nodeName: name, secret: broker.secret), client: client,
                connectTimeout: .seconds(5), logger: Logger(label: "test-node"), names: names)
            let heartbeats = Task { await session.keepAlive() }
            defer { heartbeats.cancel() }
            let result = try await body(session, names)
            await session.leave()
            return result
        }
    }

    @Test("a node's table holds the mesh from the moment it joined; a leave reaches it no later than the tap")
    func joinAndLeave() async throws {
        try await TestBroker.with { broker in
            let tap = try await TapRecorder(broker)
            defer { tap.stop() }
            try await node(broker, "alpha") { alpha, alphaNames in
                // The snapshot came before the Welcome: no wait, no round trip.
                #expect(alphaNames.lookup(name: "alpha") == .found(alpha.welcome.self_p))
                #expect(alphaNames.lookup(name: "beta") == .notFound)
                let joined = try await alpha.request(.heartbeat(.init())).heartbeatAck.membershipVersion
                let beta = try await node(broker, "beta") { beta, betaNames in
                    #expect(betaNames.lookup(name: "ALPHA") == .found(alpha.welcome.self_p))
                    #expect(betaNames.lookup(address: beta.welcome.self_p.address) == .found(beta.welcome.self_p))
                    #expect(await eventually { alphaNames.lookup(name: "beta") == .found(beta.welcome.self_p) })
                    return beta.welcome.self_p
                }
                // beta has left: as the tap shows it, alpha's table no longer has it. The broker pushes to the nodes
                // before it publishes, but alpha's client thread and the tap's take it from there apart (README).
                #expect(await eventually { tap.events.contains { $0.membership.kind == .leave } })
                #expect(await eventually(timeout: .seconds(1)) { alphaNames.lookup(name: "beta") == .notFound })
                #expect(alphaNames.lookup(address: beta.address) == .notFound)
                // beta's join and leave: two changes since alpha joined.
                let ack = try await alpha.request(.heartbeat(.init()))
                #expect(ack.heartbeatAck.membershipVersion == joined + 2)
            }
        }
    }

    @Test("a node that stops heartbeating leaves every table when it expires")
    func expiry() async throws {
        try await TestBroker.with(expiry: .milliseconds(800)) { broker in
            try await node(broker, "alpha") { _, names in
                let ghost = try await broker.abandonedSession("ghost")
                #expect(await eventually { names.lookup(name: "ghost") == .found(ghost) })
                #expect(await eventually(timeout: .seconds(3)) { names.lookup(name: "ghost") == .notFound })
            }
        }
    }

    @Test("a table that lost step (a malformed push, or forgotten) asks for a snapshot and answers again")
    func resync() async throws {
        try await TestBroker.with { broker in
            try await node(broker, "alpha") { alpha, names in
                try await node(broker, "beta") { _, _ in
                    #expect(await eventually { names.lookup(name: "beta") != .notFound })
                    var broken = ControlMessage()
                    broken.membershipUpdate = .with {
                        $0.kind = .join
                        $0.version = 99
                        $0.members = [.with { $0.name = "-bad-"; $0.address = 1 }]
                    }
                    #expect(names.receive(broken))
                    // Refused, forgotten, and filled again from a fresh snapshot (a resync request).
                    #expect(await eventually { names.lookup(name: "beta") != .notSynced })
                    #expect(names.lookup(name: "beta") != .notFound && names.lookup(name: "-bad-") == .notFound)
                    // Forgotten without a resync of its own: the next heartbeat notices and asks.
                    names.forget()
                    #expect(names.lookup(name: "alpha") == .notSynced)
                    #expect(await names.waitUntilSynced(timeout: .seconds(3)))
                    #expect(names.lookup(name: "alpha") == .found(alpha.welcome.self_p))
                }
            }
        }
    }

    @Test("a lookup while the table is empty waits for it, and gives up after its timeout")
    func waitForSnapshot() async {
        let names = MeshNames(logger: Logger(label: "test-names"))
        let started = ContinuousClock.now
        #expect(await names.waitUntilSynced(timeout: .milliseconds(200)) == false)
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        async let waited = names.waitUntilSynced(timeout: .seconds(5))
        try? await Task.sleep(for: .milliseconds(50))
        var snapshot = ControlMessage()
        snapshot.membershipUpdate = .with {
            $0.kind = .snapshot
            $0.version = 1
            $0.members = [.with { $0.name = "solo"; $0.address = 0x6440_0001 }]
        }
        #expect(names.receive(snapshot))
        #expect(await waited, "the snapshot's arrival ends the wait")
        #expect(names.lookup(address: 0x6440_0001) != .notFound)
    }
}
