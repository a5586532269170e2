/// The classic pcap file format (libpcap's, not pcapng): a 24-byte file header, then per packet a 16-byte
/// record header and the packet's bytes. Written little-endian with the microsecond magic 0xa1b2c3d4, which
/// Wireshark, tshark and tcpdump read on any host.
public enum PcapFormat {
    /// Packets are bare IPv4 datagrams, no link-layer header (LINKTYPE_RAW).
    public static let linkTypeRaw: UInt32 = 101
    /// The most bytes kept of one packet; an IPv4 datagram is never longer.
    public static let snapshotLength: UInt32 = 65535

    /// The file header: magic, version 2.4, zone 0, accuracy 0, snapshot length, link type.
    public static func fileHeader(linkType: UInt32 = linkTypeRaw) -> [UInt8] {
        var header: [UInt8] = []
        header.reserveCapacity(24)
        header.appendLittleEndian(UInt32(0xa1b2_c3d4))
        header.appendLittleEndian(UInt16(2))
        header.appendLittleEndian(UInt16(4))
        header.appendLittleEndian(UInt32(0))  // thiszone
        header.appendLittleEndian(UInt32(0))  // sigfigs
        header.appendLittleEndian(snapshotLength)
        header.appendLittleEndian(linkType)
        return header
    }

    /// One packet's record: its time (microseconds since the Unix epoch), lengths, then the packet itself.
    public static func record(microseconds: UInt64, packet: [UInt8]) -> [UInt8] {
        var record: [UInt8] = []
        record.reserveCapacity(16 + packet.count)
        record.appendLittleEndian(UInt32(truncatingIfNeeded: microseconds / 1_000_000))
        record.appendLittleEndian(UInt32(microseconds % 1_000_000))
        record.appendLittleEndian(UInt32(packet.count))  // captured
        record.appendLittleEndian(UInt32(packet.count))  // on the wire
        record += packet
        return record
    }
}

extension [UInt8] {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        var little = value.littleEndian
        Swift.withUnsafeBytes(of: &little) { append(contentsOf: $0) }
    }
}
