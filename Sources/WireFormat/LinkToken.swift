/// The token the broker gives both ends of a new link. Before any app byte, each end sends its proof over the
/// punched connection and checks the other's, so a stranger who reaches a punched port is never handed to an app.
public struct LinkToken: Sendable {
    let bytes: [UInt8]

    public static let proofSize = 32

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The proof one end sends: HMAC-SHA-256(token, role ‖ connection id). The roles differ, so a proof echoed
    /// back never passes.
    public func proof(initiator: Bool, connectionID: UInt64) -> [UInt8] {
        let role = initiator ? "boxer-mesh/v1/link/initiator" : "boxer-mesh/v1/link/acceptor"
        return MeshKey.hmac(key: bytes, parts: [Array(role.utf8), withUnsafeBytes(of: connectionID.bigEndian, Array.init)])
    }

    public func matches(_ received: [UInt8], initiator: Bool, connectionID: UInt64) -> Bool {
        MeshKey.matches(proof(initiator: initiator, connectionID: connectionID), received)
    }

    /// What both ends show the broker to resume a relayed connection after it restarted:
    /// HMAC-SHA-256(token, "boxer-mesh/v1/relay/resume" ‖ connection id). Only the two ends hold the token, so a
    /// broker that lost all state can still tell they belong together (the same value from both).
    public func resumeProof(connectionID: UInt64) -> [UInt8] {
        MeshKey.hmac(key: bytes, parts: [Array("boxer-mesh/v1/relay/resume".utf8), withUnsafeBytes(of: connectionID.bigEndian, Array.init)])
    }

    /// The token of the successor `connectionID` of the spare link this token proved:
    /// HMAC-SHA-256(token, "boxer-mesh/v1/link/successor" ‖ connection id). Only the two ends hold the spare's token,
    /// and the successor is proven with its own, so a proof of one link never passes for another.
    public func successor(connectionID: UInt64) -> LinkToken {
        LinkToken(MeshKey.hmac(key: bytes, parts: [Array("boxer-mesh/v1/link/successor".utf8), withUnsafeBytes(of: connectionID.bigEndian, Array.init)]))
    }
}
