extension STUNMessage {
    /// The message on the wire: header, attributes each padded with zeros to a multiple of 4 bytes, and a freshly
    /// computed FINGERPRINT last when ``includesFingerprint`` is set.
    ///
    /// SOFTWARE texts and ERROR-CODE reasons longer than 763 bytes are cut (at a character boundary), and error codes
    /// are clamped to 300–699, so every message built from the typed cases encodes. An ``STUNAttribute/unknown(type:
    /// value:)`` value longer than 65,535 bytes, or attributes adding up to more than 65,535 bytes, cannot be
    /// expressed in STUN's 16-bit lengths: that is a programming error and traps.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        out.appendBigEndian(type.rawValue)
        out.appendBigEndian(UInt16(0))  // length, patched below
        out.appendBigEndian(cookie)
        out.append(contentsOf: transactionID.bytes)
        for attribute in attributes {
            Self.append(attribute.type, value: encodedValue(of: attribute), to: &out)
        }
        if includesFingerprint {
            Self.patchLength(of: &out, to: out.count - Self.headerLength + 8)
            let fingerprint = Self.fingerprint(of: out)
            var value: [UInt8] = []
            value.appendBigEndian(fingerprint)
            Self.append(.fingerprint, value: value, to: &out)
        }
        Self.patchLength(of: &out, to: out.count - Self.headerLength)
        return out
    }

    private func encodedValue(of attribute: STUNAttribute) -> [UInt8] {
        switch attribute {
        case .mappedAddress(let endpoint):
            return Self.encodeAddress(endpoint, xor: nil)
        case .xorMappedAddress(let endpoint):
            return Self.encodeAddress(endpoint, xor: transactionID)
        case .software(let text):
            return Self.utf8(text, limit: 763)
        case .errorCode(let error):
            let code = min(max(error.code, 300), 699)
            return [0, 0, UInt8(code / 100), UInt8(code % 100)] + Self.utf8(error.reason, limit: 763)
        case .unknownAttributes(let types):
            var value: [UInt8] = []
            for type in types { value.appendBigEndian(type.rawValue) }
            return value
        case .changeRequest(let changeIP, let changePort):
            return [0, 0, 0, (changeIP ? 0x04 : 0) | (changePort ? 0x02 : 0)]
        case .messageIntegrity(let hmac):
            return hmac
        case .unknown(_, let value):
            return value
        }
    }

    private static func append(_ type: STUNAttributeType, value: [UInt8], to out: inout [UInt8]) {
        precondition(value.count <= 0xFFFF, "STUN attribute \(type) has \(value.count) bytes, more than 65535")
        out.appendBigEndian(type.rawValue)
        out.appendBigEndian(UInt16(value.count))
        out.append(contentsOf: value)
        out.append(contentsOf: repeatElement(0, count: (4 - value.count % 4) % 4))
    }

    private static func patchLength(of out: inout [UInt8], to length: Int) {
        precondition(length <= 0xFFFF, "STUN message attributes add up to \(length) bytes, more than 65535")
        out[2] = UInt8(truncatingIfNeeded: length >> 8)
        out[3] = UInt8(truncatingIfNeeded: length)
    }

    private static func encodeAddress(_ endpoint: Endpoint, xor transactionID: STUNTransactionID?) -> [UInt8] {
        var port = endpoint.port
        var address = endpoint.host.bytes
        if let transactionID {
            port ^= UInt16(truncatingIfNeeded: magicCookie >> 16)
            let mask = xorMask(transactionID)
            for index in address.indices { address[index] ^= mask[index] }
        }
        let family: UInt8
        switch endpoint.host {
        case .v4: family = 0x01
        case .v6: family = 0x02
        }
        return [0, family, UInt8(truncatingIfNeeded: port >> 8), UInt8(truncatingIfNeeded: port)] + address
    }

    /// UTF-8 bytes of `text`, cut at a character boundary to at most `limit` bytes.
    private static func utf8(_ text: String, limit: Int) -> [UInt8] {
        guard text.utf8.count > limit else { return Array(text.utf8) }
        var result: [UInt8] = []
        for character in text {
            let bytes = Array(character.utf8)
            if result.count + bytes.count > limit { break }
            result.append(contentsOf: bytes)
        }
        return result
    }
}
