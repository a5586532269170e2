/// A STUN attribute type number. Types 0x0000–0x7FFF are comprehension-required, 0x8000–0xFFFF optional.
public struct STUNAttributeType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The 16-bit wire value.
    public var rawValue: UInt16

    /// A type from its wire value.
    public init(rawValue: UInt16) {
        self.rawValue = rawValue
    }

    /// MAPPED-ADDRESS (0x0001): the reflexive address in the clear; read by RFC 3489 clients.
    public static let mappedAddress = STUNAttributeType(rawValue: 0x0001)
    /// CHANGE-REQUEST (0x0003, RFC 5780 / RFC 3489): ask the server to answer from another address or port.
    public static let changeRequest = STUNAttributeType(rawValue: 0x0003)
    /// MESSAGE-INTEGRITY (0x0008): HMAC-SHA1, 20 bytes. Kept but not verified by this codec.
    public static let messageIntegrity = STUNAttributeType(rawValue: 0x0008)
    /// ERROR-CODE (0x0009).
    public static let errorCode = STUNAttributeType(rawValue: 0x0009)
    /// UNKNOWN-ATTRIBUTES (0x000A): the attribute types a 420 error response did not understand.
    public static let unknownAttributes = STUNAttributeType(rawValue: 0x000A)
    /// XOR-MAPPED-ADDRESS (0x0020): the reflexive address, XOR-ed with the cookie (and transaction id for IPv6).
    public static let xorMappedAddress = STUNAttributeType(rawValue: 0x0020)
    /// SOFTWARE (0x8022): a free-text description of the agent.
    public static let software = STUNAttributeType(rawValue: 0x8022)
    /// FINGERPRINT (0x8028): CRC-32 of the message so far, XOR 0x5354554E. Must be the last attribute.
    public static let fingerprint = STUNAttributeType(rawValue: 0x8028)

    /// Whether an agent that does not know this type must reject the message (types below 0x8000).
    public var isComprehensionRequired: Bool { rawValue < 0x8000 }

    public var description: String {
        switch self {
        case .mappedAddress: "MAPPED-ADDRESS"
        case .changeRequest: "CHANGE-REQUEST"
        case .messageIntegrity: "MESSAGE-INTEGRITY"
        case .errorCode: "ERROR-CODE"
        case .unknownAttributes: "UNKNOWN-ATTRIBUTES"
        case .xorMappedAddress: "XOR-MAPPED-ADDRESS"
        case .software: "SOFTWARE"
        case .fingerprint: "FINGERPRINT"
        default: "attribute 0x" + String(rawValue, radix: 16, uppercase: true)
        }
    }
}

/// One STUN attribute, decoded.
public enum STUNAttribute: Hashable, Sendable {
    /// MAPPED-ADDRESS: the reflexive transport address, in the clear.
    case mappedAddress(Endpoint)
    /// XOR-MAPPED-ADDRESS: the reflexive transport address (the XOR is undone when parsing and redone when encoding).
    case xorMappedAddress(Endpoint)
    /// SOFTWARE: at most 763 bytes of UTF-8 (RFC 8489 allows fewer than 128 characters).
    case software(String)
    /// ERROR-CODE: a code 300–699 and a reason phrase.
    case errorCode(STUNErrorCode)
    /// UNKNOWN-ATTRIBUTES: the types the responder did not understand.
    case unknownAttributes([STUNAttributeType])
    /// CHANGE-REQUEST: flags asking the server to answer from another IP and/or port.
    case changeRequest(changeIP: Bool, changePort: Bool)
    /// MESSAGE-INTEGRITY: the 20-byte HMAC, carried but not checked.
    case messageIntegrity([UInt8])
    /// An attribute this codec does not interpret. Parsing keeps only comprehension-required ones (types below
    /// 0x8000); comprehension-optional unknown attributes are skipped.
    case unknown(type: STUNAttributeType, value: [UInt8])

    /// The attribute's type number.
    public var type: STUNAttributeType {
        switch self {
        case .mappedAddress: .mappedAddress
        case .xorMappedAddress: .xorMappedAddress
        case .software: .software
        case .errorCode: .errorCode
        case .unknownAttributes: .unknownAttributes
        case .changeRequest: .changeRequest
        case .messageIntegrity: .messageIntegrity
        case .unknown(let type, _): type
        }
    }
}

/// The value of an ERROR-CODE attribute.
public struct STUNErrorCode: Hashable, Sendable, CustomStringConvertible {
    /// The code, 300–699 (e.g. 400 Bad Request, 420 Unknown Attribute).
    public var code: Int
    /// The reason phrase, at most 763 bytes of UTF-8.
    public var reason: String

    /// An error code; `code` must be 300–699 to be encodable (it is clamped into that range when encoding).
    public init(code: Int, reason: String) {
        self.code = code
        self.reason = reason
    }

    /// 400 Bad Request.
    public static let badRequest = STUNErrorCode(code: 400, reason: "Bad Request")
    /// 420 Unknown Attribute.
    public static let unknownAttribute = STUNErrorCode(code: 420, reason: "Unknown Attribute")

    public var description: String { "\(code) \(reason)" }
}

extension STUNMessage {
    /// The first attribute of the given type, if any.
    public func attribute(_ type: STUNAttributeType) -> STUNAttribute? {
        attributes.first { $0.type == type }
    }

    /// The reflexive address: XOR-MAPPED-ADDRESS if present, else MAPPED-ADDRESS (what an RFC 3489 server sends).
    public var mappedEndpoint: Endpoint? {
        var plain: Endpoint?
        for attribute in attributes {
            switch attribute {
            case .xorMappedAddress(let endpoint): return endpoint
            case .mappedAddress(let endpoint): if plain == nil { plain = endpoint }
            default: continue
            }
        }
        return plain
    }

    /// The SOFTWARE text, if present.
    public var software: String? {
        if case .software(let text) = attribute(.software) { return text }
        return nil
    }

    /// The ERROR-CODE, if present.
    public var errorCode: STUNErrorCode? {
        if case .errorCode(let code) = attribute(.errorCode) { return code }
        return nil
    }

    /// The comprehension-required attribute types this codec did not understand, in order and without repeats.
    /// A server answers a request that has any with a 420 error listing them.
    public var unknownComprehensionRequiredTypes: [STUNAttributeType] {
        var seen: [STUNAttributeType] = []
        for case .unknown(let type, _) in attributes where type.isComprehensionRequired && !seen.contains(type) {
            seen.append(type)
        }
        return seen
    }
}
