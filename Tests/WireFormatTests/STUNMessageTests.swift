import Testing

@testable import WireFormat

/// Bytes from a hex dump that may contain spaces and newlines.
private func hexBytes(_ text: String) -> [UInt8] {
    let digits = text.filter(\.isHexDigit)
    var result: [UInt8] = []
    var index = digits.startIndex
    while index < digits.endIndex {
        let next = digits.index(index, offsetBy: 2)
        result.append(UInt8(digits[index..<next], radix: 16)!)
        index = next
    }
    return result
}

/// Deterministic generator so that a fuzz failure can be reproduced (SplitMix64).
private struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("STUN message codec")
struct STUNMessageTests {
    // RFC 5769 §2.1–§2.3 test vectors.
    static let sampleRequest = hexBytes(
        """
        00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff
        80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
        00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf
        """)
    static let sampleIPv4Response = hexBytes(
        """
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 08 00 01 a1 47 e1 12 a6 43
        00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
        80 28 00 04 c0 7d 4c 96
        """)
    static let sampleIPv6Response = hexBytes(
        """
        01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
        00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
        80 28 00 04 c8 fb 0b 4c
        """)
    static let sampleTransactionID = STUNTransactionID(bytes: hexBytes("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae"))!
    /// A request captured from Debian's `stun` 0.97 (RFC 3489: no magic cookie, CHANGE-REQUEST with no flags).
    static let classicRequest = hexBytes("000100080143805eeb633a6543340a4de0ff4e650003000400000000")

    @Test("RFC 5769 IPv4 response: XOR-MAPPED-ADDRESS 192.0.2.1:32853, FINGERPRINT valid")
    func rfc5769IPv4Response() throws {
        let message = try STUNMessage(parsing: Self.sampleIPv4Response)
        #expect(message.type == .bindingSuccess)
        #expect(message.transactionID == Self.sampleTransactionID)
        #expect(message.includesFingerprint)
        #expect(message.software == "test vector")
        #expect(message.mappedEndpoint == Endpoint(IPv4Address(192, 0, 2, 1), port: 32853))
        #expect(message.mappedEndpoint?.description == "192.0.2.1:32853")
        #expect(message.attribute(.messageIntegrity) != nil)
        #expect(message.unknownComprehensionRequiredTypes.isEmpty)
    }

    @Test("RFC 5769 IPv6 response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853")
    func rfc5769IPv6Response() throws {
        let message = try STUNMessage(parsing: Self.sampleIPv6Response)
        #expect(message.type == .bindingSuccess)
        #expect(message.transactionID == Self.sampleTransactionID)
        #expect(message.includesFingerprint)
        let expected = Endpoint(IPv6Address("2001:db8:1234:5678:11:2233:4455:6677")!, port: 32853)
        #expect(message.mappedEndpoint == expected)
        #expect(message.mappedEndpoint?.description == "[2001:db8:1234:5678:11:2233:4455:6677]:32853")
    }

    @Test("RFC 5769 request: unknown optional attributes skipped, unknown required ones reported")
    func rfc5769Request() throws {
        let message = try STUNMessage(parsing: Self.sampleRequest)
        #expect(message.type == .bindingRequest)
        #expect(message.software == "STUN test client")
        #expect(message.includesFingerprint)
        // PRIORITY (0x0024) and USERNAME (0x0006) are comprehension-required; ICE-CONTROLLED (0x8029) is skipped.
        #expect(message.unknownComprehensionRequiredTypes.map(\.rawValue) == [0x0024, 0x0006])
        #expect(!message.attributes.contains { $0.type.rawValue == 0x8029 })
    }

    @Test("a FINGERPRINT that does not match is rejected", arguments: [20, 30, 45, 70, 79])
    func corruptedFingerprint(flippedByte: Int) {
        var bytes = Self.sampleIPv4Response
        bytes[flippedByte] ^= 0x01
        let error = #expect(throws: STUNParseError.self) { try STUNMessage(parsing: bytes) }
        #expect(error?.code == .badFingerprint)
    }

    @Test("CRC-32 check value")
    func crc32CheckValue() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    @Test("encoding reproduces the RFC 5769 IPv4 response up to its padding byte and FINGERPRINT")
    func encodingMatchesRFC5769() throws {
        let sample = Self.sampleIPv4Response
        var message = STUNMessage(
            type: .bindingSuccess,
            transactionID: Self.sampleTransactionID,
            attributes: [
                .software("test vector"),
                .xorMappedAddress(Endpoint(IPv4Address(192, 0, 2, 1), port: 32853)),
                .messageIntegrity(Array(sample[52..<72])),
            ],
            includesFingerprint: true
        )
        let encoded = message.encoded()
        var expected = Array(sample[0..<72])
        expected[35] = 0  // the RFC pads SOFTWARE with a space; this codec pads with zero
        #expect(encoded.count == sample.count)
        #expect(Array(encoded[0..<72]) == expected)
        // And it parses back to the same value.
        #expect(try STUNMessage(parsing: encoded) == message)
        message.includesFingerprint = false
        #expect(message.encoded().count == sample.count - 8)
    }

    @Test("message type packs method and class as RFC 8489 §5 says")
    func messageTypePacking() throws {
        #expect(STUNMessageType.bindingRequest.rawValue == 0x0001)
        #expect(STUNMessageType.bindingSuccess.rawValue == 0x0101)
        #expect(STUNMessageType.bindingError.rawValue == 0x0111)
        #expect(STUNMessageType(method: .binding, messageClass: .indication).rawValue == 0x0011)
        #expect(STUNMessageType(method: STUNMethod(rawValue: 0xFFF), messageClass: .request).rawValue == 0x3EEF)
        for raw in UInt16(0)...0x3FFF {
            let type = try #require(STUNMessageType(rawValue: raw))
            #expect(type.rawValue == raw)
        }
        #expect(STUNMessageType(rawValue: 0x4001) == nil)
        #expect(STUNMessageType(rawValue: 0x8001) == nil)
    }

    @Test("round trip of every attribute kind, IPv4 and IPv6, with and without FINGERPRINT")
    func roundTrip() throws {
        var generator = SeededGenerator(state: 1)
        let v6 = try #require(IPv6Address("2001:db8::ff00:42:8329"))
        for fingerprint in [false, true] {
            let message = STUNMessage(
                type: .bindingError,
                transactionID: .random(using: &generator),
                attributes: [
                    .xorMappedAddress(Endpoint(IPv4Address(203, 0, 113, 7), port: 1)),
                    .xorMappedAddress(Endpoint(v6, port: 65535)),
                    .mappedAddress(Endpoint(IPv4Address.loopback, port: 3478)),
                    .mappedAddress(Endpoint(IPv6Address.loopback, port: 0)),
                    .software("boxer-mesh ✓"),
                    .errorCode(STUNErrorCode(code: 420, reason: "Unknown Attribute")),
                    .unknownAttributes([STUNAttributeType(rawValue: 0x0024), .changeRequest, .messageIntegrity]),
                    .changeRequest(changeIP: true, changePort: false),
                    .unknown(type: STUNAttributeType(rawValue: 0x0024), value: [1, 2, 3]),
                    .unknown(type: STUNAttributeType(rawValue: 0x7FFF), value: []),
                ],
                includesFingerprint: fingerprint
            )
            let bytes = message.encoded()
            #expect(bytes.count % 4 == 0)
            #expect(Int(bytes[2]) << 8 | Int(bytes[3]) == bytes.count - 20)
            #expect(try STUNMessage(parsing: bytes) == message)
            #expect(try STUNMessage.frameLength(ofPrefix: bytes + [1, 2, 3]) == bytes.count)
        }
        let request = STUNMessage.bindingRequest(software: "x", includesFingerprint: true)
        #expect(try STUNMessage(parsing: request.encoded()) == request)
    }

    @Test("unknown comprehension-optional attributes are skipped")
    func skipsOptionalUnknown() throws {
        let withOptional = STUNMessage(
            type: .bindingRequest, transactionID: Self.sampleTransactionID,
            attributes: [
                .unknown(type: STUNAttributeType(rawValue: 0x8029), value: [9, 9, 9, 9, 9]), .software("a"),
            ])
        let parsed = try STUNMessage(parsing: withOptional.encoded())
        #expect(parsed.attributes == [.software("a")])
    }

    @Test("over-long SOFTWARE and odd error codes are cut to what STUN can carry")
    func encodingLimits() throws {
        let long = String(repeating: "é", count: 500)  // 1000 bytes
        let message = STUNMessage(
            type: .bindingError, transactionID: Self.sampleTransactionID,
            attributes: [.software(long), .errorCode(STUNErrorCode(code: 42, reason: long))])
        let parsed = try STUNMessage(parsing: message.encoded())
        #expect(parsed.software == String(repeating: "é", count: 381))
        #expect(parsed.errorCode?.code == 300)
    }

    @Test("classic RFC 3489 requests: rejected by default, accepted when allowed, cookie kept for the reply")
    func classicRequest() throws {
        let error = #expect(throws: STUNParseError.self) { try STUNMessage(parsing: Self.classicRequest) }
        #expect(error?.code == .badCookie)
        #expect(error?.description.contains("wrong magic cookie 0x0143805E") == true)
        let message = try STUNMessage(parsing: Self.classicRequest, allowingClassicRFC3489: true)
        #expect(message.isClassicRFC3489)
        #expect(message.cookie == 0x0143_805E)
        #expect(message.attributes == [.changeRequest(changeIP: false, changePort: false)])
        // The reply echoes the cookie word, so the 128-bit classic transaction id comes back whole.
        let reply = STUNMessage(
            type: .bindingSuccess, transactionID: message.transactionID,
            attributes: [.mappedAddress(Endpoint(IPv4Address.loopback, port: 40001))])
        var classicReply = reply
        classicReply.cookie = message.cookie
        #expect(Array(classicReply.encoded()[4..<20]) == Array(Self.classicRequest[4..<20]))
    }

    static let malformed: [(name: String, bytes: [UInt8], code: STUNParseError.Code)] = {
        let valid = STUNMessage.bindingRequest(transactionID: sampleTransactionID, software: "abc").encoded()
        func patched(_ changes: [Int: UInt8], _ base: [UInt8] = valid) -> [UInt8] {
            var bytes = base
            for (index, value) in changes { bytes[index] = value }
            return bytes
        }
        let header = Array(valid[0..<20])
        return [
            ("empty", [], .truncated),
            ("19 bytes", Array(valid[0..<19]), .truncated),
            ("announced attributes missing", Array(valid.dropLast(4)), .truncated),
            ("top bits set", patched([0: 0x40]), .notSTUN),
            ("HTTP", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), .notSTUN),
            ("length not a multiple of 4", patched([3: 0x07]), .badLength),
            ("trailing bytes", valid + [0, 0, 0, 0], .badLength),
            ("announces 64 KiB", patched([2: 0xFF, 3: 0xFC], header), .tooLong),
            ("wrong cookie", patched([4: 0x21, 5: 0x12, 6: 0xA4, 7: 0x43]), .badCookie),
            ("attribute overruns message", patched([22: 0x00, 23: 0x09]), .badAttribute),
            (
                "IPv4 address with 6 bytes",
                patched([2: 0, 3: 12], header) + [0x00, 0x01, 0x00, 0x06, 0, 1, 0, 80, 1, 2, 0, 0], .badAttribute
            ),
            (
                "address family 3",
                patched([2: 0, 3: 12], header) + [0x00, 0x20, 0x00, 0x08, 0, 3, 0, 80, 1, 2, 3, 4], .badAttribute
            ),
            (
                "XOR-MAPPED-ADDRESS with 2 bytes",
                patched([2: 0, 3: 8], header) + [0x00, 0x20, 0x00, 0x02, 0, 1, 0, 0], .badAttribute
            ),
            (
                "ERROR-CODE class 7",
                patched([2: 0, 3: 8], header) + [0x00, 0x09, 0x00, 0x04, 0, 0, 7, 0], .badAttribute
            ),
            (
                "FINGERPRINT of 2 bytes",
                patched([2: 0, 3: 8], header) + [0x80, 0x28, 0x00, 0x02, 0, 0, 0, 0], .badFingerprint
            ),
            (
                "attribute after FINGERPRINT",
                STUNMessage.bindingRequest(transactionID: sampleTransactionID, includesFingerprint: true).encoded()
                    .patchingLength(adding: 8) + [0x80, 0x22, 0x00, 0x01, 0x41, 0, 0, 0],
                .badFingerprint
            ),
        ]
    }()

    @Test("malformed messages throw an error that names the problem", arguments: 0..<malformed.count)
    func malformedInput(index: Int) {
        let (name, bytes, code) = Self.malformed[index]
        let error = #expect(throws: STUNParseError.self, "\(name)") { try STUNMessage(parsing: bytes) }
        #expect(error?.code == code, "\(name): \(String(describing: error))")
        #expect(error?.description.hasPrefix("STUN message rejected: ") == true)
    }

    @Test("frame length from a growing TCP prefix")
    func framing() throws {
        let bytes = STUNMessage.bindingRequest(software: "framing", includesFingerprint: true).encoded()
        for count in 0..<20 {
            #expect(try STUNMessage.frameLength(ofPrefix: bytes[0..<count]) == nil)
        }
        for count in 20...bytes.count {
            #expect(try STUNMessage.frameLength(ofPrefix: bytes[0..<count]) == bytes.count)
        }
        // Two messages back to back: the first frame's length, then the second's.
        let second = STUNMessage.bindingRequest().encoded()
        let stream = bytes + second
        let first = try #require(try STUNMessage.frameLength(ofPrefix: stream))
        #expect(try STUNMessage(parsing: stream[0..<first]).software == "framing")
        #expect(try STUNMessage.frameLength(ofPrefix: stream[first...]) == second.count)

        // Bad streams are refused as soon as the offending field arrives.
        #expect(throws: STUNParseError.self) { try STUNMessage.frameLength(ofPrefix: [0x47]) }  // "G"
        let huge: [UInt8] = [0x00, 0x01, 0xFF, 0xF0]
        let error = #expect(throws: STUNParseError.self) { try STUNMessage.frameLength(ofPrefix: huge) }
        #expect(error?.code == .tooLong)
        #expect(try STUNMessage.frameLength(ofPrefix: huge, maximumLength: 70_000) == nil)
        #expect(throws: STUNParseError.self) {
            try STUNMessage.frameLength(ofPrefix: [0, 1, 0, 0, 1, 2, 3, 4])  // wrong cookie
        }
        #expect(try STUNMessage.frameLength(ofPrefix: Self.classicRequest, allowingClassicRFC3489: true) == 28)
    }

    @Test("fuzz: random, truncated and mutated input throws STUNParseError or parses, never traps")
    func fuzz() throws {
        var generator = SeededGenerator(state: 0x5EED)
        var parsed = 0
        var rejected = 0
        func attempt(_ bytes: [UInt8]) throws {
            do {
                let message = try STUNMessage(parsing: bytes, allowingClassicRFC3489: Bool.random(using: &generator))
                parsed += 1
                // Whatever parses must encode and parse back to itself.
                #expect(try STUNMessage(parsing: message.encoded(), allowingClassicRFC3489: true) == message)
            } catch is STUNParseError {
                rejected += 1
            }
            _ = try? STUNMessage.frameLength(ofPrefix: bytes)
        }
        // 1. Pure noise of every small length.
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...120, using: &generator)
            try attempt((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
        }
        // 2. Every truncation of valid messages must be rejected.
        let valid = [Self.sampleRequest, Self.sampleIPv4Response, Self.sampleIPv6Response]
        for message in valid {
            for count in 0..<message.count {
                let error = #expect(throws: STUNParseError.self) { try STUNMessage(parsing: message[0..<count]) }
                #expect(error?.code == .truncated || error?.code == .badLength)
            }
        }
        // 3. Valid header, random attribute soup (reaches the attribute decoders).
        for _ in 0..<20_000 {
            let words = Int.random(in: 0...24, using: &generator)
            var body: [UInt8] = []
            while body.count < words * 4 {
                let known: [UInt16] = [0x0001, 0x0003, 0x0008, 0x0009, 0x000A, 0x0020, 0x8022, 0x8028, 0x8029, 0x0024]
                let type = Bool.random(using: &generator) ? known.randomElement(using: &generator)! : UInt16.random(
                    in: 0...0xFFFF, using: &generator)
                let length = UInt16.random(in: 0...24, using: &generator)
                body.appendBigEndian(type)
                body.appendBigEndian(length)
                body += (0..<Int.random(in: 0...24, using: &generator)).map { _ in
                    UInt8.random(in: 0...255, using: &generator)
                }
            }
            body = Array(body.prefix(words * 4))
            var bytes: [UInt8] = [0x00, 0x01]
            bytes.appendBigEndian(UInt16(body.count))
            bytes.appendBigEndian(STUNMessage.magicCookie)
            bytes += STUNTransactionID.random(using: &generator).bytes + body
            try attempt(bytes)
        }
        // 4. Bit flips of valid messages.
        for _ in 0..<5_000 {
            var bytes = valid.randomElement(using: &generator)!
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                bytes[index] ^= 1 << UInt8.random(in: 0...7, using: &generator)
            }
            try attempt(bytes)
        }
        #expect(rejected > 20_000)
        #expect(parsed > 0)
    }
}

extension Array where Element == UInt8 {
    fileprivate func patchingLength(adding extra: Int) -> [UInt8] {
        var bytes = self
        let length = (Int(bytes[2]) << 8 | Int(bytes[3])) + extra
        bytes[2] = UInt8(length >> 8)
        bytes[3] = UInt8(length & 0xFF)
        return bytes
    }
}
