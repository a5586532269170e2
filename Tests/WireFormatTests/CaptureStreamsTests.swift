import Foundation
import Testing
import WireFormat

@Suite("Capture as pcap: file layout, synthesized IPv4/TCP packets, rebuilt streams")
struct CaptureStreamsTests {
    static let web = IPv4Address(100, 64, 0, 1)
    static let fetch = IPv4Address(100, 64, 0, 2)

    /// Reads a big-endian number of `T`'s width at `index`.
    func big<T: FixedWidthInteger>(_ bytes: [UInt8], _ index: Int, as: T.Type = T.self) -> T {
        bytes[index..<index + T.bitWidth / 8].reduce(0) { $0 << 8 | T($1) }
    }

    func little<T: FixedWidthInteger>(_ bytes: [UInt8], _ index: Int, as: T.Type = T.self) -> T {
        bytes[index..<index + T.bitWidth / 8].reversed().reduce(0) { $0 << 8 | T($1) }
    }

    @Test("the file header is libpcap's: magic a1b2c3d4 little-endian, version 2.4, snaplen 65535, LINKTYPE_RAW")
    func fileHeader() {
        #expect(
            PcapFormat.fileHeader() == [
                0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 101, 0, 0, 0,
            ])
    }

    @Test("a record holds seconds, microseconds, both lengths, then the packet")
    func record() {
        let record = PcapFormat.record(microseconds: 1_700_000_000_123_456, packet: [1, 2, 3])
        #expect(record.count == 19)
        #expect(little(record, 0, as: UInt32.self) == 1_700_000_000)
        #expect(little(record, 4, as: UInt32.self) == 123_456)
        #expect(little(record, 8, as: UInt32.self) == 3)
        #expect(little(record, 12, as: UInt32.self) == 3)
        #expect(Array(record[16...]) == [1, 2, 3])
    }

    @Test("the internet checksum matches RFC 1071's example and a known IPv4 header")
    func checksum() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is its complement.
        #expect(TCPSegmentPacket.internetChecksum([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]) == 0x220d)
        // 192.168.0.1 -> 192.168.0.199, UDP, total length 0x73, DF, TTL 64: checksum b861.
        let header: [UInt8] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ]
        #expect(TCPSegmentPacket.internetChecksum(header[...]) == 0xb861)
        // An odd length pads the last byte with zero.
        #expect(TCPSegmentPacket.internetChecksum([0x12, 0x34, 0x56]) == ~UInt16(0x1234 + 0x5600))
    }

    /// Verifies both checksums the way a receiver does: summing with the checksum in place gives 0.
    func expectValidChecksums(_ packet: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(TCPSegmentPacket.internetChecksum(packet[0..<20]) == 0, sourceLocation: sourceLocation)
        var pseudo = Array(packet[12..<20]) + [0, 6]
        pseudo += [UInt8((packet.count - 20) >> 8), UInt8((packet.count - 20) & 0xff)]
        #expect(TCPSegmentPacket.internetChecksum(pseudo[...] + packet[20...]) == 0, sourceLocation: sourceLocation)
    }

    @Test("a data segment: IPv4 and TCP headers field by field, valid checksums, payload last")
    func dataPacket() {
        let payload = [UInt8](repeating: 0xab, count: 101)
        let packet = TCPSegmentPacket(
            source: Self.web, sourcePort: 8080, destination: Self.fetch, destinationPort: 49153, sequence: 0xfffffff0,
            acknowledgment: 42, flags: [.ack, .psh], identification: 7, payload: payload[...]
        ).bytes
        #expect(packet.count == 20 + 20 + 101)
        #expect(packet[0] == 0x45 && big(packet, 2, as: UInt16.self) == 141 && big(packet, 4, as: UInt16.self) == 7)
        #expect(big(packet, 6, as: UInt16.self) == 0x4000 && packet[8] == 64 && packet[9] == 6)
        #expect(big(packet, 12, as: UInt32.self) == Self.web.value && big(packet, 16, as: UInt32.self) == Self.fetch.value)
        #expect(big(packet, 20, as: UInt16.self) == 8080 && big(packet, 22, as: UInt16.self) == 49153)
        #expect(big(packet, 24, as: UInt32.self) == 0xfffffff0 && big(packet, 28, as: UInt32.self) == 42)
        #expect(packet[32] == 0x50 && packet[33] == 0x18)  // 5 words, ACK|PSH
        #expect(Array(packet[40...]) == payload)
        expectValidChecksums(packet)
    }

    @Test("a SYN carries MSS and window scale options and no acknowledgment number")
    func synPacket() {
        let packet = TCPSegmentPacket(
            source: Self.fetch, sourcePort: 49153, destination: Self.web, destinationPort: 8080, sequence: 1000,
            acknowledgment: 99, flags: .syn
        ).bytes
        #expect(packet.count == 48)
        #expect(packet[32] == 0x70 && packet[33] == 0x02)
        #expect(big(packet, 28, as: UInt32.self) == 0)
        #expect(Array(packet[40...]) == [2, 4, 0xff, 0xd7, 1, 3, 3, 7])
        expectValidChecksums(packet)
    }

    func segment(
        _ kind: CaptureSegment.Kind, id: UInt64 = 5, from: (IPv4Address, UInt16), to: (IPv4Address, UInt16), offset: UInt64 = 0,
        bytes: Int = 0
    ) -> CaptureSegment {
        CaptureSegment.with {
            $0.kind = kind
            $0.connectionID = id
            $0.sourceAddress = from.0.value
            $0.sourcePort = UInt32(from.1)
            $0.destinationAddress = to.0.value
            $0.destinationPort = UInt32(to.1)
            $0.offset = offset
            $0.data = Data((0..<bytes).map { UInt8(truncatingIfNeeded: $0) })
        }
    }

    @Test("open, data both ways, a frame split in two packets, FIN both ways: sequence and ack numbers follow the offsets")
    func stream() throws {
        let client = (Self.fetch, RelayFrame.initiatorPort(connectionID: 5))
        let server = (Self.web, UInt16(8080))
        var streams = CaptureStreams()
        let (handshake, none) = streams.packets(for: segment(.open, from: client, to: server))
        #expect(none.isEmpty)
        try #require(handshake.count == 3)
        let (a, b) = (handshake[0].sequence, handshake[1].sequence)
        #expect(handshake.map(\.flags) == [.syn, [.syn, .ack], .ack])
        #expect(handshake[0].source == Self.fetch && handshake[0].sourcePort == client.1 && handshake[0].destinationPort == 8080)
        #expect(handshake[1].acknowledgment == a &+ 1 && handshake[2].sequence == a &+ 1 && handshake[2].acknowledgment == b &+ 1)
        #expect(streams.openConnections == 1)

        let (request, _) = streams.packets(for: segment(.data, from: client, to: server, bytes: 100))
        #expect(request.count == 1)
        #expect(request[0].sequence == a &+ 1 && request[0].acknowledgment == b &+ 1 && request[0].flags == [.ack, .psh])
        #expect(request[0].payload.count == 100)

        // One relay frame of 65536 bytes does not fit one IPv4 packet: two segments, consecutive sequence numbers.
        let (response, _) = streams.packets(for: segment(.data, from: server, to: client, bytes: 65536))
        #expect(response.map(\.payload.count) == [TCPSegmentPacket.maximumPayload, 65536 - TCPSegmentPacket.maximumPayload])
        #expect(response[0].sequence == b &+ 1 && response[0].flags == .ack)
        #expect(response[1].sequence == b &+ 1 &+ UInt32(TCPSegmentPacket.maximumPayload) && response[1].flags == [.ack, .psh])
        #expect(response.allSatisfy { $0.acknowledgment == a &+ 101 && $0.source == Self.web && $0.destinationPort == client.1 })
        #expect(response.allSatisfy { $0.bytes.count <= 65535 })
        #expect(Array(response[1].payload.prefix(2)) == [UInt8(truncatingIfNeeded: 65495), UInt8(truncatingIfNeeded: 65496)])

        let (serverFin, _) = streams.packets(for: segment(.fin, from: server, to: client, offset: 65536))
        #expect(serverFin.map(\.flags) == [[.fin, .ack]] && serverFin[0].sequence == b &+ 65537)
        let (clientFin, _) = streams.packets(for: segment(.fin, from: client, to: server, offset: 100))
        // The client's FIN acknowledges the server's bytes and its FIN.
        #expect(clientFin[0].sequence == a &+ 101 && clientFin[0].acknowledgment == b &+ 65538)
        #expect(streams.openConnections == 0)
    }

    @Test("an offset jump is reported with the bytes missed; a connection first seen mid-stream gets a handshake and a warning")
    func gaps() {
        let client = (Self.fetch, UInt16(50000))
        let server = (Self.web, UInt16(8080))
        var streams = CaptureStreams()
        let (first, joined) = streams.packets(for: segment(.data, id: 9, from: server, to: client, offset: 1000, bytes: 10))
        #expect(first.map(\.flags) == [.syn, [.syn, .ack], .ack, [.ack, .psh]])
        // The side first seen sending opens the synthesized handshake.
        #expect(first[0].source == Self.web)
        #expect(joined.count == 2, "\(joined)")
        #expect(joined.first?.contains("already open when the capture started") == true)
        #expect(joined.last?.contains("1000 bytes missed (from offset 0)") == true)
        let isn = first[0].sequence
        #expect(first[3].sequence == isn &+ 1001)

        let (later, missed) = streams.packets(for: segment(.data, id: 9, from: server, to: client, offset: 5010, bytes: 1))
        #expect(
            missed == [
                "connection 9 100.64.0.1:8080 -> 100.64.0.2:50000: 4000 bytes missed (from offset 1010); "
                    + "the broker dropped segments for this slow reader"
            ])
        #expect(later[0].sequence == isn &+ 5011)
        let (reset, _) = streams.packets(for: segment(.rst, id: 9, from: client, to: server))
        #expect(reset.map(\.flags) == [[.rst, .ack]])
        #expect(reset[0].acknowledgment == isn &+ 5012)
        #expect(streams.openConnections == 0)

        let (stray, skipped) = streams.packets(for: segment(.data, id: 10, from: client, to: server, bytes: 1))
        #expect(stray.count == 4 && skipped.count == 1)
        let (wrong, warned) = streams.packets(for: segment(.data, id: 10, from: (Self.web, 1), to: server, bytes: 1))
        #expect(wrong.isEmpty && warned.last?.contains("does not match the connection's addresses") == true)
    }
}
