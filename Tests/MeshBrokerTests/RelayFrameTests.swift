import Foundation
import SwiftProtobuf
import Testing
import WireFormat

@Suite("Relay frames: the header walker and the in-place data frames agree with protobuf")
struct RelayFrameTests {
    /// A data frame built in place in a buffer of `capacity` payload bytes, as a node builds it.
    func dataFrame(connectionID: UInt64, capacity: Int, fill: (UnsafeMutableRawBufferPointer) -> Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: RelayFrame.maximumDataHeader + capacity)
        let range = buffer.withUnsafeMutableBytes { RelayFrame.writeDataFrame(connectionID: connectionID, into: $0, fill: fill) }
        return range.map { Array(buffer[$0]) }
    }

    @Test("data frames built in place decode with SwiftProtobuf to the same id and bytes, for every length class")
    func dataFrames() throws {
        for (id, count) in [(UInt64(1), 1), (300, 127), (1 << 40, 128), (7, 16383), (UInt64.max, 16384), (9, RelayFrame.maximumData)] {
            let payload = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let frame = try #require(
                dataFrame(connectionID: id, capacity: count) { buffer in
                    buffer.copyBytes(from: payload)
                    return count
                })
            let decoded = try RelayFrame(frame: frame)
            #expect(decoded.connectionID == id)
            #expect(decoded.data == Data(payload))
            let header = try RelayFrameHeader(scanning: frame)
            #expect(header.connectionID == id && header.kind == .data)
            #expect(Array(frame[header.payload]) == payload)
            // Byte for byte what SwiftProtobuf writes for the same message.
            #expect(frame == RelayFrame.with(id, .data(Data(payload))).frame())
        }
    }

    @Test("a fill that reads nothing (EOF, an error) gives no frame")
    func emptyFill() {
        #expect(dataFrame(connectionID: 1, capacity: 10) { _ in 0 } == nil)
        #expect(dataFrame(connectionID: 1, capacity: 10) { _ in -1 } == nil)
    }

    @Test("the header walker reads every kind as SwiftProtobuf encodes it")
    func kinds() throws {
        let cases: [(RelayFrame.OneOf_Body, RelayFrameHeader.Kind)] = [
            (.fin(true), .fin),
            (.rst(.with { $0.reason = "gone" }), .rst),
            (.credit(262_144), .credit(262_144)),
            (.credit(0), .credit(0)),
            (.switchOffset(1 << 33), .switchOffset(1 << 33)),
            (.hello(.with { $0.session = Data([1, 2, 3]) }), .hello),
            (.open(.with { $0.window = 1 << 20 }), .open),
            (.punch(.with { $0.attempt = 3; $0.stage = .ready }), .punch),
            (.data(Data()), .data),
        ]
        for (body, kind) in cases {
            let header = try RelayFrameHeader(scanning: RelayFrame.with(42, body).frame())
            #expect(header.connectionID == 42)
            #expect(header.kind == kind, "\(body)")
        }
        #expect(try RelayFrameHeader(scanning: RelayFrame.with(0, .hello(.init())).frame()).connectionID == 0)
    }

    @Test("unknown fields are skipped, fields in any order are read, the last body field wins")
    func protobufRules() throws {
        // field 15 (varint), connection id after the body, field 16 (fixed64), then a second body (credit).
        var bytes: [UInt8] = [0x78, 0x05]
        bytes += [0x12, 0x02, 0xAA, 0xBB]  // data (2 bytes)
        bytes += [0x08, 0x07]  // connection id 7
        bytes += [0x81, 0x01] + [UInt8](repeating: 0, count: 8)  // field 16, fixed64
        let header = try RelayFrameHeader(scanning: bytes)
        #expect(header.connectionID == 7 && header.kind == .data && Array(bytes[header.payload]) == [0xAA, 0xBB])
        let credit = try RelayFrameHeader(scanning: bytes + [0x28, 0x10])
        #expect(credit.kind == .credit(16) && credit.payload.isEmpty)
    }

    @Test("truncated, oversized, typeless and wrongly typed frames are refused")
    func malformed() throws {
        let good = RelayFrame.with(5, .data(Data(repeating: 1, count: 100))).frame()
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: Array(good.dropLast())) }
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: [0x08, 0x05]) }  // no body
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: [0x08]) }  // truncated varint
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: [0x10, 0x01]) }  // data as a varint
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: [0x0B]) }  // a group
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: [0x08] + [UInt8](repeating: 0xFF, count: 11)) }
        let huge = [UInt8](repeating: 0, count: RelayFrame.maximumFrameSize + 1)
        #expect(throws: FrameError.self) { try RelayFrameHeader(scanning: huge) }
        #expect(throws: FrameError.self) { try RelayFrame(frame: huge) }
        #expect(throws: FrameError.self) { try RelayFrame(frame: [0x08, 0x05]) }
    }
}
