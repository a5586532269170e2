import SwiftProtobuf

public typealias ControlMessage = Boxermesh_V1_ControlMessage
public typealias TapEvent = Boxermesh_V1_TapEvent
public typealias Member = Boxermesh_V1_Member

/// Every control-plane ZeroMQ message is one frame holding one ``ControlMessage``.
extension ControlMessage {
    /// Frames larger than this are refused before decoding (and libzmq drops peers sending more).
    public static let maximumFrameSize = 64 * 1024

    /// Decodes one frame, refusing oversized, malformed and empty (unknown-type) messages with a clear error.
    public init(frame: [UInt8]) throws(FrameError) {
        guard frame.count <= Self.maximumFrameSize else {
            throw FrameError("message of \(frame.count) bytes exceeds the \(Self.maximumFrameSize)-byte limit")
        }
        do {
            try self.init(serializedBytes: frame)
        } catch {
            throw FrameError("malformed message (\(frame.count) bytes): \(error)")
        }
        guard body != nil else { throw FrameError("message of unknown or missing type (\(frame.count) bytes)") }
    }

    public func frame() -> [UInt8] {
        // Serializing a message built from valid Swift values cannot fail (no required fields in proto3).
        try! serializedBytes()
    }

    /// The reply skeleton for this request: same request id.
    public func reply(_ body: OneOf_Body) -> ControlMessage {
        var reply = ControlMessage()
        reply.requestID = requestID
        reply.body = body
        return reply
    }
}

extension Member {
    public var ipv4: IPv4Address { IPv4Address(address) }
}

extension Boxermesh_V1_ErrorReply {
    public init(_ code: Boxermesh_V1_ErrorCode, _ message: String) {
        self.init()
        self.code = code
        self.message = message
    }
}

/// A frame could not be decoded; the message says why.
public struct FrameError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
