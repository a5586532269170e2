// Text forms of addresses and endpoints, parsed without libc so that WireFormat stays free of sockets.

extension IPv4Address: LosslessStringConvertible {
    /// Parses a dotted quad such as `192.0.2.1`: exactly four decimal parts, each 0–255, no leading `+`/`-`,
    /// at most three digits each. Returns `nil` for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.utf8.count), part.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let octet = UInt8(part)
            else { return nil }
            value = value << 8 | UInt32(octet)
        }
        self.init(value)
    }
}

extension IPv6Address: LosslessStringConvertible {
    /// Parses RFC 4291 text: eight hex groups, optionally one `::`, optionally a dotted quad as the last 32 bits
    /// (`::ffff:192.0.2.1`). Zone ids (`%eth0`) are not accepted. Returns `nil` for anything else.
    public init?(_ text: String) {
        guard !text.isEmpty, text.utf8.count <= 45 else { return nil }
        let halves = text.components(separatedByDoubleColon: ())
        guard halves.count <= 2 else { return nil }

        func parseGroups(_ part: Substring, allowIPv4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            var groups: [UInt16] = []
            for (index, piece) in pieces.enumerated() {
                if allowIPv4Tail, index == pieces.count - 1, piece.contains(".") {
                    guard let v4 = IPv4Address(String(piece)) else { return nil }
                    groups.append(UInt16(truncatingIfNeeded: v4.value >> 16))
                    groups.append(UInt16(truncatingIfNeeded: v4.value))
                    continue
                }
                guard (1...4).contains(piece.utf8.count), piece.utf8.allSatisfy(\.isASCIIHexDigit),
                    let group = UInt16(piece, radix: 16)
                else { return nil }
                groups.append(group)
            }
            return groups
        }

        if halves.count == 1 {
            guard let groups = parseGroups(halves[0], allowIPv4Tail: true), groups.count == 8 else { return nil }
            self.init(groups: groups)
        } else {
            guard let head = parseGroups(halves[0], allowIPv4Tail: false),
                let tail = parseGroups(halves[1], allowIPv4Tail: true),
                head.count + tail.count <= 7
            else { return nil }
            let zeros = [UInt16](repeating: 0, count: 8 - head.count - tail.count)
            self.init(groups: head + zeros + tail)
        }
    }
}

extension IPAddress: LosslessStringConvertible {
    /// Parses `192.0.2.1` or `2001:db8::1` (brackets are not accepted here; see `Endpoint`).
    public init?(_ text: String) {
        if let v4 = IPv4Address(text) {
            self = .v4(v4)
        } else if let v6 = IPv6Address(text) {
            self = .v6(v6)
        } else {
            return nil
        }
    }
}

extension Endpoint: LosslessStringConvertible {
    /// Parses `1.2.3.4:5678` or `[2001:db8::1]:5678`; the port must be decimal 0–65535.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        let hostPart = text[..<colon]
        let portPart = text[text.index(after: colon)...]
        guard (1...5).contains(portPart.utf8.count), portPart.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            let port = UInt16(portPart)
        else { return nil }
        if hostPart.hasPrefix("[") && hostPart.hasSuffix("]") && hostPart.count >= 2 {
            guard let v6 = IPv6Address(String(hostPart.dropFirst().dropLast())) else { return nil }
            self.init(v6, port: port)
        } else {
            guard let v4 = IPv4Address(String(hostPart)) else { return nil }
            self.init(v4, port: port)
        }
    }
}

extension UInt8 {
    fileprivate var isASCIIHexDigit: Bool {
        (0x30...0x39).contains(self) || (0x41...0x46).contains(self) || (0x61...0x66).contains(self)
    }
}

extension String {
    /// Splits at `::` (at most the first two occurrences matter: a third part means the text is invalid).
    fileprivate func components(separatedByDoubleColon _: Void) -> [Substring] {
        var parts: [Substring] = []
        var start = startIndex
        var index = startIndex
        while index < endIndex {
            let next = self.index(after: index)
            if self[index] == ":", next < endIndex, self[next] == ":" {
                parts.append(self[start..<index])
                start = self.index(after: next)
                index = start
                continue
            }
            index = next
        }
        parts.append(self[start...])
        return parts
    }
}
