import Testing
import WireFormat

@Suite("Spare-link claims and answers")
struct SpareClaimTests {
    static let endpoint = Endpoint(host: .v4(IPv4Address(203, 0, 113, 7)), port: 40123)

    @Test("an offer carries the successor's endpoint; a claim its port, whether it waits, and its successor; an answer its verdict")
    func roundTrip() throws {
        for successor in [nil, Self.endpoint] {
            let offer = SpareClaim.offer(successor: successor)
            #expect(offer.count == SpareClaim.offerSize)
            #expect(try SpareClaim.offer(from: offer) == successor)
        }
        for port: UInt16 in [1, 80, 6379, 65535] {
            for answered in [true, false] {
                for successor in [nil, Self.endpoint] {
                    let claim = SpareClaim.claim(.init(port: port, answered: answered, successor: successor))
                    #expect(claim.count == SpareClaim.claimSize)
                    #expect(try SpareClaim.claim(from: claim) == SpareClaim.Claim(port: port, answered: answered, successor: successor))
                }
            }
        }
        for answer in [SpareClaim.Answer.accepted, .refused] {
            let bytes = SpareClaim.answer(answer)
            #expect(bytes.count == SpareClaim.answerSize)
            #expect(try SpareClaim.answer(from: bytes) == answer)
        }
    }

    @Test("anything else is malformed, with a reason: app bytes, a short read, port 0, an unknown verdict or flag, a successor without a port")
    func malformed() {
        let claim = SpareClaim.claim(.init(port: 5000, successor: Self.endpoint))
        var noSuccessorPort = claim
        noSuccessorPort[12] = 0
        noSuccessorPort[13] = 0
        var dirtyPadding = claim
        dirtyPadding[15] = 1
        var unknownFlag = claim
        unknownFlag[6] = 2
        for bad in [Array("GET / HTTP/1.1\r\n".utf8), Array(claim.prefix(15)), claim + [0], SpareClaim.claim(.init(port: 0)),
            Array(claim.prefix(6)) + [1, 1] + Array(claim.suffix(8)), noSuccessorPort, dirtyPadding, unknownFlag]
        {
            #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.claim(from: bad) }
        }
        var answer = SpareClaim.answer(.accepted)
        answer[4] = 7
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.answer(from: answer) }
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.answer(from: Array(claim.prefix(8))) }
        var offer = SpareClaim.offer(successor: Self.endpoint)
        offer[10] = 1
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.offer(from: offer) }
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.offer(from: Array(claim.prefix(12))) }
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
