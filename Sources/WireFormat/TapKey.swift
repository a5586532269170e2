import CSodium
import FoundationEssentials
import Glibc
import PlainText

/// The kinds of tap events, the middle part of a topic.
public enum TapKind: String, Sendable, CaseIterable {
    case membership
    /// Open, upgrade, refused, failed and close.
    case connection
    /// Periodic samples of open connections (many: a subscriber may leave them out).
    case flow
    /// Relayed payload, only on the capture port of a broker started with the capture opt-in.
    case capture
}

extension TapEvent {
    /// The kind this event is published under (its topic's middle part, and its sequence's counter).
    public var tapKind: TapKind {
        switch event {
        case .membership: .membership
        case .connection(let connection) where connection.kind == .flow: .flow
        case .capture: .capture
        case .connection, nil: .connection
        }
    }
}

/// A mesh's tap key: it names the mesh's topics and seals its events, so a subscriber without the mesh's secret
/// learns nothing of that mesh (see the schema's Tap section for the exact construction, for other languages).
public struct TapKey: Sendable {
    let bytes: [UInt8]
    /// The topic parts that do not depend on the node, made once: every event published needs them.
    private let meshTag: String
    private let kindTags: [TapKind: String]

    public init(secret: MeshSecret, mesh: String) {
        bytes = MeshKey(secret: secret, mesh: mesh).derive("boxer-mesh/v1/tap")
        meshTag = Self.tag("mesh", key: bytes)
        kindTags = Dictionary(uniqueKeysWithValues: TapKind.allCases.map { [bytes] in ($0, Self.tag("kind/\($0.rawValue)", key: bytes)) })
    }

    /// 16 hex digits of HMAC-SHA-256(tap key, label).
    private static func tag(_ label: String, key: [UInt8]) -> String {
        MeshKey.hmac(key: key, parts: [Array(label.utf8)]).prefix(8).hex
    }

    /// The topic frame of an event of `kind` about `node`.
    public func topic(_ kind: TapKind, node: String) -> String {
        "\(prefix(kind))\(Self.tag("node/\(node)", key: bytes))"
    }

    /// The subscription prefix for this mesh and, optionally, one kind of event.
    public func prefix(_ kind: TapKind? = nil) -> String {
        kind.map { "\(meshTag)/\(kindTags[$0]!)/" } ?? "\(meshTag)/"
    }

    /// nonce ‖ XSalsa20-Poly1305(event).
    public func seal(_ event: TapEvent) -> [UInt8] {
        let plain: [UInt8] = try! event.serializedBytes()
        let nonce = Sodium.randomBytes(Int(crypto_secretbox_NONCEBYTES))
        var sealed = [UInt8](repeating: 0, count: plain.count + Int(crypto_secretbox_MACBYTES))
        crypto_secretbox_easy(&sealed, plain, UInt64(plain.count), nonce, bytes)
        return nonce + sealed
    }

    /// Opens a sealed event; throws when it was not sealed with this key (another mesh, a wrong secret) or is
    /// damaged.
    public func open(_ frame: [UInt8]) throws(FrameError) -> TapEvent {
        let nonceSize = Int(crypto_secretbox_NONCEBYTES)
        let macSize = Int(crypto_secretbox_MACBYTES)
        guard frame.count >= nonceSize + macSize else { throw FrameError("tap message of \(frame.count) bytes is too short") }
        let nonce = Array(frame[..<nonceSize])
        let sealed = Array(frame[nonceSize...])
        var plain = [UInt8](repeating: 0, count: sealed.count - macSize)
        guard crypto_secretbox_open_easy(&plain, sealed, UInt64(sealed.count), nonce, bytes) == 0 else {
            throw FrameError("tap message does not open with this mesh's key (wrong secret, or damaged)")
        }
        do {
            return try TapEvent(serializedBytes: plain)
        } catch {
            throw FrameError("malformed tap event (\(plain.count) bytes): \(error)")
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, the schema's `*_unix_ms`.
public func unixMilliseconds() -> UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }
