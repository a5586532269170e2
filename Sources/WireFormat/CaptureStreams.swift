public typealias CaptureSegment = Boxermesh_V1_CaptureSegment

/// Turns the broker's capture segments back into TCP packets between the mesh addresses, as a capture tool
/// writes them: a SYN, SYN-ACK, ACK handshake when a connection opens (or is first seen), each data segment as
/// packets whose sequence numbers follow the stream's byte offsets, acknowledging what the other side sent so
/// far, then FIN or RST. Wireshark reassembles the streams from these as if it had sniffed the real connection.
public struct CaptureStreams: Sendable {
    /// One side of a connection on the mesh.
    struct End: Equatable {
        let address: IPv4Address
        let port: UInt16
    }

    /// A connection being rebuilt. Side 0 is the one that sent the synthesized SYN.
    struct Stream {
        let ends: [End]
        /// Initial sequence numbers per side; byte `n` of side `i` has sequence number `isn[i] + 1 + n`.
        let isn: [UInt32]
        /// Per side: the end of the bytes seen so far (the next offset expected).
        var next: [UInt64] = [0, 0]
        var finished = [false, false]
        var identification: [UInt16] = [1, 1]
    }

    var streams: [UInt64: Stream] = [:]

    public init() {}

    /// Connections open (seen, and neither reset nor finished both ways).
    public var openConnections: Int { streams.count }

    /// The packets for one capture segment, and warnings about what was missed (segments the broker dropped
    /// for a reader that fell behind, or a connection already under way when the capture started).
    public mutating func packets(for segment: CaptureSegment) -> (packets: [TCPSegmentPacket], warnings: [String]) {
        let source = End(address: IPv4Address(segment.sourceAddress), port: UInt16(truncatingIfNeeded: segment.sourcePort))
        let destination = End(
            address: IPv4Address(segment.destinationAddress), port: UInt16(truncatingIfNeeded: segment.destinationPort))
        let id = segment.connectionID
        var packets: [TCPSegmentPacket] = []
        var warnings: [String] = []
        let described = "connection \(id) \(source.address):\(source.port) -> \(destination.address):\(destination.port)"
        var stream: Stream
        if let known = streams[id] {
            stream = known
        } else {
            stream = Stream(ends: [source, destination], isn: Self.initialSequenceNumbers(id))
            packets += handshake(stream)
            if segment.kind != .open {
                warnings.append("\(described): already open when the capture started (its opening was not captured)")
            }
        }
        if segment.kind == .open {
            streams[id] = stream
            return (packets, warnings)
        }
        guard let side = stream.ends.firstIndex(of: source), stream.ends[1 - side] == destination else {
            warnings.append("\(described): does not match the connection's addresses; skipped")
            return (packets, warnings)
        }
        let offset = segment.kind == .rst ? max(segment.offset, stream.next[side]) : segment.offset
        if offset > stream.next[side] {
            warnings.append(
                "\(described): \(offset - stream.next[side]) bytes missed (from offset \(stream.next[side])); "
                    + "the broker dropped segments for this slow reader")
        }
        func packet(_ flags: TCPSegmentPacket.Flags, at offset: UInt64, _ payload: ArraySlice<UInt8> = []) -> TCPSegmentPacket {
            let other = 1 - side
            let acknowledged = stream.next[other] + (stream.finished[other] ? 1 : 0)
            defer { stream.identification[side] &+= 1 }
            return TCPSegmentPacket(
                source: source.address, sourcePort: source.port, destination: destination.address,
                destinationPort: destination.port,
                sequence: Self.sequence(stream.isn[side], offset), acknowledgment: Self.sequence(stream.isn[other], acknowledged),
                flags: flags.union(.ack), identification: stream.identification[side], payload: payload)
        }
        switch segment.kind {
        case .data:
            let data = [UInt8](segment.data)
            var start = 0
            while start < data.count {
                let end = min(start + TCPSegmentPacket.maximumPayload, data.count)
                packets.append(packet(end == data.count ? .psh : [], at: offset + UInt64(start), data[start..<end]))
                start = end
            }
            stream.next[side] = max(stream.next[side], offset + UInt64(data.count))
        case .fin:
            packets.append(packet(.fin, at: offset))
            stream.next[side] = max(stream.next[side], offset)
            stream.finished[side] = true
        case .rst:
            packets.append(packet(.rst, at: offset))
        case .open, .UNRECOGNIZED:
            break
        }
        streams[id] = segment.kind == .rst || stream.finished == [true, true] ? nil : stream
        return (packets, warnings)
    }

    /// SYN from side 0, SYN-ACK from side 1, ACK from side 0.
    private func handshake(_ stream: Stream) -> [TCPSegmentPacket] {
        let (a, b) = (stream.ends[0], stream.ends[1])
        let (isnA, isnB) = (stream.isn[0], stream.isn[1])
        return [
            TCPSegmentPacket(
                source: a.address, sourcePort: a.port, destination: b.address, destinationPort: b.port,
                sequence: isnA, acknowledgment: 0, flags: .syn),
            TCPSegmentPacket(
                source: b.address, sourcePort: b.port, destination: a.address, destinationPort: a.port,
                sequence: isnB, acknowledgment: isnA &+ 1, flags: [.syn, .ack]),
            TCPSegmentPacket(
                source: a.address, sourcePort: a.port, destination: b.address, destinationPort: b.port,
                sequence: isnA &+ 1, acknowledgment: isnB &+ 1, flags: .ack),
        ]
    }

    /// Fixed per connection (a capture is reproducible), different for the two sides.
    static func initialSequenceNumbers(_ id: UInt64) -> [UInt32] {
        let mixed = (id &+ 1) &* 0x9e37_79b9_7f4a_7c15
        return [UInt32(truncatingIfNeeded: mixed >> 32), UInt32(truncatingIfNeeded: mixed)]
    }

    /// The sequence number of byte `offset` (or of the FIN after `offset` bytes): ISN + 1 + offset, mod 2³².
    static func sequence(_ isn: UInt32, _ offset: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: UInt64(isn) &+ 1 &+ offset)
    }
}
