@testable import MeshBroker
import Testing
import WireFormat

@Suite("Registry and address pool rules")
struct MeshRegistryTests {
    func hello(_ name: String, mesh: String = "m", requesting address: IPv4Address? = nil) -> Boxermesh_V1_Hello {
        var hello = Boxermesh_V1_Hello()
        hello.mesh = mesh
        hello.nodeName = name
        hello.role = .node
        hello.requestedAddress = address?.value ?? 0
        return hello
    }

    @Test("freed addresses go to the back of the line, even when the mesh empties")
    func addressesAreNotReusedAtOnce() throws {
        var registry = MeshRegistry(subnet: try IPv4Subnet("100.64.0.0/29"))
        let now = ContinuousClock.now
        let first = try registry.admit(hello("a"), routingID: [1], now: now, wallClockMs: 0)
        #expect(first.member?.ipv4.description == "100.64.0.1")
        registry.remove(token: first.token)
        let second = try registry.admit(hello("b"), routingID: [2], now: now, wallClockMs: 0)
        #expect(second.member?.ipv4.description == "100.64.0.2")
    }

    @Test("a /29 holds six nodes; the seventh is refused with a clear reason")
    func exhaustion() throws {
        var registry = MeshRegistry(subnet: try IPv4Subnet("100.64.0.0/29"))
        let addresses = try (1...6).map {
            try registry.admit(hello("n\($0)"), routingID: [UInt8($0)], now: .now, wallClockMs: 0).member!.address
        }
        #expect(Set(addresses).count == 6)
        let refusal = #expect(throws: MeshRegistry.Refusal.self) {
            try registry.admit(hello("n7"), routingID: [7], now: .now, wallClockMs: 0)
        }
        #expect(refusal?.code == .errorAddressesExhausted)
        // Another mesh has its own addresses.
        #expect(try registry.admit(hello("n1", mesh: "other"), routingID: [8], now: .now, wallClockMs: 0).member != nil)
    }

    @Test("a rejoining node gets its old address back when it is free, and another when it is not")
    func requestedAddress() throws {
        var registry = MeshRegistry(subnet: try IPv4Subnet("100.64.0.0/24"))
        let wanted = IPv4Address(100, 64, 0, 77)
        let back = try registry.admit(hello("a", requesting: wanted), routingID: [1], now: .now, wallClockMs: 0)
        #expect(back.member?.ipv4 == wanted)
        let clash = try registry.admit(hello("b", requesting: wanted), routingID: [2], now: .now, wallClockMs: 0)
        #expect(clash.member?.ipv4 != wanted)
        let outside = try registry.admit(
            hello("c", requesting: IPv4Address(10, 0, 0, 1)), routingID: [3], now: .now, wallClockMs: 0)
        #expect(try IPv4Subnet("100.64.0.0/24").contains(outside.member!.ipv4))
    }

    @Test("sessions answer only on the connection that opened them, and expire when silent")
    func sessionsAndExpiry() throws {
        var registry = MeshRegistry(subnet: try IPv4Subnet("100.64.0.0/24"))
        let start = ContinuousClock.now
        let a = try registry.admit(hello("a"), routingID: [1], now: start, wallClockMs: 0)
        let b = try registry.admit(hello("b"), routingID: [2], now: start, wallClockMs: 0)
        #expect(registry.session(token: a.token, routingID: [1]) != nil)
        #expect(registry.session(token: a.token, routingID: [2]) == nil)
        registry.touch(token: b.token, now: start + .seconds(2))
        let expired = registry.expire(silentSince: start + .seconds(1))
        #expect(expired.map(\.member?.name) == ["a"])
        #expect(registry.member(named: "a", in: "m") == nil)
        #expect(registry.member(named: "b", in: "m") != nil)
        #expect(registry.member(at: b.member!.ipv4, in: "m")?.name == "b")
    }
}
