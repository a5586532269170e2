import Testing
import WireFormat

@Suite("Tap sealing")
struct TapKeyTests {
    let secret = MeshSecret(Array("s3cret".utf8))

    func event() -> TapEvent {
        var event = TapEvent()
        event.mesh = "prod"
        event.sequence = 7
        event.membership = .with { $0.kind = .join; $0.member = .with { $0.name = "database"; $0.address = 0x6440_0002 } }
        return event
    }

    @Test("a sealed event opens with the mesh's key and with no other")
    func sealAndOpen() throws {
        let key = TapKey(secret: secret, mesh: "prod")
        let sealed = key.seal(event())
        #expect(try key.open(sealed) == event())
        #expect(throws: FrameError.self) { try TapKey(secret: MeshSecret(Array("wrong".utf8)), mesh: "prod").open(sealed) }
        #expect(throws: FrameError.self) { try TapKey(secret: secret, mesh: "staging").open(sealed) }
        var damaged = sealed
        damaged[damaged.count - 1] ^= 1
        #expect(throws: FrameError.self) { try key.open(damaged) }
        #expect(throws: FrameError.self) { try key.open(Array(sealed.prefix(10))) }
        // Nothing readable: the node name is not in the sealed bytes, and two seals of one event differ (nonce).
        #expect(!String(decoding: sealed, as: UTF8.self).contains("database"))
        #expect(key.seal(event()) != sealed)
    }

    @Test("topics hide mesh and node names, and prefixes select a mesh and a kind")
    func topics() {
        let key = TapKey(secret: secret, mesh: "prod")
        let topic = key.topic(.membership, node: "database")
        #expect(!topic.contains("prod") && !topic.contains("database") && !topic.contains("membership"))
        #expect(topic.hasPrefix(key.prefix()))
        #expect(topic.hasPrefix(key.prefix(.membership)))
        #expect(!topic.hasPrefix(key.prefix(.connection)))
        #expect(!topic.hasPrefix(TapKey(secret: secret, mesh: "staging").prefix()))
        #expect(!topic.hasPrefix(TapKey(secret: MeshSecret(Array("wrong".utf8)), mesh: "prod").prefix()))
        #expect(key.topic(.membership, node: "database") == topic)
    }
}
