/// What travels on a spare link (see the schema's ConnectRequest.spare) when a connect takes it: the connecting
/// node's claim — which port of the peer the app wants — and the peer node's answer. Both are fixed-size, so each
/// side reads exactly its message and the apps' first bytes stay in the socket. The link was proven with the
/// broker's token when it was made; these bytes need no proof of their own.
///
/// A claim may also ask for the spare's successor, so the pool refills without the broker: it carries the public
/// endpoint of a fresh port of the claiming node, and an answer that agrees carries one of the peer's. Both ends
/// then punch between the two and prove the link with the successor's token and connection id (``successorID(of:)``,
/// ``LinkToken/successor(connectionID:)``), which both derive from the claimed spare's.
public enum SpareClaim {
    /// "BXC2", the port (big-endian), two bytes of zero, the successor's endpoint (or eight bytes of zero).
    public static let claimSize = 16
    /// "BXA2", the answer, three bytes of zero, the successor's endpoint (or eight bytes of zero).
    public static let answerSize = 16
    /// Connection ids the broker sets aside for each spare link it signals, from a multiple of this on: the
    /// spare's own and those of its successors, so no two connections ever share one.
    public static let lineage: UInt64 = 64

    private static let claimMagic = Array("BXC2".utf8)
    private static let answerMagic = Array("BXA2".utf8)

    /// The peer's answer to a claim.
    public enum Answer: UInt8, Sendable {
        /// The link is handed to the app listening on the port: hand our end to ours.
        case accepted = 0
        /// Nothing listens on the port: the connect is refused, and both ends close the link.
        case refused = 1
    }

    /// A claim as read: the port, and where the claiming node punches the successor from, if it asks for one.
    public struct Claim: Equatable, Sendable {
        public var port: UInt16
        public var successor: Endpoint?

        public init(port: UInt16, successor: Endpoint? = nil) {
            self.port = port
            self.successor = successor
        }
    }

    /// An answer as read: the verdict, and where the peer punches the successor from, if it makes one.
    public struct Reply: Equatable, Sendable {
        public var answer: Answer
        public var successor: Endpoint?

        public init(answer: Answer, successor: Endpoint? = nil) {
            self.answer = answer
            self.successor = successor
        }
    }

    /// A claim or an answer that is not one (wrong magic, wrong size, bytes that must be zero): the link is not
    /// what it should be.
    public struct Malformed: Error, CustomStringConvertible {
        public let description: String
    }

    public static func claim(port: UInt16, successor: Endpoint? = nil) -> [UInt8] {
        claimMagic + [UInt8(port >> 8), UInt8(port & 0xFF), 0, 0] + encode(successor)
    }

    public static func claim(from bytes: [UInt8]) throws(Malformed) -> Claim {
        guard bytes.count == claimSize, Array(bytes.prefix(4)) == claimMagic, bytes[6] == 0, bytes[7] == 0 else {
            throw Malformed(description: "not a spare-link claim: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        let port = UInt16(bytes[4]) << 8 | UInt16(bytes[5])
        guard port != 0 else { throw Malformed(description: "a spare-link claim for port 0") }
        return Claim(port: port, successor: try decode(bytes[8...], "spare-link claim"))
    }

    public static func answer(_ answer: Answer, successor: Endpoint? = nil) -> [UInt8] {
        answerMagic + [answer.rawValue, 0, 0, 0] + encode(successor)
    }

    public static func reply(from bytes: [UInt8]) throws(Malformed) -> Reply {
        guard bytes.count == answerSize, Array(bytes.prefix(4)) == answerMagic, bytes[5..<8].allSatisfy({ $0 == 0 }),
            let answer = Answer(rawValue: bytes[4])
        else {
            throw Malformed(description: "not an answer to a spare-link claim: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        return Reply(answer: answer, successor: try decode(bytes[8...], "answer to a spare-link claim"))
    }

    /// The connection id of the successor of the spare link `id`; nil once its lineage is used up (the next spare
    /// then goes through the broker).
    public static func successorID(of id: UInt64) -> UInt64? {
        (id + 1) % lineage == 0 ? nil : id + 1
    }

    /// An IPv4 endpoint as address, port and two bytes of zero; none (or an IPv6 one, which mesh links never use)
    /// as eight bytes of zero.
    private static func encode(_ endpoint: Endpoint?) -> [UInt8] {
        guard let endpoint, case .v4(let address) = endpoint.host, endpoint.port != 0 else { return [UInt8](repeating: 0, count: 8) }
        let value = address.value
        return [UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF),
            UInt8(endpoint.port >> 8), UInt8(endpoint.port & 0xFF), 0, 0]
    }

    private static func decode(_ bytes: ArraySlice<UInt8>, _ what: String) throws(Malformed) -> Endpoint? {
        let bytes = Array(bytes)
        if bytes.allSatisfy({ $0 == 0 }) { return nil }
        let port = UInt16(bytes[4]) << 8 | UInt16(bytes[5])
        guard port != 0, bytes[6] == 0, bytes[7] == 0 else {
            throw Malformed(description: "a \(what) with a malformed successor endpoint: \(bytes)")
        }
        let address = IPv4Address(bytes[0], bytes[1], bytes[2], bytes[3])
        return Endpoint(host: .v4(address), port: port)
    }
}
