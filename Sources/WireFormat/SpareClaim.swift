/// What travels on a spare link (see the schema's ConnectRequest.spare) besides the link proof: the accepting
/// node's successor offer once the link is proven, the connecting node's claim when a connect takes the link — which
/// port of the peer the app wants — and, only where the claim asks for one, the peer's answer. All are fixed-size,
/// so each side reads exactly its message and the apps' first bytes stay in the socket. The link was proven with
/// the broker's token when it was made; these bytes need no proof of their own.
///
/// A claim that asks for no answer lets the connect return as soon as the claim is sent: no round trip at connect
/// time. The connecting node asks for one where it has not seen the port accepted lately; a claim for a port that
/// nothing listens on then resets the link instead of being refused in words.
///
/// The pool refills on the link itself, without the broker: the offer carries the public endpoint the accepting
/// node will punch the link's successor from, and a claim that wants the successor carries one of the claiming
/// node's. Both ends then punch between the two and prove the link with the successor's token and connection id
/// (``successorID(of:)``, ``LinkToken/successor(connectionID:)``), which both derive from the claimed spare's.
public enum SpareClaim {
    /// "BXO3", the successor's endpoint (or eight bytes of zero: the accepting node makes none).
    public static let offerSize = 12
    /// "BXC3", the port (big-endian), whether an answer is wanted (1 or 0), a byte of zero, the successor's
    /// endpoint (or eight bytes of zero).
    public static let claimSize = 16
    /// "BXA3", the answer, three bytes of zero.
    public static let answerSize = 8
    /// Connection ids the broker sets aside for each spare link it signals, from a multiple of this on: the
    /// spare's own and those of its successors, so no two connections ever share one.
    public static let lineage: UInt64 = 64

    private static let offerMagic = Array("BXO3".utf8)
    private static let claimMagic = Array("BXC3".utf8)
    private static let answerMagic = Array("BXA3".utf8)

    /// The peer's answer to a claim.
    public enum Answer: UInt8, Sendable {
        /// The link is handed to the app listening on the port: hand our end to ours.
        case accepted = 0
        /// Nothing listens on the port: the connect is refused, and both ends close the link.
        case refused = 1
    }

    /// A claim as read: the port, whether the claiming node waits for an answer, and where it punches the
    /// successor from, if it wants one.
    public struct Claim: Equatable, Sendable {
        public var port: UInt16
        public var answered: Bool
        public var successor: Endpoint?

        public init(port: UInt16, answered: Bool = true, successor: Endpoint? = nil) {
            self.port = port
            self.answered = answered
            self.successor = successor
        }
    }

    /// Bytes that are not the message expected (wrong magic, wrong size, bytes that must be zero): the link is
    /// not what it should be.
    public struct Malformed: Error, CustomStringConvertible {
        public let description: String
    }

    public static func offer(successor: Endpoint?) -> [UInt8] { offerMagic + encode(successor) }

    /// The successor endpoint an offer carries; nil: the accepting node makes none.
    public static func offer(from bytes: [UInt8]) throws(Malformed) -> Endpoint? {
        guard bytes.count == offerSize, Array(bytes.prefix(4)) == offerMagic else {
            throw Malformed(description: "not a spare-link offer: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        return try decode(bytes[4...], "spare-link offer")
    }

    public static func claim(_ claim: Claim) -> [UInt8] {
        claimMagic + [UInt8(claim.port >> 8), UInt8(claim.port & 0xFF), claim.answered ? 1 : 0, 0] + encode(claim.successor)
    }

    public static func claim(from bytes: [UInt8]) throws(Malformed) -> Claim {
        guard bytes.count == claimSize, Array(bytes.prefix(4)) == claimMagic, bytes[6] <= 1, bytes[7] == 0 else {
            throw Malformed(description: "not a spare-link claim: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        let port = UInt16(bytes[4]) << 8 | UInt16(bytes[5])
        guard port != 0 else { throw Malformed(description: "a spare-link claim for port 0") }
        return Claim(port: port, answered: bytes[6] == 1, successor: try decode(bytes[8...], "spare-link claim"))
    }

    public static func answer(_ answer: Answer) -> [UInt8] { answerMagic + [answer.rawValue, 0, 0, 0] }

    public static func answer(from bytes: [UInt8]) throws(Malformed) -> Answer {
        guard bytes.count == answerSize, Array(bytes.prefix(4)) == answerMagic, bytes[5...].allSatisfy({ $0 == 0 }),
            let answer = Answer(rawValue: bytes[4])
        else {
            throw Malformed(description: "not an answer to a spare-link claim: \(bytes.count) bytes starting \(bytes.prefix(4))")
        }
        return answer
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
