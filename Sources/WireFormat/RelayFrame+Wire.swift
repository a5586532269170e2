import Glibc
import SwiftProtobuf

public typealias RelayFrame = Boxermesh_V1_RelayFrame

/// Every relay ZeroMQ message is one frame holding one ``RelayFrame`` (see the schema's Relay section).
///
/// Data frames are the hot path: the broker forwards them by their header alone and a node writes their bytes
/// straight from the received buffer, so they are read with ``RelayFrameHeader`` (a small protobuf field walker
/// that copies nothing) and built with ``RelayFrame/writeDataFrame(connectionID:into:fill:)``. Both produce and
/// accept ordinary protobuf: any protobuf library reads and writes the same frames.
extension RelayFrame {
    /// The most bytes one data frame carries. Large frames keep libzmq on its zero-copy paths and cut the
    /// per-message hand-offs between threads (issue 14); a node sends what one read of its app's socket gave.
    public static let maximumData = 256 * 1024
    /// A frame larger than this is refused (libzmq drops a peer that sends more).
    public static let maximumFrameSize = maximumData + 64

    /// The port the connecting app's end of a relayed connection has on the mesh (it has no punched port):
    /// stable per connection, in the ephemeral range. Both apps, and the broker's capture, use it.
    public static func initiatorPort(connectionID: UInt64) -> UInt16 { UInt16(49152 + connectionID % 16384) }

    /// Decodes a whole frame (hello, open, punch, rst: the small ones).
    public init(frame: [UInt8]) throws(FrameError) {
        guard frame.count <= Self.maximumFrameSize else {
            throw FrameError("relay frame of \(frame.count) bytes exceeds the \(Self.maximumFrameSize)-byte limit")
        }
        do {
            try self.init(serializedBytes: frame)
        } catch {
            throw FrameError("malformed relay frame (\(frame.count) bytes): \(error)")
        }
        guard body != nil else { throw FrameError("relay frame of unknown or missing type (\(frame.count) bytes)") }
    }

    public func frame() -> [UInt8] {
        // Serializing a message built from valid Swift values cannot fail (no required fields in proto3).
        try! serializedBytes()
    }

    public static func with(_ connectionID: UInt64, _ body: OneOf_Body) -> RelayFrame {
        var frame = RelayFrame()
        frame.connectionID = connectionID
        frame.body = body
        return frame
    }

    /// The most header bytes a data frame needs: tag, 10-byte varint id, tag, 3-byte varint length.
    public static let maximumDataHeader = 15

    /// Builds a data frame in `buffer` without moving its payload: `fill` writes the payload (at most
    /// `buffer.count - maximumDataHeader` bytes) at `maximumDataHeader` into `buffer` and returns the count of; the
    /// header goes right before it. Returns where the frame sits in `buffer`, or nil when `fill` returns 0 or less
    /// (nothing read: EOF or an error the caller looks at).
    public static func writeDataFrame(
        connectionID: UInt64, into buffer: UnsafeMutableRawBufferPointer, fill: (UnsafeMutableRawBufferPointer) -> Int
    ) -> Range<Int>? {
        let capacity = buffer.count - maximumDataHeader
        precondition(capacity > 0 && capacity <= maximumData, "data frames carry 1...\(maximumData) bytes")
        let filled = fill(UnsafeMutableRawBufferPointer(rebasing: buffer[maximumDataHeader...]))
        guard filled > 0 else { return nil }
        var header: [UInt8] = [0x08]
        appendVarint(connectionID, to: &header)
        header.append(0x12)
        appendVarint(UInt64(filled), to: &header)
        let start = maximumDataHeader - header.count
        UnsafeMutableRawBufferPointer(rebasing: buffer[start..<maximumDataHeader]).copyBytes(from: header)
        return start..<(maximumDataHeader + filled)
    }

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }
}

/// A relay frame's connection id and kind, read without decoding (or copying) its payload.
public struct RelayFrameHeader: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// `payload` is where the bytes sit in the frame.
        case data
        case fin
        case rst
        case credit(UInt32)
        case switchOffset(UInt64)
        case hello
        case open
        case punch
        case resume
    }

    public var connectionID: UInt64
    public var kind: Kind
    /// The data bytes' range in the frame (empty for other kinds).
    public var payload: Range<Int>

    /// Walks the frame's protobuf fields. Unknown fields are skipped as protobuf requires; when several body
    /// fields appear the last wins (protobuf's rule for a oneof).
    public init(scanning frame: UnsafeRawBufferPointer) throws(FrameError) {
        guard frame.count <= RelayFrame.maximumFrameSize else {
            throw FrameError("relay frame of \(frame.count) bytes exceeds the \(RelayFrame.maximumFrameSize)-byte limit")
        }
        var reader = Reader(bytes: frame)
        var connectionID: UInt64 = 0
        var kind: Kind? = nil
        var payload = 0..<0
        while !reader.atEnd {
            let key = try reader.varint()
            let field = key >> 3
            switch (field, key & 7) {
            case (1, 0): connectionID = try reader.varint()
            case (2, 2):
                payload = try reader.lengthDelimited()
                kind = .data
            case (3, 0):
                _ = try reader.varint()
                kind = .fin
            case (4, 2):
                _ = try reader.lengthDelimited()
                kind = .rst
            case (5, 0): kind = .credit(UInt32(truncatingIfNeeded: try reader.varint()))
            case (6, 0): kind = .switchOffset(try reader.varint())
            case (7, 2):
                _ = try reader.lengthDelimited()
                kind = .hello
            case (8, 2):
                _ = try reader.lengthDelimited()
                kind = .open
            case (9, 2):
                _ = try reader.lengthDelimited()
                kind = .punch
            case (10, 2):
                _ = try reader.lengthDelimited()
                kind = .resume
            case (1...10, _): throw FrameError("relay frame field \(field) has the wrong wire type \(key & 7)")
            case (_, let wireType): try reader.skip(wireType: wireType)
            }
            if kind != .data { payload = 0..<0 }
        }
        guard let kind else { throw FrameError("relay frame of unknown or missing type (\(frame.count) bytes)") }
        self.connectionID = connectionID
        self.kind = kind
        self.payload = payload
    }

    public init(scanning frame: [UInt8]) throws(FrameError) {
        let scanned = frame.withUnsafeBytes { bytes in
            Result { () throws(FrameError) -> RelayFrameHeader in try RelayFrameHeader(scanning: bytes) }
        }
        self = try scanned.get()
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        var atEnd: Bool { offset >= bytes.count }

        mutating func varint() throws(FrameError) -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while offset < bytes.count, shift < 64 {
                let byte = bytes[offset]
                offset += 1
                value |= UInt64(byte & 0x7f) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
            throw FrameError("relay frame has a truncated or overlong varint")
        }

        mutating func lengthDelimited() throws(FrameError) -> Range<Int> {
            let length = try varint()
            guard length <= UInt64(bytes.count - offset) else { throw FrameError("relay frame field runs past its end") }
            let range = offset..<(offset + Int(length))
            offset += Int(length)
            return range
        }

        mutating func skip(wireType: UInt64) throws(FrameError) {
            switch wireType {
            case 0: _ = try varint()
            case 1, 5:
                let size = wireType == 1 ? 8 : 4
                guard bytes.count - offset >= size else { throw FrameError("relay frame field runs past its end") }
                offset += size
            case 2: _ = try lengthDelimited()
            default: throw FrameError("relay frame has an unsupported wire type \(wireType)")
            }
        }
    }
}

/// Process-wide malloc tuning for relaying. Every relayed frame is an allocation of up to 256 KiB freed soon after (in
/// libzmq and here); with glibc's defaults the freed memory at the top of a heap is handed back to the kernel at
/// once (trim threshold 128 KiB) and faulted in again for the next frame, which cost more than the copies.
/// Keeping up to 64 MiB of freed memory (and never mmapping blocks below 1 MiB) removes that churn; it is memory
/// the process used a moment ago, so the relay's bounds still hold.
public enum RelayAllocator {
    private typealias MallOpt = @convention(c) (Int32, Int32) -> Int32

    public static func tune() {
        // mallopt is not in Swift's Glibc module (malloc.h); look it up. M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: MallOpt.self)
        _ = mallopt(-1, 64 << 20)
        _ = mallopt(-3, 1 << 20)
    }

    /// Hands the freed memory that ``tune()`` keeps back to the kernel (malloc_trim(0), every arena): for a
    /// process whose relay has gone idle, so its resident size returns to what it holds.
    public static func trim() {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return }
        _ = unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)(0)
    }
}
