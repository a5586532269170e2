import Foundation

/// The topic frame of a tap message: "<mesh>/<kind>/<node>". Subscribers filter by prefix: "<mesh>/" for a mesh,
/// "<mesh>/<kind>/" for one kind of event in it.
public struct TapTopic: Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case membership
        case connection
    }

    public var mesh: String
    public var kind: Kind
    public var node: String

    public init(mesh: String, kind: Kind, node: String) {
        self.mesh = mesh
        self.kind = kind
        self.node = node
    }

    public var description: String { "\(mesh)/\(kind.rawValue)/\(node)" }

    /// The subscription prefix for a mesh and, optionally, a kind of event.
    public static func prefix(mesh: String, kind: Kind? = nil) -> String {
        kind.map { "\(mesh)/\($0.rawValue)/" } ?? "\(mesh)/"
    }
}

extension TapEvent {
    public func frame() -> [UInt8] { try! serializedBytes() }

    public init(frame: [UInt8]) throws(FrameError) {
        do {
            try self.init(serializedBytes: frame)
        } catch {
            throw FrameError("malformed tap event (\(frame.count) bytes): \(error)")
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, the schema's `*_unix_ms`.
public func unixMilliseconds() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }
