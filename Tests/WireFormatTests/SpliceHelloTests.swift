import Testing
import WireFormat

@Suite("Splice hellos")
struct SpliceHelloTests {
    static let session = Array(repeating: UInt8(7), count: 32)

    @Test("a hello is 45 bytes and reads back as sent; its proof passes only with the session that made it")
    func roundTrip() throws {
        for role in [SpliceHello.Role.initiator, .acceptor] {
            for id: UInt64 in [1, 0x0102_0304_0506_0708, .max] {
                let hello = SpliceHello(connectionID: id, role: role, session: Self.session)
                #expect(hello.bytes.count == SpliceHello.size)
                let read = try SpliceHello(parsing: hello.bytes)
                #expect(read == hello)
                #expect(read.proven(by: Self.session))
                #expect(!read.proven(by: Array(repeating: 8, count: 32)))
            }
        }
        // A proof is bound to its role and connection: neither passes for the other.
        let initiator = SpliceHello(connectionID: 9, role: .initiator, session: Self.session)
        var asAcceptor = initiator
        asAcceptor.role = .acceptor
        var otherID = initiator
        otherID.connectionID = 10
        #expect(!asAcceptor.proven(by: Self.session) && !otherID.proven(by: Self.session))
    }

    @Test("anything else is an error that says why: wrong size, no magic, unknown role")
    func malformed() {
        let bytes = SpliceHello(connectionID: 9, role: .initiator, session: Self.session).bytes
        var noMagic = bytes
        noMagic[0] = 0
        var badRole = bytes
        badRole[12] = 3
        let cases: [([UInt8], String)] = [
            (Array(bytes.prefix(44)), "45 bytes"), (bytes + [0], "45 bytes"), (noMagic, "magic"), (badRole, "role 3"),
        ]
        for (input, reason) in cases {
            #expect {
                try SpliceHello(parsing: input)
            } throws: { error in
                "\(error)".contains(reason)
            }
        }
    }
}
