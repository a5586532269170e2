extension STUNMessage {
    /// Parses exactly one STUN message: `bytes` must hold the whole message and nothing after it.
    ///
    /// Never traps: any input that is not a well-formed message throws a ``STUNParseError`` saying what is wrong
    /// (truncated, not STUN, wrong length, too long, wrong cookie, malformed attribute, wrong FINGERPRINT).
    ///
    /// - Parameters:
    ///   - bytes: The message, e.g. one UDP datagram or one frame cut from a TCP stream with
    ///     ``frameLength(ofPrefix:maximumLength:allowingClassicRFC3489:)``.
    ///   - maximumLength: Messages larger than this (header included) are rejected as ``STUNParseError/Code/tooLong``.
    ///   - allowingClassicRFC3489: Accept a header whose cookie word is not the magic cookie, as RFC 3489 clients
    ///     send (their transaction id is 128 bits); the word is kept in ``cookie`` so that a reply can echo it.
    public init(
        parsing bytes: some Collection<UInt8>,
        maximumLength: Int = STUNMessage.defaultMaximumLength,
        allowingClassicRFC3489: Bool = false
    ) throws {
        let bytes = Array(bytes)
        guard bytes.count >= Self.headerLength else {
            throw STUNParseError(.truncated, "header needs \(Self.headerLength) bytes, got \(bytes.count)")
        }
        let total = try Self.checkHeader(bytes, maximumLength: maximumLength, allowingClassic: allowingClassicRFC3489)
        guard bytes.count >= total else {
            throw STUNParseError(
                .truncated,
                "header announces \(total - Self.headerLength) bytes of attributes but only "
                    + "\(bytes.count - Self.headerLength) follow"
            )
        }
        guard bytes.count == total else {
            throw STUNParseError(
                .badLength,
                "header announces \(total) bytes in all but \(bytes.count) were given (\(bytes.count - total) extra)",
                offset: total
            )
        }
        let reader = ByteReader(bytes: bytes)
        let type = STUNMessageType(rawValue: reader.uint16(at: 0))!  // checkHeader verified the top two bits
        let cookie = reader.uint32(at: 4)
        let transactionID = STUNTransactionID(bytes: bytes[8..<20])!  // 12 bytes by construction
        self.init(type: type, transactionID: transactionID)
        self.cookie = cookie
        try parseAttributes(reader, end: total)
    }

    /// How many bytes the STUN message at the start of a TCP byte stream occupies (header included), for framing.
    ///
    /// Checks whatever part of the header is already there: the two zero bits (from 1 byte on), the length
    /// (multiple of 4, within `maximumLength`, from 4 bytes on) and the magic cookie (from 8 bytes on), and throws a
    /// ``STUNParseError`` as soon as the stream cannot be STUN, so a reader can drop the connection early.
    ///
    /// - Returns: The whole message's size once the 20-byte header is present; `nil` while fewer than 20 bytes
    ///   have arrived. Read until the buffer holds that many bytes, then parse exactly those with
    ///   ``init(parsing:maximumLength:allowingClassicRFC3489:)``.
    public static func frameLength(
        ofPrefix prefix: some Collection<UInt8>,
        maximumLength: Int = STUNMessage.defaultMaximumLength,
        allowingClassicRFC3489: Bool = false
    ) throws -> Int? {
        let head = Array(prefix.prefix(headerLength))
        let total = try checkHeader(head, maximumLength: maximumLength, allowingClassic: allowingClassicRFC3489)
        return head.count < headerLength ? nil : total
    }

    /// Validates the header fields present in `bytes` (which may be fewer than 20 bytes; only complete fields are
    /// checked) and returns the announced total size (20 while the length field is missing).
    private static func checkHeader(_ bytes: [UInt8], maximumLength: Int, allowingClassic: Bool) throws -> Int {
        let reader = ByteReader(bytes: bytes)
        if let first = bytes.first, first & 0xC0 != 0 {
            throw STUNParseError(
                .notSTUN,
                "first byte 0x\(hexDigits(first)) has its top two bits set; STUN messages start with two zero bits",
                offset: 0
            )
        }
        var total = headerLength
        if bytes.count >= 4 {
            let length = Int(reader.uint16(at: 2))
            guard length % 4 == 0 else {
                throw STUNParseError(.badLength, "length \(length) is not a multiple of 4", offset: 2)
            }
            total += length
            guard total <= maximumLength else {
                throw STUNParseError(
                    .tooLong, "message announces \(total) bytes, more than the maximum of \(maximumLength)", offset: 2)
            }
        }
        if bytes.count >= 8, !allowingClassic {
            let cookie = reader.uint32(at: 4)
            guard cookie == magicCookie else {
                throw STUNParseError(
                    .badCookie,
                    "wrong magic cookie 0x\(hexDigits(cookie)) (expected 0x\(hexDigits(magicCookie)))",
                    offset: 4
                )
            }
        }
        return total
    }

    private mutating func parseAttributes(_ reader: ByteReader, end: Int) throws {
        var offset = Self.headerLength
        var afterIntegrity = false
        while offset < end {
            // `end - offset` is a positive multiple of 4, so the 4-byte attribute header is always there.
            let type = STUNAttributeType(rawValue: reader.uint16(at: offset))
            let length = Int(reader.uint16(at: offset + 2))
            let valueStart = offset + 4
            guard valueStart + length <= end else {
                throw STUNParseError(
                    .badAttribute,
                    "\(type) announces \(length) bytes but only \(end - valueStart) remain in the message",
                    offset: offset
                )
            }
            let value = reader.bytes[valueStart..<(valueStart + length)]
            let next = valueStart + ((length + 3) & ~3)

            if includesFingerprint {
                throw STUNParseError(.badFingerprint, "\(type) follows FINGERPRINT, which must be last", offset: offset)
            }
            if type == .fingerprint {
                guard length == 4 else {
                    throw STUNParseError(.badFingerprint, "FINGERPRINT has \(length) bytes, not 4", offset: offset)
                }
                let received = reader.uint32(at: valueStart)
                let computed = Self.fingerprint(of: reader.bytes[0..<offset])
                guard received == computed else {
                    throw STUNParseError(
                        .badFingerprint,
                        "FINGERPRINT 0x\(hexDigits(received)) does not match the computed 0x\(hexDigits(computed))",
                        offset: offset
                    )
                }
                includesFingerprint = true
            } else if !afterIntegrity {
                // RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY (but FINGERPRINT) are ignored.
                if let attribute = try Self.decodeAttribute(type, value, transactionID: transactionID, at: offset) {
                    attributes.append(attribute)
                    if type == .messageIntegrity { afterIntegrity = true }
                }
            }
            offset = next
        }
    }

    /// Decodes one attribute value; `nil` for an unknown comprehension-optional type, which is skipped.
    private static func decodeAttribute(
        _ type: STUNAttributeType,
        _ value: ArraySlice<UInt8>,
        transactionID: STUNTransactionID,
        at offset: Int
    ) throws -> STUNAttribute? {
        func bad(_ detail: String) -> STUNParseError {
            STUNParseError(.badAttribute, "\(type) \(detail)", offset: offset)
        }
        let value = Array(value)
        switch type {
        case .mappedAddress:
            return .mappedAddress(try decodeAddress(value, xor: nil, bad: bad))
        case .xorMappedAddress:
            return .xorMappedAddress(try decodeAddress(value, xor: transactionID, bad: bad))
        case .software:
            guard value.count <= 763 else { throw bad("has \(value.count) bytes, more than 763") }
            return .software(String(decoding: value, as: UTF8.self))
        case .errorCode:
            guard value.count >= 4 else { throw bad("has \(value.count) bytes, needs at least 4") }
            guard value.count <= 4 + 763 else { throw bad("reason phrase has \(value.count - 4) bytes, more than 763") }
            let errorClass = Int(value[2] & 0x07)
            let number = Int(value[3])
            guard (3...6).contains(errorClass), number < 100 else {
                throw bad("has class \(errorClass) and number \(number); needs class 3–6 and number 0–99")
            }
            let reason = String(decoding: value[4...], as: UTF8.self)
            return .errorCode(STUNErrorCode(code: errorClass * 100 + number, reason: reason))
        case .unknownAttributes:
            guard value.count % 2 == 0 else { throw bad("has \(value.count) bytes, not a multiple of 2") }
            let types = stride(from: 0, to: value.count, by: 2).map {
                STUNAttributeType(rawValue: UInt16(value[$0]) << 8 | UInt16(value[$0 + 1]))
            }
            return .unknownAttributes(types)
        case .changeRequest:
            guard value.count == 4 else { throw bad("has \(value.count) bytes, not 4") }
            return .changeRequest(changeIP: value[3] & 0x04 != 0, changePort: value[3] & 0x02 != 0)
        case .messageIntegrity:
            guard value.count == 20 else { throw bad("has \(value.count) bytes, not 20") }
            return .messageIntegrity(value)
        default:
            return type.isComprehensionRequired ? .unknown(type: type, value: value) : nil
        }
    }

    /// Decodes MAPPED-ADDRESS (`xor == nil`) or XOR-MAPPED-ADDRESS (XOR with the cookie and this transaction id).
    private static func decodeAddress(
        _ value: [UInt8],
        xor transactionID: STUNTransactionID?,
        bad: (String) -> STUNParseError
    ) throws -> Endpoint {
        guard value.count >= 4 else { throw bad("has \(value.count) bytes, needs at least 8") }
        let family = value[1]
        var port = UInt16(value[2]) << 8 | UInt16(value[3])
        var address = Array(value[4...])
        switch family {
        case 0x01:
            guard address.count == 4 else { throw bad("for IPv4 has \(value.count) bytes, not 8") }
        case 0x02:
            guard address.count == 16 else { throw bad("for IPv6 has \(value.count) bytes, not 20") }
        default:
            throw bad("has unknown address family 0x\(hexDigits(family)) (1 is IPv4, 2 is IPv6)")
        }
        if let transactionID {
            port ^= UInt16(truncatingIfNeeded: magicCookie >> 16)
            let mask = xorMask(transactionID)
            for index in address.indices { address[index] ^= mask[index] }
        }
        if family == 0x01 {
            return Endpoint(IPv4Address(bytes: address)!, port: port)
        } else {
            return Endpoint(IPv6Address(bytes: address)!, port: port)
        }
    }

    /// The 16 bytes an XOR-MAPPED-ADDRESS address is XOR-ed with: magic cookie then transaction id.
    static func xorMask(_ transactionID: STUNTransactionID) -> [UInt8] {
        var mask: [UInt8] = []
        mask.appendBigEndian(magicCookie)
        mask.append(contentsOf: transactionID.bytes)
        return mask
    }
}

/// Big-endian reads from an array; callers check bounds first.
struct ByteReader {
    let bytes: [UInt8]

    func uint16(at offset: Int) -> UInt16 {
        UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    func uint32(at offset: Int) -> UInt32 {
        UInt32(uint16(at: offset)) << 16 | UInt32(uint16(at: offset + 2))
    }
}

/// Upper-case hex with a fixed number of digits for the type's width.
func hexDigits<T: FixedWidthInteger>(_ value: T) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, T.bitWidth / 4 - digits.count)) + digits
}
