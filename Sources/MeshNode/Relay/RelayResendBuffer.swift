import ZeroMQ

/// What one direction of a relayed connection has sent and its peer has not yet acknowledged: credit comes back
/// only for bytes the peer's app took, so these are all the bytes a relay that lost its state (a broker restart)
/// may have dropped. The frames are kept as the messages libzmq sends (shared, not copied). At most one window; after the restart they go out again from the peer's count of bytes it
/// received, so none is lost, duplicated or reordered.
struct RelayResendBuffer {
    /// Bytes the peer acknowledged with credit, from the start of the connection.
    private(set) var acknowledged: UInt64 = 0
    /// Bytes sent on the relay, from the start of the connection.
    private(set) var sent: UInt64 = 0
    /// Sent data frames not wholly acknowledged, oldest first, each with its payload's range in the frame and the
    /// payload's offset in the stream; the first `head` are acknowledged and only wait to be compacted away.
    private var chunks: [(offset: UInt64, frame: ZMQMessage?, payload: Range<Int>)] = []
    private var head = 0

    /// Bytes sent and not acknowledged (what the window is measured against).
    var unacknowledged: Int { Int(sent - acknowledged) }

    /// A data frame went out; `payload` is where its bytes sit in `frame`.
    mutating func sent(_ frame: ZMQMessage, payload: Range<Int>) {
        chunks.append((sent, frame, payload))
        sent += UInt64(payload.count)
    }

    /// The peer returned `count` bytes of credit.
    mutating func acknowledge(_ count: Int) throws(RelayResumeError) {
        guard count >= 0, count <= unacknowledged else {
            throw RelayResumeError("credit for \(count) bytes, but only \(unacknowledged) are unacknowledged")
        }
        acknowledge(upTo: acknowledged + UInt64(count))
    }

    /// The relay came back and the peer says it received `received` bytes and acknowledged `peerAcknowledged` of
    /// them: drops what it acknowledged and returns the payloads to send again, from `received` on, in order.
    mutating func resume(peerReceived received: UInt64, peerAcknowledged: UInt64) throws(RelayResumeError) -> [[UInt8]] {
        guard acknowledged <= peerAcknowledged, peerAcknowledged <= received, received <= sent else {
            throw RelayResumeError(
                "offsets do not add up: the peer says it received \(received) and acknowledged \(peerAcknowledged) bytes; "
                    + "this side sent \(sent) and saw \(acknowledged) acknowledged")
        }
        acknowledge(upTo: peerAcknowledged)
        return chunks[head...].compactMap { chunk in
            let end = chunk.offset + UInt64(chunk.payload.count)
            guard end > received, let frame = chunk.frame else { return nil }
            let skip = Int(received > chunk.offset ? received - chunk.offset : 0)
            return [UInt8](UnsafeRawBufferPointer(rebasing: frame.bytes[(chunk.payload.lowerBound + skip)..<chunk.payload.upperBound]))
        }
    }

    private mutating func acknowledge(upTo offset: UInt64) {
        acknowledged = offset
        while head < chunks.count, chunks[head].offset + UInt64(chunks[head].payload.count) <= offset {
            chunks[head] = (0, nil, 0..<0)  // let the frame go now
            head += 1
        }
        if head == chunks.count {
            chunks.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 64 {
            chunks.removeFirst(head)
            head = 0
        }
    }
}

/// A resume (or a credit) that cannot be right for this connection; the connection is reset.
struct RelayResumeError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
