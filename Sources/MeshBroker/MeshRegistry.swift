import WireFormat

/// Who is in which mesh: sessions, names, virtual addresses and liveness. Pure state, no sockets, so the rules
/// (unique names, unique addresses, expiry) are tested without a network.
struct MeshRegistry {
    /// One authenticated peer: a node (with a name and an address) or a client tool (resolve, tap).
    struct Session {
        let token: [UInt8]
        let routingID: [UInt8]
        let mesh: String
        /// nil for a client session.
        let member: Member?
        var lastSeen: ContinuousClock.Instant
        /// Where the node punches its next inbound connection from (EndpointAdvert), until a connect takes it.
        var advertised: Boxermesh_V1_PublicEndpoint?
    }

    /// Why a node could not be admitted.
    struct Refusal: Error {
        let code: Boxermesh_V1_ErrorCode
        let message: String
    }

    let subnet: IPv4Subnet
    private(set) var sessions: [[UInt8]: Session] = [:]
    private var meshes: [String: MeshState] = [:]

    private struct MeshState {
        var pool: AddressPool
        var byName: [String: (member: Member, session: [UInt8])] = [:]
        var byAddress: [UInt32: String] = [:]
    }

    init(subnet: IPv4Subnet) { self.subnet = subnet }

    /// Opens a session for an authenticated hello. Nodes get their name and an address; a live name is refused.
    mutating func admit(
        _ hello: Boxermesh_V1_Hello, routingID: [UInt8], now: ContinuousClock.Instant, wallClockMs: UInt64
    ) throws(Refusal) -> Session {
        let token = Sodium.randomBytes(16)
        var member: Member? = nil
        if hello.role == .node {
            var mesh = meshes[hello.mesh] ?? MeshState(pool: AddressPool(subnet: subnet))
            if let holder = mesh.byName[hello.nodeName] {
                throw Refusal(
                    code: .errorNameTaken,
                    message: "name '\(hello.nodeName)' is already in use in mesh '\(hello.mesh)' (by \(holder.member.ipv4))")
            }
            let preferred = hello.requestedAddress == 0 ? nil : IPv4Address(hello.requestedAddress)
            guard let address = mesh.pool.allocate(preferred: preferred) else {
                throw Refusal(code: .errorAddressesExhausted, message: "mesh '\(hello.mesh)' has no free address left in \(subnet)")
            }
            var joined = Member()
            joined.name = hello.nodeName
            joined.address = address.value
            joined.joinedUnixMs = wallClockMs
            mesh.byName[joined.name] = (joined, token)
            mesh.byAddress[address.value] = joined.name
            meshes[hello.mesh] = mesh
            member = joined
        }
        let session = Session(token: token, routingID: routingID, mesh: hello.mesh, member: member, lastSeen: now)
        sessions[token] = session
        return session
    }

    /// The session for `token`, only if it arrives over the connection that opened it.
    func session(token: [UInt8], routingID: [UInt8]) -> Session? {
        guard let session = sessions[token], session.routingID == routingID else { return nil }
        return session
    }

    mutating func touch(token: [UInt8], now: ContinuousClock.Instant) {
        sessions[token]?.lastSeen = now
    }

    /// The node of session `token` punches its next inbound connection from `endpoint`.
    mutating func advertise(_ endpoint: Boxermesh_V1_PublicEndpoint, token: [UInt8]) {
        sessions[token]?.advertised = endpoint
    }

    /// The endpoint the node of session `token` advertised, if any; it is used up.
    mutating func takeAdvertised(token: [UInt8]) -> Boxermesh_V1_PublicEndpoint? {
        defer { sessions[token]?.advertised = nil }
        return sessions[token]?.advertised
    }

    /// Ends a session, freeing its name and address at once. Returns the ended session.
    @discardableResult
    mutating func remove(token: [UInt8]) -> Session? {
        guard let session = sessions.removeValue(forKey: token) else { return nil }
        if let member = session.member, var mesh = meshes[session.mesh] {
            mesh.byName[member.name] = nil
            mesh.byAddress[member.address] = nil
            mesh.pool.release(member.ipv4)
            // An emptied mesh keeps its pool, so the cursor keeps moving past recently freed addresses.
            meshes[session.mesh] = mesh
        }
        return session
    }

    /// Ends every session silent since before `deadline`; returns them.
    mutating func expire(silentSince deadline: ContinuousClock.Instant) -> [Session] {
        let stale = sessions.values.filter { $0.lastSeen < deadline }
        return stale.compactMap { remove(token: $0.token) }
    }

    /// The session of the node called `name` in `mesh`.
    func session(holding name: String, in mesh: String) -> Session? {
        meshes[mesh]?.byName[name].flatMap { sessions[$0.session] }
    }

    func member(named name: String, in mesh: String) -> Member? {
        meshes[mesh]?.byName[name]?.member
    }

    func member(at address: IPv4Address, in mesh: String) -> Member? {
        meshes[mesh]?.byAddress[address.value].flatMap { member(named: $0, in: mesh) }
    }

    func members(of mesh: String) -> [Member] {
        (meshes[mesh]?.byName.values.map(\.member) ?? []).sorted { $0.address < $1.address }
    }

    func memberCount(of mesh: String) -> Int { meshes[mesh]?.byName.count ?? 0 }
}
