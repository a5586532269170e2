import Testing
import WireFormat

@Suite("DNS queries: the node's responder reads one question and answers A records")
struct DNSQueryTests {
    /// A query as `dig` sends it: id, RD, one question, and an EDNS OPT record in the additional section.
    static func query(_ name: String, type: UInt16 = DNSQuery.typeA, id: UInt16 = 0xBEEF) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]
        for label in name.split(separator: ".") { bytes += [UInt8(label.utf8.count)] + Array(label.utf8) }
        bytes += [0, UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
        bytes += [0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]  // OPT, 4096-byte payload
        return bytes
    }

    @Test("a query's id, name (lowercased), type and class are read; the answer echoes the question and carries the A record")
    func answerWithAddress() throws {
        let query = try DNSQuery(parsing: Self.query("Echo"))
        #expect(query.id == 0xBEEF && query.name == "echo" && query.type == DNSQuery.typeA && query.queryClass == DNSQuery.classIN)
        #expect(query.recursionDesired)
        let answer = query.answer(addresses: [IPv4Address(100, 64, 0, 7)], ttl: 0)
        // Header: id, flags QR|AA|RD|RA and NOERROR, 1 question, 1 answer.
        #expect(Array(answer[0..<12]) == [0xBE, 0xEF, 0x85, 0x80, 0, 1, 0, 1, 0, 0, 0, 0])
        // The question as asked (original case), then the record: pointer to it, A, IN, TTL 0, 4 bytes.
        #expect(Array(answer[12..<22]) == [4] + Array("Echo".utf8) + [0, 0, 1, 0, 1])
        #expect(Array(answer[22...]) == [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 100, 64, 0, 7])
    }

    @Test("no record and a response code: NODATA for AAAA, NXDOMAIN, SERVFAIL")
    func emptyAnswers() throws {
        let query = try DNSQuery(parsing: Self.query("echo", type: DNSQuery.typeAAAA))
        for (outcome, code) in [(DNSQuery.Outcome.noError, UInt8(0)), (.nameError, 3), (.serverFailure, 2)] {
            let answer = query.answer(outcome)
            #expect(answer[3] == 0x80 | code && answer[6] == 0 && answer[7] == 0 && answer.count == 12 + 10)
        }
    }

    @Test("a dotted name reads as one name; the root as empty")
    func names() throws {
        #expect(try DNSQuery(parsing: Self.query("echo.example.org")).name == "echo.example.org")
        #expect(try DNSQuery(parsing: Self.query("")).name == "")
    }

    @Test("malformed or unexpected messages are rejected with a reason, never read past their end")
    func malformed() {
        let good = Self.query("echo")
        var response = good
        response[2] |= 0x80
        var notify = good
        notify[2] |= 0x20  // opcode 4
        var twoQuestions = good
        twoQuestions[5] = 2
        var compressed = good
        compressed[12] = 0xC0
        var longLabel = good
        longLabel[12] = 60  // runs past the message
        let cases: [([UInt8], String)] = [
            ([], "shorter than a DNS header"), (Array(good[0..<11]), "shorter than a DNS header"),
            (response, "a response"), (notify, "opcode 4"), (twoQuestions, "2 questions"),
            (compressed, "compressed"), (longLabel, "runs past"), (Array(good[0..<17]), "runs past"),
            (Array(good[0..<20]), "no type and class"),
        ]
        for (bytes, reason) in cases {
            #expect(throws: DNSQueryError.self, "\(reason)") { try DNSQuery(parsing: bytes) }
            do { _ = try DNSQuery(parsing: bytes) } catch { #expect(error.description.contains(reason), "\(error)") }
        }
        // A name longer than 255 bytes.
        let long = Self.query(Array(repeating: String(repeating: "a", count: 63), count: 5).joined(separator: "."))
        do { _ = try DNSQuery(parsing: long); Issue.record("a 320-byte name was accepted") } catch {
            #expect(error.description.contains("longer than 255"))
        }
    }
}
