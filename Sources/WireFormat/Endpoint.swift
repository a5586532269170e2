/// An IPv4 address as a plain value: `192.0.2.1` is `IPv4Address(0xC000_0201)`.
///
/// No sockets are involved; converting to and from `sockaddr_in` is the job of the modules that own sockets.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The address as a 32-bit number in host order (`127.0.0.1` == `0x7F00_0001`).
    public var value: UInt32

    /// The address from a number in host order (`127.0.0.1` == `0x7F00_0001`).
    public init(_ value: UInt32) {
        self.value = value
    }

    /// The address from its four octets, most significant first: `IPv4Address(127, 0, 0, 1)`.
    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        self.value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// The address from exactly 4 octets in network order; `nil` for any other count.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 4 else { return nil }
        self.value = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The four octets in network order.
    public var bytes: [UInt8] {
        [UInt8(truncatingIfNeeded: value >> 24), UInt8(truncatingIfNeeded: value >> 16),
         UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
    }

    /// `0.0.0.0`.
    public static let any = IPv4Address(0)
    /// `127.0.0.1`.
    public static let loopback = IPv4Address(127, 0, 0, 1)

    /// Dotted quad, e.g. `192.0.2.1`.
    public var description: String {
        bytes.map(String.init).joined(separator: ".")
    }

    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }
}

/// An IPv6 address as a plain value, stored as two 64-bit halves in host order.
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The most significant 64 bits (`2001:db8::` has `high == 0x2001_0db8_0000_0000`).
    public var high: UInt64
    /// The least significant 64 bits.
    public var low: UInt64

    /// The address from its two halves in host order.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The address from exactly 16 octets in network order; `nil` for any other count.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 16 else { return nil }
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (index, byte) in bytes.enumerated() {
            if index < 8 { high = high << 8 | UInt64(byte) } else { low = low << 8 | UInt64(byte) }
        }
        self.init(high: high, low: low)
    }

    /// The address from its eight 16-bit groups, most significant first; `nil` unless there are exactly 8.
    public init?(groups: [UInt16]) {
        guard groups.count == 8 else { return nil }
        let high = groups[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let low = groups[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        self.init(high: high, low: low)
    }

    /// The sixteen octets in network order.
    public var bytes: [UInt8] {
        (0..<16).map { index in
            let half = index < 8 ? high : low
            return UInt8(truncatingIfNeeded: half >> (UInt64(7 - index % 8) * 8))
        }
    }

    /// The eight 16-bit groups, most significant first.
    public var groups: [UInt16] {
        (0..<8).map { index in
            let half = index < 4 ? high : low
            return UInt16(truncatingIfNeeded: half >> (UInt64(3 - index % 4) * 16))
        }
    }

    /// `::`.
    public static let any = IPv6Address(high: 0, low: 0)
    /// `::1`.
    public static let loopback = IPv6Address(high: 0, low: 1)

    /// The RFC 5952 text form: lower-case hex, leading zeros dropped, the longest run of two or more zero groups
    /// written as `::` (e.g. `2001:db8::1`).
    public var description: String {
        let groups = self.groups
        // Find the longest run of zero groups (first one wins a tie), only if it is at least 2 long.
        var bestStart = -1
        var bestLength = 0
        var runStart = -1
        for index in 0...8 {
            if index < 8 && groups[index] == 0 {
                if runStart < 0 { runStart = index }
            } else if runStart >= 0 {
                let length = index - runStart
                if length > bestLength {
                    bestStart = runStart
                    bestLength = length
                }
                runStart = -1
            }
        }
        func hex(_ range: Range<Int>) -> String {
            groups[range].map { String($0, radix: 16) }.joined(separator: ":")
        }
        guard bestLength >= 2 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    public static func < (lhs: IPv6Address, rhs: IPv6Address) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An IPv4 or IPv6 address.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    /// `"192.0.2.1"` or `"2001:db8::1"`.
    public var description: String {
        switch self {
        case .v4(let address): address.description
        case .v6(let address): address.description
        }
    }

    /// The address octets in network order: 4 for IPv4, 16 for IPv6.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let address): address.bytes
        case .v6(let address): address.bytes
        }
    }
}

/// A transport address: an IP address and a port, as a STUN reflector reports it or a socket binds to it.
///
/// Its description is `1.2.3.4:5678` for IPv4 and `[2001:db8::1]:5678` for IPv6, and `Endpoint("1.2.3.4:5678")`
/// parses either form back (see `Endpoint+Parsing.swift`).
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// The IP address.
    public var host: IPAddress
    /// The port, in host order.
    public var port: UInt16

    /// An endpoint from an address and a port.
    public init(host: IPAddress, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// An IPv4 endpoint.
    public init(_ host: IPv4Address, port: UInt16) {
        self.init(host: .v4(host), port: port)
    }

    /// An IPv6 endpoint.
    public init(_ host: IPv6Address, port: UInt16) {
        self.init(host: .v6(host), port: port)
    }

    /// `1.2.3.4:5678` or `[2001:db8::1]:5678`.
    public var description: String {
        switch host {
        case .v4(let address): "\(address):\(port)"
        case .v6(let address): "[\(address)]:\(port)"
        }
    }
}
