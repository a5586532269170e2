/// A STUN message (RFC 8489, compatible with RFC 5389): a 20-byte header and a list of attributes.
///
/// This is a pure value type: parse one with ``init(parsing:maximumLength:allowingClassicRFC3489:)`` (throws a
/// ``STUNParseError`` saying what is wrong, never traps), build one with ``init(type:transactionID:attributes:
/// includesFingerprint:)`` and encode it with ``encoded()``. Over TCP, ``frameLength(ofPrefix:maximumLength:
/// allowingClassicRFC3489:)`` tells how many bytes of the stream the next message needs.
///
/// FINGERPRINT is not kept in ``attributes``: a parsed message with a valid FINGERPRINT has ``includesFingerprint``
/// set (a wrong one is a parse error), and encoding appends a freshly computed FINGERPRINT when it is set.
public struct STUNMessage: Hashable, Sendable {
    /// The fixed magic cookie of RFC 5389 and later, `0x2112A442`.
    public static let magicCookie: UInt32 = 0x2112_A442
    /// Size of the fixed header in bytes.
    public static let headerLength = 20
    /// The default upper bound on a whole message (header included) that parsing and framing accept.
    ///
    /// Requests a reflector answers are a few dozen bytes; anything near this is abuse, not STUN.
    public static let defaultMaximumLength = 2048

    /// Message class and method.
    public var type: STUNMessageType
    /// The 96-bit transaction id that pairs a response with its request.
    public var transactionID: STUNTransactionID
    /// The second header word: ``magicCookie`` for RFC 5389+ peers; for a classic RFC 3489 peer (parsed with
    /// `allowingClassicRFC3489: true`) the first 32 bits of its 128-bit transaction id, to be echoed back.
    public var cookie: UInt32
    /// The attributes in wire order, FINGERPRINT excluded. Unknown comprehension-optional attributes
    /// (type 0x8000–0xFFFF) are skipped when parsing; unknown comprehension-required ones are kept as
    /// ``STUNAttribute/unknown(type:value:)`` so that a server can answer 420 (Unknown Attribute).
    public var attributes: [STUNAttribute]
    /// Whether the message carries (parsed) or shall carry (encoded) a FINGERPRINT as its last attribute.
    public var includesFingerprint: Bool

    /// A message with the standard magic cookie.
    public init(
        type: STUNMessageType,
        transactionID: STUNTransactionID,
        attributes: [STUNAttribute] = [],
        includesFingerprint: Bool = false
    ) {
        self.type = type
        self.transactionID = transactionID
        self.cookie = Self.magicCookie
        self.attributes = attributes
        self.includesFingerprint = includesFingerprint
    }

    /// Whether this message came from (or goes to) a classic RFC 3489 peer: its cookie word is not the magic cookie.
    /// Such peers understand MAPPED-ADDRESS but not XOR-MAPPED-ADDRESS.
    public var isClassicRFC3489: Bool { cookie != Self.magicCookie }

    /// A Binding request with a random transaction id.
    public static func bindingRequest(
        transactionID: STUNTransactionID = .random(),
        software: String? = nil,
        includesFingerprint: Bool = false
    ) -> STUNMessage {
        STUNMessage(
            type: .bindingRequest,
            transactionID: transactionID,
            attributes: software.map { [.software($0)] } ?? [],
            includesFingerprint: includesFingerprint
        )
    }
}

/// The STUN message class (two bits spread over the message type).
public enum STUNMessageClass: UInt8, Hashable, Sendable, CustomStringConvertible {
    case request = 0b00
    case indication = 0b01
    case successResponse = 0b10
    case errorResponse = 0b11

    public var description: String {
        switch self {
        case .request: "request"
        case .indication: "indication"
        case .successResponse: "success response"
        case .errorResponse: "error response"
        }
    }
}

/// A STUN method: a 12-bit number (Binding is 0x001).
public struct STUNMethod: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The 12-bit method number.
    public var rawValue: UInt16

    /// A method from its number; only the low 12 bits are used.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue & 0x0FFF
    }

    /// Binding (RFC 8489), the only method boxer-mesh uses.
    public static let binding = STUNMethod(rawValue: 0x001)

    public var description: String {
        self == .binding ? "Binding" : "method 0x" + String(rawValue, radix: 16)
    }
}

/// A STUN message type: method and class, packed into 14 bits as RFC 8489 §5 describes.
public struct STUNMessageType: Hashable, Sendable, CustomStringConvertible {
    /// The method.
    public var method: STUNMethod
    /// The class.
    public var messageClass: STUNMessageClass

    /// A type from method and class.
    public init(method: STUNMethod, messageClass: STUNMessageClass) {
        self.method = method
        self.messageClass = messageClass
    }

    /// The type from its 16-bit wire value; `nil` if either of the two most significant bits is set.
    public init?(rawValue: UInt16) {
        guard rawValue & 0xC000 == 0 else { return nil }
        let m = rawValue & 0x000F | (rawValue & 0x00E0) >> 1 | (rawValue & 0x3E00) >> 2
        let c = UInt8(truncatingIfNeeded: (rawValue & 0x0010) >> 4 | (rawValue & 0x0100) >> 7)
        self.method = STUNMethod(rawValue: m)
        self.messageClass = STUNMessageClass(rawValue: c)!  // two bits always name a class
    }

    /// The 16-bit wire value: `M11..M7 C1 M6..M4 C0 M3..M0`, top two bits zero.
    public var rawValue: UInt16 {
        let m = method.rawValue
        let c = UInt16(messageClass.rawValue)
        return m & 0x000F | (m & 0x0070) << 1 | (m & 0x0F80) << 2 | (c & 0b01) << 4 | (c & 0b10) << 7
    }

    /// Binding request, `0x0001`.
    public static let bindingRequest = STUNMessageType(method: .binding, messageClass: .request)
    /// Binding success response, `0x0101`.
    public static let bindingSuccess = STUNMessageType(method: .binding, messageClass: .successResponse)
    /// Binding error response, `0x0111`.
    public static let bindingError = STUNMessageType(method: .binding, messageClass: .errorResponse)

    public var description: String { "\(method) \(messageClass)" }
}

/// A 96-bit STUN transaction id.
public struct STUNTransactionID: Hashable, Sendable, CustomStringConvertible {
    /// The first 32 bits.
    public var high: UInt32
    /// The last 64 bits.
    public var low: UInt64

    /// An id from its two parts.
    public init(high: UInt32, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// An id from exactly 12 bytes; `nil` for any other count.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 12 else { return nil }
        var high: UInt32 = 0
        var low: UInt64 = 0
        for (index, byte) in bytes.enumerated() {
            if index < 4 { high = high << 8 | UInt32(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    /// A fresh random id (from the system random number generator, as RFC 8489 asks).
    public static func random() -> STUNTransactionID {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    /// A random id from the given generator.
    public static func random(using generator: inout some RandomNumberGenerator) -> STUNTransactionID {
        STUNTransactionID(high: UInt32.random(in: .min ... .max, using: &generator), low: generator.next())
    }

    /// The 12 bytes in network order.
    public var bytes: [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(12)
        result.appendBigEndian(high)
        result.appendBigEndian(low)
        return result
    }

    /// 24 lower-case hex digits.
    public var description: String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        var big = value.bigEndian
        Swift.withUnsafeBytes(of: &big) { append(contentsOf: $0) }
    }
}
