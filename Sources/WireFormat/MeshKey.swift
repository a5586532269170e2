import CSodium

/// A per-mesh key derived from the secret, and the handshake proofs made with it (libsodium's HMAC-SHA-256).
///
/// Both sides prove knowledge of the key over both nonces, so neither the secret nor a replayable value crosses
/// the wire, and a node also learns that the broker it talks to knows the secret.
public struct MeshKey: Sendable {
    let bytes: [UInt8]

    /// key = HMAC-SHA-256(secret, "boxer-mesh/v1/mesh-key" ‖ mesh): one secret yields unrelated keys per mesh.
    public init(secret: MeshSecret, mesh: String) {
        bytes = Self.hmac(key: secret.bytes, parts: [Array("boxer-mesh/v1/mesh-key".utf8), Array(mesh.utf8)])
    }

    /// Who makes a proof; the label keeps a broker's proof from ever passing as a client's.
    public enum Prover: String, Sendable {
        case broker = "boxer-mesh/v1/broker-proof"
        case client = "boxer-mesh/v1/client-proof"
    }

    /// The proof over everything the handshake agreed on. A name given as a prefix adds a part, so nobody on the
    /// path can turn a prefix into a name or back (a plain name's proof stays as it always was).
    public func proof(by prover: Prover, hello: Boxermesh_V1_Hello, serverNonce: [UInt8]) -> [UInt8] {
        Self.hmac(
            key: bytes,
            parts: [
                Array(prover.rawValue.utf8), Array(hello.mesh.utf8), Array(hello.nodeName.utf8),
                [UInt8(truncatingIfNeeded: hello.role.rawValue)], [UInt8](hello.clientNonce), serverNonce,
            ] + (hello.nodeNameIsPrefix ? [Array("name-prefix".utf8)] : []))
    }

    /// A key for one purpose, derived from this mesh key: HMAC-SHA-256(mesh key, label).
    public func derive(_ label: String) -> [UInt8] { Self.hmac(key: bytes, parts: [Array(label.utf8)]) }

    /// Constant-time comparison of an expected and a received proof.
    public static func matches(_ expected: [UInt8], _ received: [UInt8]) -> Bool {
        expected.count == received.count && sodium_memcmp(expected, received, expected.count) == 0
    }

    /// Each part is length-prefixed, so ("ab","c") and ("a","bc") never hash alike.
    static func hmac(key: [UInt8], parts: [[UInt8]]) -> [UInt8] {
        Sodium.ready()
        var state = crypto_auth_hmacsha256_state()
        crypto_auth_hmacsha256_init(&state, key, key.count)
        for part in parts {
            let length = withUnsafeBytes(of: UInt32(part.count).bigEndian, Array.init)
            crypto_auth_hmacsha256_update(&state, length, 4)
            crypto_auth_hmacsha256_update(&state, part, UInt64(part.count))
        }
        var out = [UInt8](repeating: 0, count: Int(crypto_auth_hmacsha256_BYTES))
        crypto_auth_hmacsha256_final(&state, &out)
        return out
    }
}

/// libsodium's process-wide setup and its random source.
public enum Sodium {
    private static let initialized: Bool = sodium_init() >= 0

    static func ready() { precondition(initialized, "libsodium failed to initialize") }

    /// Cryptographically secure random bytes (nonces, session tokens).
    public static func randomBytes(_ count: Int) -> [UInt8] {
        ready()
        var out = [UInt8](repeating: 0, count: count)
        randombytes_buf(&out, count)
        return out
    }
}
