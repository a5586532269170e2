/// What travels on a spare link (see the schema's ConnectRequest.spare) when a connect takes it: the connecting
/// node's claim — which port of the peer the app wants — and the peer node's answer. Both are fixed-size, so each
/// side reads exactly its message and the apps' first bytes stay in the socket. The link was proven with the
/// broker's token when it was made; these bytes need no proof of their own.
public enum SpareClaim {
    /// "BXC1", the port (big-endian), two bytes of zero.
    public static let claimSize = 8
    /// "BXA1", the answer, three bytes of zero.
    public static let answerSize = 8

    private static let claimMagic = Array("BXC1".utf8)
    private static let answerMagic = Array("BXA1".utf8)

    /// The peer's answer to a claim.
    public enum Answer: UInt8, Sendable {
        /// The link is handed to the app listening on the port: hand our end to ours.
        case accepted = 0
        /// Nothing listens on the port: the connect is refused, and both ends close the link.
        case refused = 1
    }

    /// A claim that is not one (wrong magic, wrong size): the link is not what it should be.
    public struct Malformed: Error, CustomStringConvertible {
        public let description: String
    }

    public static func claim(port: UInt16) -> [UInt8] {
        claimMagic + [UInt8(port >> 8), UInt8(port & 0xFF), 0, 0]
    }

    /// The port a claim asks for.
    public static func port(fromClaim bytes: [UInt8]) throws(Malformed) -> UInt16 {
        guard bytes.count == claimSize, Array(bytes.prefix(4)) == claimMagic, bytes[6] == 0, bytes[7] == 0 else {
            throw Malformed(description: "not a spare-link claim: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        let port = UInt16(bytes[4]) << 8 | UInt16(bytes[5])
        guard port != 0 else { throw Malformed(description: "a spare-link claim for port 0") }
        return port
    }

    public static func answer(_ answer: Answer) -> [UInt8] {
        answerMagic + [answer.rawValue, 0, 0, 0]
    }

    public static func answer(from bytes: [UInt8]) throws(Malformed) -> Answer {
        guard bytes.count == answerSize, Array(bytes.prefix(4)) == answerMagic, bytes[5...].allSatisfy({ $0 == 0 }),
            let answer = Answer(rawValue: bytes[4])
        else {
            throw Malformed(description: "not an answer to a spare-link claim: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        return answer
    }
}
