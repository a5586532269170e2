/// A DNS query as the node's responder reads it (RFC 1035 §4.1): a standard query with one question, and the
/// answers the responder gives to it. Everything else in the message (EDNS records, say) is not needed to answer.
public struct DNSQuery: Equatable, Sendable {
    /// Record types the responder knows by name.
    public static let typeA: UInt16 = 1
    public static let typeAAAA: UInt16 = 28
    public static let typeANY: UInt16 = 255
    public static let classIN: UInt16 = 1

    /// Response codes.
    public enum Outcome: UInt16, Sendable {
        case noError = 0
        case serverFailure = 2
        case nameError = 3
    }

    public let id: UInt16
    /// Whether the client asked for recursion (echoed in the answer).
    public let recursionDesired: Bool
    /// The name asked for, lowercased, without the final dot ("" for the root).
    public let name: String
    public let type: UInt16
    public let queryClass: UInt16
    /// The question as it came, for the answer's question section.
    private let question: [UInt8]

    /// Reads a query. Throws for anything that is no standard query with exactly one well-formed question.
    public init(parsing bytes: [UInt8]) throws(DNSQueryError) {
        guard bytes.count >= 12 else { throw DNSQueryError("\(bytes.count) bytes: shorter than a DNS header") }
        let flags = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        guard flags & 0x8000 == 0 else { throw DNSQueryError("a response, not a query") }
        guard flags & 0x7800 == 0 else { throw DNSQueryError("opcode \((flags >> 11) & 0xF), not a standard query") }
        let questions = UInt16(bytes[4]) << 8 | UInt16(bytes[5])
        guard questions == 1 else { throw DNSQueryError("\(questions) questions (one expected)") }
        var labels: [String] = []
        var offset = 12
        var nameLength = 0
        while true {
            guard offset < bytes.count else { throw DNSQueryError("the question's name runs past the message") }
            let length = Int(bytes[offset])
            guard length & 0xC0 == 0 else { throw DNSQueryError("a compressed or extended label in the question") }
            offset += 1
            if length == 0 { break }
            nameLength += length + 1
            guard nameLength <= 255 else { throw DNSQueryError("the question's name is longer than 255 bytes") }
            guard offset + length <= bytes.count else { throw DNSQueryError("the question's name runs past the message") }
            labels.append(String(decoding: bytes[offset..<offset + length], as: UTF8.self).lowercased())
            offset += length
        }
        guard offset + 4 <= bytes.count else { throw DNSQueryError("the question has no type and class") }
        id = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        recursionDesired = flags & 0x0100 != 0
        name = labels.joined(separator: ".")
        type = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        queryClass = UInt16(bytes[offset + 2]) << 8 | UInt16(bytes[offset + 3])
        question = Array(bytes[12..<offset + 4])
    }

    /// The answer: `addresses` as A records with `ttl` seconds (authoritative), or none with `outcome`.
    public func answer(_ outcome: Outcome = .noError, addresses: [IPv4Address] = [], ttl: UInt32 = 0) -> [UInt8] {
        var flags: UInt16 = 0x8000 | 0x0400 | 0x0080 | outcome.rawValue  // response, authoritative, recursion available
        if recursionDesired { flags |= 0x0100 }
        var message: [UInt8] = []
        message.reserveCapacity(12 + question.count + 16 * addresses.count)
        for field in [id, flags, 1, UInt16(addresses.count), 0, 0] { message += [UInt8(field >> 8), UInt8(field & 0xFF)] }
        message += question
        for address in addresses {
            message += [0xC0, 12]  // the name: a pointer to the question's
            for field in [Self.typeA, Self.classIN, UInt16(ttl >> 16), UInt16(ttl & 0xFFFF), 4] {
                message += [UInt8(field >> 8), UInt8(field & 0xFF)]
            }
            message += withUnsafeBytes(of: address.value.bigEndian) { Array($0) }
        }
        return message
    }
}

/// Bytes that are not a DNS query the responder can answer; the description says what was wrong.
public struct DNSQueryError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = "DNS query rejected: " + description }
}
