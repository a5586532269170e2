import Foundation
import Testing
import WireFormat

@Suite("Names, subnets, secrets and proofs")
struct MeshIdentityTests {
    @Test("names follow DNS label rules and are lowercased", arguments: [
        ("db", "db"), ("Redis-1", "redis-1"), ("a", "a"), (String(repeating: "x", count: 63), String(repeating: "x", count: 63)),
    ])
    func validNames(input: String, expected: String) throws {
        #expect(try MeshName.validated(input, role: "node name") == expected)
    }

    @Test("bad names are refused with the rule they break", arguments: [
        ("", "must not be empty"), ("-db", "must not start or end"), ("db-", "must not start or end"),
        ("a b", "may only contain"), ("db.local", "may only contain"), ("12345", "all digits"),
        (String(repeating: "x", count: 64), "longer than 63"),
    ])
    func invalidNames(input: String, rule: String) {
        let error = #expect(throws: InvalidName.self) { try MeshName.validated(input, role: "node name") }
        #expect(error?.description.contains(rule) == true)
    }

    @Test("subnets parse strictly")
    func subnets() throws {
        let subnet = try IPv4Subnet("100.64.0.0/16")
        #expect(subnet.hosts.lowerBound == IPv4Address(100, 64, 0, 1).value)
        #expect(subnet.hosts.upperBound == IPv4Address(100, 64, 255, 254).value)
        #expect(IPv4Subnet.sharedAddressSpace.contains(subnet))
        #expect(!subnet.contains(IPv4Address(100, 65, 0, 1)))
        for bad in ["100.64.0.1/16", "100.64.0.0", "100.64.0.0/31", "100.64.0.0/x", "300.1.1.0/24"] {
            #expect(throws: AddressError.self) { try IPv4Subnet(bad) }
        }
    }

    @Test("secrets load from a file (trailing newline dropped) or the environment; empty and missing are errors")
    func secrets() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("secret-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try "hunter2\n".write(toFile: file, atomically: true, encoding: .utf8)
        let fromFile = try MeshSecret.load(file: file, environment: [:])
        let fromEnv = try MeshSecret.load(file: nil, environment: ["BOXER_MESH_SECRET": "hunter2"])
        #expect(try MeshSecret.load(file: nil, environment: [:]) == nil)
        let hello = Boxermesh_V1_Hello.with { $0.mesh = "m"; $0.clientNonce = Data(repeating: 1, count: 32) }
        let nonce = [UInt8](repeating: 2, count: 32)
        #expect(
            MeshKey(secret: fromFile!, mesh: "m").proof(by: .client, hello: hello, serverNonce: nonce)
                == MeshKey(secret: fromEnv!, mesh: "m").proof(by: .client, hello: hello, serverNonce: nonce))
        try "\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(throws: SecretError.self) { try MeshSecret.load(file: file, environment: [:]) }
        let missing = #expect(throws: SecretError.self) { try MeshSecret.load(file: "/nonexistent/secret", environment: [:]) }
        #expect(missing?.description.contains("no such file") == true)
    }

    @Test("proofs differ by secret, mesh, prover and nonce")
    func proofs() {
        let secret = MeshSecret(Array("s".utf8))
        let hello = Boxermesh_V1_Hello.with { $0.mesh = "m"; $0.nodeName = "a"; $0.clientNonce = Data(repeating: 1, count: 32) }
        let nonce = [UInt8](repeating: 2, count: 32)
        let base = MeshKey(secret: secret, mesh: "m").proof(by: .client, hello: hello, serverNonce: nonce)
        #expect(base.count == 32)
        #expect(MeshKey.matches(base, base))
        #expect(!MeshKey.matches(base, MeshKey(secret: MeshSecret(Array("t".utf8)), mesh: "m").proof(by: .client, hello: hello, serverNonce: nonce)))
        #expect(!MeshKey.matches(base, MeshKey(secret: secret, mesh: "n").proof(by: .client, hello: hello, serverNonce: nonce)))
        #expect(!MeshKey.matches(base, MeshKey(secret: secret, mesh: "m").proof(by: .broker, hello: hello, serverNonce: nonce)))
        #expect(!MeshKey.matches(base, MeshKey(secret: secret, mesh: "m").proof(by: .client, hello: hello, serverNonce: [UInt8](repeating: 3, count: 32))))
        #expect(!MeshKey.matches(base, Array(base.prefix(31))))
    }

    @Test("control frames: oversized, malformed and typeless frames are refused")
    func frames() throws {
        var message = ControlMessage()
        message.requestID = 9
        message.heartbeat = .init()
        #expect(try ControlMessage(frame: message.frame()) == message)
        #expect(throws: FrameError.self) { try ControlMessage(frame: []) }
        #expect(throws: FrameError.self) { try ControlMessage(frame: [0x0a, 0xff]) }
        #expect(throws: FrameError.self) { try ControlMessage(frame: Array(repeating: 0, count: ControlMessage.maximumFrameSize + 1)) }
        for _ in 0..<2000 {
            let junk = (0..<Int.random(in: 0...64)).map { _ in UInt8.random(in: 0...255) }
            _ = try? ControlMessage(frame: junk)  // must not crash, whatever it decodes
        }
    }
}

/// A name given as a prefix is proven as such: the flag changes the proof, so it cannot be flipped on the way.
@Test func prefixFlagIsProven() {
    let key = MeshKey(secret: MeshSecret(Array("s".utf8)), mesh: "m")
    var hello = Boxermesh_V1_Hello()
    hello.mesh = "m"
    hello.nodeName = "worker"
    hello.role = .node
    hello.clientNonce = Data(repeating: 7, count: 32)
    let asName = key.proof(by: .client, hello: hello, serverNonce: [1, 2, 3])
    hello.nodeNameIsPrefix = true
    #expect(key.proof(by: .client, hello: hello, serverNonce: [1, 2, 3]) != asName)
}
