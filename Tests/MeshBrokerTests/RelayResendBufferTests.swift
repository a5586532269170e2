import Testing
import WireFormat
import ZeroMQ

@testable import MeshNode

@Suite("What a relayed connection keeps to send again after a broker restart")
struct RelayResendBufferTests {
    /// A data frame with `count` bytes counting up from `first` (mod 256), as the pump builds it.
    func frame(_ first: Int, _ count: Int) -> (ZMQMessage, Range<Int>) {
        let frame = RelayPump.readDataFrame(connectionID: 7, capacity: count) { buffer in
            for index in 0..<count { buffer[index] = UInt8(truncatingIfNeeded: first + index) }
            return count
        }!
        return (frame, (frame.count - count)..<frame.count)
    }

    func filled(_ sizes: [Int]) -> RelayResendBuffer {
        var buffer = RelayResendBuffer()
        var offset = 0
        for size in sizes {
            let (bytes, payload) = frame(offset, size)
            buffer.sent(bytes, payload: payload)
            offset += size
        }
        return buffer
    }

    @Test("credit acknowledges bytes; the window counts what is left; credit for bytes never sent is refused")
    func credit() throws {
        var buffer = filled([100, 200, 300])
        #expect(buffer.sent == 600 && buffer.unacknowledged == 600)
        try buffer.acknowledge(150)
        #expect(buffer.acknowledged == 150 && buffer.unacknowledged == 450)
        #expect(throws: RelayResumeError.self) { try buffer.acknowledge(451) }
        try buffer.acknowledge(450)
        #expect(buffer.unacknowledged == 0)
    }

    @Test("resume sends again exactly the bytes after the peer's count, in order, from the middle of a frame too")
    func resume() throws {
        var buffer = filled([100, 200, 300])
        try buffer.acknowledge(50)
        let again = try buffer.resume(peerReceived: 250, peerAcknowledged: 120)
        #expect(again.flatMap { $0 } == (250..<600).map { UInt8(truncatingIfNeeded: $0) })
        #expect(buffer.acknowledged == 120 && buffer.unacknowledged == 480)
        // Nothing lost: the peer had it all.
        #expect(try buffer.resume(peerReceived: 600, peerAcknowledged: 600).isEmpty)
        #expect(buffer.unacknowledged == 0)
    }

    @Test("offsets that do not add up are refused and change nothing")
    func badOffsets() throws {
        var buffer = filled([100, 100])
        try buffer.acknowledge(80)
        for (received, acknowledged) in [(201, 100), (150, 160), (150, 70)] as [(UInt64, UInt64)] {
            #expect(throws: RelayResumeError.self) { try buffer.resume(peerReceived: received, peerAcknowledged: acknowledged) }
        }
        #expect(buffer.acknowledged == 80 && buffer.sent == 200)
    }
}
