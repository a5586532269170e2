import Testing
import WireFormat

@Suite("Spare-link claims and answers")
struct SpareClaimTests {
    static let endpoint = Endpoint(host: .v4(IPv4Address(203, 0, 113, 7)), port: 40123)

    @Test("a claim carries its port and the successor's endpoint both ways; an answer its verdict and the peer's endpoint")
    func roundTrip() throws {
        for port: UInt16 in [1, 80, 6379, 65535] {
            for successor in [nil, Self.endpoint] {
                let claim = SpareClaim.claim(port: port, successor: successor)
                #expect(claim.count == SpareClaim.claimSize)
                #expect(try SpareClaim.claim(from: claim) == SpareClaim.Claim(port: port, successor: successor))
            }
        }
        for answer in [SpareClaim.Answer.accepted, .refused] {
            for successor in [nil, Self.endpoint] {
                let bytes = SpareClaim.answer(answer, successor: successor)
                #expect(bytes.count == SpareClaim.answerSize)
                #expect(try SpareClaim.reply(from: bytes) == SpareClaim.Reply(answer: answer, successor: successor))
            }
        }
    }

    @Test("anything else is malformed, with a reason: app bytes, a short read, port 0, an unknown verdict, a successor without a port")
    func malformed() {
        let claim = SpareClaim.claim(port: 5000, successor: Self.endpoint)
        var noSuccessorPort = claim
        noSuccessorPort[12] = 0
        noSuccessorPort[13] = 0
        var dirtyPadding = claim
        dirtyPadding[15] = 1
        for bad in [Array("GET / HTTP/1.1\r\n".utf8), Array(claim.prefix(15)), claim + [0], SpareClaim.claim(port: 0),
            Array(claim.prefix(6)) + [1, 0] + Array(claim.suffix(8)), noSuccessorPort, dirtyPadding]
        {
            #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.claim(from: bad) }
        }
        var answer = SpareClaim.answer(.accepted)
        answer[4] = 7
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.reply(from: answer) }
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.reply(from: claim) }
    }

    @Test("successors take the ids after their spare's, up to the end of its lineage; each has its own token")
    func successors() {
        let base = 1000 * SpareClaim.lineage
        #expect(SpareClaim.successorID(of: base) == base + 1)
        #expect(SpareClaim.successorID(of: base + SpareClaim.lineage - 2) == base + SpareClaim.lineage - 1)
        #expect(SpareClaim.successorID(of: base + SpareClaim.lineage - 1) == nil)
        let token = LinkToken((0..<32).map { UInt8($0) })
        let first = token.successor(connectionID: base + 1)
        let proof = first.proof(initiator: true, connectionID: base + 1)
        #expect(first.matches(proof, initiator: true, connectionID: base + 1))
        #expect(!token.matches(proof, initiator: true, connectionID: base + 1))
        #expect(!token.successor(connectionID: base + 2).matches(proof, initiator: true, connectionID: base + 1))
    }
}
