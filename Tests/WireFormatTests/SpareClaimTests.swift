import Testing
import WireFormat

@Suite("Spare-link claims and answers")
struct SpareClaimTests {
    @Test("a claim carries its port both ways; an answer its verdict")
    func roundTrip() throws {
        for port: UInt16 in [1, 80, 6379, 65535] {
            let claim = SpareClaim.claim(port: port)
            #expect(claim.count == SpareClaim.claimSize)
            #expect(try SpareClaim.port(fromClaim: claim) == port)
        }
        for answer in [SpareClaim.Answer.accepted, .refused] {
            let bytes = SpareClaim.answer(answer)
            #expect(bytes.count == SpareClaim.answerSize)
            #expect(try SpareClaim.answer(from: bytes) == answer)
        }
    }

    @Test("anything else is malformed, with a reason: app bytes, a short read, port 0, an unknown verdict")
    func malformed() {
        let claim = SpareClaim.claim(port: 5000)
        for bad in [Array("GET / HT".utf8), Array(claim.prefix(7)), claim + [0], SpareClaim.claim(port: 0),
            Array(claim.prefix(6)) + [1, 0]]
        {
            #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.port(fromClaim: bad) }
        }
        var answer = SpareClaim.answer(.accepted)
        answer[4] = 7
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.answer(from: answer) }
        #expect(throws: SpareClaim.Malformed.self) { try SpareClaim.answer(from: claim) }
    }
}
