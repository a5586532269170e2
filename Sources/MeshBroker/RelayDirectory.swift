import Synchronization
import WireFormat

/// What the broker's control plane tells its relay: which node sessions are live, and which two sessions each
/// signalled connection joins. The control plane writes it from its thread, the relay reads it from its own; a
/// mutex keeps both consistent. The relay forwards frames only between the two sessions of a connection the
/// control plane signalled, so a node proves itself to the relay with its control-plane session token.
public final class RelayDirectory: Sendable {
    /// Who a signalled connection joins, on the mesh: what the relay's capture names its segments by.
    struct Ends: Equatable {
        let mesh: String
        let initiator: Member
        let acceptor: Member
        /// The port the initiator connected to on the acceptor.
        let port: UInt16
    }

    struct Pairing: Equatable {
        let initiator: [UInt8]
        let acceptor: [UInt8]
        let ends: Ends
        let signalled: ContinuousClock.Instant
        /// The relay opened it.
        var relayed = false
        /// When the relay let it go (closed, reset or moved to a direct link).
        var ended: ContinuousClock.Instant?
    }

    private struct State {
        /// Live node sessions and their mesh.
        var sessions: [[UInt8]: String] = [:]
        var pairings: [UInt64: Pairing] = [:]
        var lastPurge = ContinuousClock.now
    }

    private let state = Mutex(State())

    /// A signalled connection that was never relayed is forgotten after this long (its punch has long succeeded
    /// or failed); a relayed one is kept this long after it ended, so late reports still find it.
    static let retention = Duration.seconds(120)

    public init() {}

    // MARK: Control plane

    func sessionOpened(token: [UInt8], mesh: String) {
        state.withLock { $0.sessions[token] = mesh }
    }

    /// The session left or expired: its connections can no longer be opened, and the relay resets live ones.
    func sessionEnded(token: [UInt8]) {
        state.withLock { state in
            state.sessions[token] = nil
            state.pairings = state.pairings.filter { $0.value.initiator != token && $0.value.acceptor != token }
        }
    }

    func connectionSignalled(_ id: UInt64, initiator: [UInt8], acceptor: [UInt8], ends: Ends) {
        let now = ContinuousClock.now
        state.withLock { state in
            state.pairings[id] = Pairing(initiator: initiator, acceptor: acceptor, ends: ends, signalled: now)
            guard now - state.lastPurge >= .seconds(1) else { return }
            state.lastPurge = now
            state.pairings = state.pairings.filter { _, pairing in
                if let ended = pairing.ended { return now - ended < Self.retention }
                return pairing.relayed || now - pairing.signalled < Self.retention
            }
        }
    }

    /// Whether the relay carried this connection: a later report of a direct link is then an upgrade.
    func wasRelayed(_ id: UInt64) -> Bool {
        state.withLock { $0.pairings[id]?.relayed ?? false }
    }

    // MARK: Relay

    func isLive(_ token: [UInt8]) -> Bool {
        state.withLock { $0.sessions[token] != nil }
    }

    /// The mesh of a live session.
    func mesh(of token: [UInt8]) -> String? {
        state.withLock { $0.sessions[token] }
    }

    func pairing(_ id: UInt64) -> Pairing? {
        state.withLock { $0.pairings[id] }
    }

    /// The session token that proves a splice hello for `id` in `role`: that end's, while the relay carries the
    /// connection (a splice only ever moves a relayed connection); nil otherwise.
    func spliceSession(_ id: UInt64, role: SpliceHello.Role) -> [UInt8]? {
        state.withLock { state in
            guard let pairing = state.pairings[id], pairing.relayed, pairing.ended == nil else { return nil }
            return role == .initiator ? pairing.initiator : pairing.acceptor
        }
    }

    func markRelayed(_ id: UInt64) {
        state.withLock { $0.pairings[id]?.relayed = true }
    }

    func markEnded(_ id: UInt64) {
        let now = ContinuousClock.now
        state.withLock { $0.pairings[id]?.ended = now }
    }

    /// For tests and status: live sessions and known pairings.
    var counts: (sessions: Int, pairings: Int) {
        state.withLock { ($0.sessions.count, $0.pairings.count) }
    }
}
