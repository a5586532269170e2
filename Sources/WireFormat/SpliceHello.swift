/// What a node sends first on a TCP connection to the broker's splice port (the schema's Relay, 6.): which relayed
/// connection it is one end of, which end, and a proof made with its session token, which only that node and the
/// broker hold. The broker joins the two ends of a connection it signalled; the nodes then prove the link token to
/// each other through the joined connection, so a broker mix-up is caught too.
public struct SpliceHello: Equatable, Sendable {
    /// "BMS1", the connection id (big-endian), the role, the proof.
    public static let size = 45

    public enum Role: UInt8, Sendable {
        case initiator = 1
        case acceptor = 2
    }

    public var connectionID: UInt64
    public var role: Role
    public var proof: [UInt8]

    private static let magic = Array("BMS1".utf8)

    /// A node's hello, its proof made with its session token.
    public init(connectionID: UInt64, role: Role, session: [UInt8]) {
        self.connectionID = connectionID
        self.role = role
        proof = Self.proof(session: session, connectionID: connectionID, role: role)
    }

    /// HMAC-SHA-256(session token, "boxer-mesh/v1/relay/splice" ‖ role ‖ connection id).
    public static func proof(session: [UInt8], connectionID: UInt64, role: Role) -> [UInt8] {
        MeshKey.hmac(
            key: session,
            parts: [Array("boxer-mesh/v1/relay/splice".utf8), [role.rawValue], withUnsafeBytes(of: connectionID.bigEndian, Array.init)])
    }

    /// Whether the proof was made with `session`.
    public func proven(by session: [UInt8]) -> Bool {
        MeshKey.matches(Self.proof(session: session, connectionID: connectionID, role: role), proof)
    }

    public var bytes: [UInt8] {
        Self.magic + withUnsafeBytes(of: connectionID.bigEndian, Array.init) + [role.rawValue] + proof
    }

    /// Reads a hello of exactly ``size`` bytes.
    public init(parsing bytes: some Collection<UInt8>) throws(SpliceHelloError) {
        let bytes = Array(bytes)
        guard bytes.count == Self.size else { throw SpliceHelloError("a splice hello is \(Self.size) bytes, not \(bytes.count)") }
        guard Array(bytes[0..<4]) == Self.magic else { throw SpliceHelloError("not a splice hello (no BMS1 magic)") }
        connectionID = bytes[4..<12].reduce(0) { $0 << 8 | UInt64($1) }
        guard let role = Role(rawValue: bytes[12]) else { throw SpliceHelloError("unknown splice role \(bytes[12])") }
        self.role = role
        proof = Array(bytes[13...])
    }
}

/// A splice hello that is not one.
public struct SpliceHelloError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
