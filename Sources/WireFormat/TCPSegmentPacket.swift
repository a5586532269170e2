/// An IPv4 datagram carrying one TCP segment, built from scratch with correct IPv4 header and TCP checksums:
/// what a capture writes for traffic the broker relayed (it never saw real packets, only the byte streams).
public struct TCPSegmentPacket: Sendable, Equatable {
    public struct Flags: OptionSet, Sendable, Equatable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let fin = Flags(rawValue: 0x01)
        public static let syn = Flags(rawValue: 0x02)
        public static let rst = Flags(rawValue: 0x04)
        public static let psh = Flags(rawValue: 0x08)
        public static let ack = Flags(rawValue: 0x10)
    }

    /// The most payload one packet holds: an IPv4 total length is at most 65535, less 20 + 20 header bytes.
    public static let maximumPayload = 65535 - 40
    /// Window scale announced on SYN and SYN-ACK (so a 65535 window field means 8 MiB, and a relay stream's
    /// 64 KiB segments never look like a full window).
    public static let windowScale: UInt8 = 7

    public var source: IPv4Address
    public var sourcePort: UInt16
    public var destination: IPv4Address
    public var destinationPort: UInt16
    public var sequence: UInt32
    public var acknowledgment: UInt32
    public var flags: Flags
    /// The IPv4 identification field.
    public var identification: UInt16 = 0
    public var payload: ArraySlice<UInt8> = []

    public init(
        source: IPv4Address, sourcePort: UInt16, destination: IPv4Address, destinationPort: UInt16,
        sequence: UInt32, acknowledgment: UInt32, flags: Flags, identification: UInt16 = 0, payload: ArraySlice<UInt8> = []
    ) {
        precondition(payload.count <= Self.maximumPayload, "a TCP segment of \(payload.count) bytes does not fit one IPv4 packet")
        self.source = source
        self.sourcePort = sourcePort
        self.destination = destination
        self.destinationPort = destinationPort
        self.sequence = sequence
        self.acknowledgment = acknowledgment
        self.flags = flags
        self.identification = identification
        self.payload = payload
    }

    /// TCP options: on SYN, MSS 65495 and the window scale (8 bytes with a NOP); none otherwise.
    var options: [UInt8] {
        guard flags.contains(.syn) else { return [] }
        let mss = UInt16(Self.maximumPayload)
        return [2, 4, UInt8(mss >> 8), UInt8(mss & 0xff), 1, 3, 3, Self.windowScale]
    }

    /// The datagram's bytes: IPv4 header (20 bytes, DF, TTL 64), TCP header (+ options), payload.
    public var bytes: [UInt8] {
        let options = options
        let tcpLength = 20 + options.count + payload.count
        var packet: [UInt8] = []
        packet.reserveCapacity(20 + tcpLength)
        packet += [0x45, 0]  // version 4, 5 header words; no TOS
        packet.appendBigEndian(UInt16(20 + tcpLength))
        packet.appendBigEndian(identification)
        packet.appendBigEndian(UInt16(0x4000))  // don't fragment
        packet += [64, 6]  // TTL, protocol TCP
        packet.appendBigEndian(UInt16(0))  // checksum, below
        packet.appendBigEndian(source.value)
        packet.appendBigEndian(destination.value)
        packet.replaceSubrange(10..<12, with: Self.bigEndian(Self.internetChecksum(packet[0..<20])))

        packet.appendBigEndian(sourcePort)
        packet.appendBigEndian(destinationPort)
        packet.appendBigEndian(sequence)
        packet.appendBigEndian(flags.contains(.ack) ? acknowledgment : 0)
        packet.append(UInt8((20 + options.count) / 4) << 4)
        packet.append(flags.rawValue)
        packet.appendBigEndian(UInt16(0xffff))  // window
        packet.appendBigEndian(UInt16(0))  // checksum, below
        packet.appendBigEndian(UInt16(0))  // urgent pointer
        packet += options
        packet += payload
        var pseudoHeader: [UInt8] = []
        pseudoHeader.appendBigEndian(source.value)
        pseudoHeader.appendBigEndian(destination.value)
        pseudoHeader += [0, 6]
        pseudoHeader.appendBigEndian(UInt16(tcpLength))
        let checksum = Self.internetChecksum(packet[20...], seed: Self.onesComplementSum(pseudoHeader[...]))
        packet.replaceSubrange(36..<38, with: Self.bigEndian(checksum))
        return packet
    }

    /// RFC 1071: the one's complement of the one's complement sum of the 16-bit big-endian words (an odd last
    /// byte padded with zero), plus `seed` (another sum, such as TCP's pseudo-header).
    public static func internetChecksum(_ bytes: ArraySlice<UInt8>, seed: UInt32 = 0) -> UInt16 {
        var sum = UInt64(seed) + UInt64(onesComplementSum(bytes))
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    static func onesComplementSum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var sum: UInt64 = 0
        var index = bytes.startIndex
        while index + 1 < bytes.endIndex {
            sum += UInt64(bytes[index]) << 8 | UInt64(bytes[index + 1])
            index += 2
        }
        if index < bytes.endIndex { sum += UInt64(bytes[index]) << 8 }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return UInt32(sum)
    }

    static func bigEndian(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
}
