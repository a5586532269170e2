import Synchronization
import WireFormat

/// Proven direct links to the peers this node's app connects to, made ahead of its connects (see the schema's
/// ConnectRequest.spare): a connect to such a peer takes one and needs no broker, no reflector and no punch — as a
/// rule not even a round trip (``SpareClaim``). Only the bookkeeping lives here; making, claiming and closing the
/// links is ``LinkManager``'s (`LinkManager+Spares.swift`).
///
/// Only for a peer the app connects to again and again: spares cost a punch each on both nodes, so a peer gets
/// them from the app's ``connectsBeforeSpares``th connect to it within ``Timing/Choice/spareDemandWindow`` (an app
/// that connects once to each of many peers makes none). Bounded: a peer starts with ``initialPerPeer`` spares; a connect that finds none while more are being made
/// doubles what the peer gets, up to `perPeer`; all peers together hold at most `total`. A peer the app has not
/// connected to for ``Timing/Choice/spareIdle`` loses its spares, and one that refused a spare, or for which three
/// in a row failed, gets none for ``Timing/Choice/spareBackoff``.
///
/// Lent: the ready spares to a peer go to the app process that connects to it (its shim claims them itself, with
/// no node thread on the connect's way: ``LinkManager/lendSpares(towards:to:)``). A lent spare stays the pool's,
/// counted as held, until the process says it claimed it or gives it back.
final class SparePool: Sendable {
    /// One proven link, ready to be claimed (on the accepting side, ``SpareInbox`` holds the other end).
    struct Spare: Sendable {
        let fd: Int32
        /// The broker's id for it: the connection's id once a connect takes it.
        let id: UInt64
        let peer: Member
        /// Our local port: on the connecting side, the mesh port our app sees as its own.
        let localPort: UInt16
        /// The peer's public endpoint it runs to.
        let via: Endpoint
        /// The token it was proven with: its successor's derives from it.
        let token: LinkToken
        /// The accepting node's public endpoint for this spare's successor, which it offered once the spare was
        /// proven (nil: it makes none); it punches from the same port where that is claimed.
        var successor: Endpoint? = nil

        /// The connection it becomes once claimed, as the broker would have offered it.
        var offer: Boxermesh_V1_ConnectOffer {
            .with {
                $0.connectionID = id
                $0.peer = peer
                $0.endpoint = via.message
            }
        }
    }

    /// A spare lent to an app process (``borrower``), with the port its claim's successor is punched from.
    struct Loan: Sendable {
        let spare: Spare
        let successor: DirectPath.PunchPort?
        let borrower: any SpareBorrower
        /// Asked back (the peer went idle): not asked again.
        var recalled = false
    }

    static let initialPerPeer = 2
    static let connectsBeforeSpares = 3

    let perPeer: Int
    let total: Int
    private let state = Mutex(State())

    private struct State {
        var peers: [IPv4Address: Peer] = [:]
        var held: Int { peers.values.reduce(0) { $0 + $1.spares.count + $1.lent.count + $1.making } }
    }

    private struct Peer {
        /// Newest last: a connect takes the newest (its mappings are the freshest).
        var spares: [Spare] = []
        var lent: [UInt64: Loan] = [:]
        /// The app process that connected to the peer last, which its spares are lent to as they become ready.
        var borrower: (any SpareBorrower)? = nil
        var making = 0
        var wanted: Int
        var lastUsed: ContinuousClock.Instant
        var backoffUntil: ContinuousClock.Instant?
        /// The app's latest connects to the peer, until it has spares: do they show demand?
        var connects: [ContinuousClock.Instant] = []
        /// Spares that failed in a row (a busy reflector, a lost punch): three back the peer off.
        var failures = 0
    }

    static let failuresBeforeBackoff = 3

    /// `perPeer` 0 keeps no spares at all.
    init(perPeer: Int, total: Int = 32) {
        self.perPeer = perPeer
        self.total = total
    }

    var enabled: Bool { perPeer > 0 }

    /// A spare to `peer`, if one is ready; the caller now owns its descriptor. Counts as a use of the peer either
    /// way, and a peer whose pool ran dry gets more.
    ///
    /// With `usable`, only a spare it approves is taken, and a pool found empty is left for the caller's next
    /// try without it (which counts the use).
    func take(towards peer: IPv4Address, now: ContinuousClock.Instant = .now, onlyIf usable: ((Spare) -> Bool)? = nil) -> Spare? {
        state.withLock { state in
            guard var entry = state.peers[peer] else { return nil }
            if let usable {
                guard let newest = entry.spares.last, usable(newest) else { return nil }
            }
            entry.lastUsed = now
            let spare = entry.spares.popLast()
            if spare == nil, entry.making > 0 { entry.wanted = min(perPeer, entry.wanted * 2) }
            state.peers[peer] = entry
            return spare
        }
    }

    /// The app connects to `peer` (call once per connect): how many spares to start making towards it now,
    /// counted as being made until ``made(_:)`` or ``failed(towards:refused:now:)``.
    func reserve(towards peer: IPv4Address, now: ContinuousClock.Instant = .now) -> Int {
        guard enabled else { return 0 }
        return state.withLock { state in
            var entry = state.peers[peer] ?? Peer(wanted: min(perPeer, Self.initialPerPeer), lastUsed: now)
            entry.lastUsed = now
            if entry.connects.count < Self.connectsBeforeSpares {
                entry.connects = entry.connects.filter { now - $0 < Timing.Choice.spareDemandWindow } + [now]
                guard entry.connects.count >= Self.connectsBeforeSpares else {
                    state.peers[peer] = entry
                    return 0
                }
            }
            if let until = entry.backoffUntil, now < until {
                state.peers[peer] = entry
                return 0
            }
            entry.backoffUntil = nil
            let room = max(0, total - state.held)
            let count = min(room, max(0, entry.wanted - entry.spares.count - entry.lent.count - entry.making))
            entry.making += count
            state.peers[peer] = entry
            return count
        }
    }

    /// A connect is about to claim a spare towards `peer`, or a spare is lent: whether its claim asks for the
    /// spare's successor (the pool wants one more, and may hold it), counted as being made as for
    /// ``reserve(towards:now:)``. A lent spare's successor stands in for it: lent ones are not counted here.
    func reserveSuccessor(towards peer: IPv4Address, now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { state in
            guard var entry = state.peers[peer], entry.backoffUntil.map({ now >= $0 }) ?? true, state.held < total,
                entry.spares.count + entry.making < entry.wanted
            else { return false }
            entry.making += 1
            state.peers[peer] = entry
            return true
        }
    }

    /// A successor asked for is not coming (the peer made none, or the claim failed): not a failure of the peer.
    func abandonSuccessor(towards peer: IPv4Address) {
        state.withLock { state in state.peers[peer]?.making -= 1 }
    }

    /// A spare is ready. False when the pool no longer wants it (its peer went idle or was forgotten): the caller
    /// closes it.
    func made(_ spare: Spare) -> Bool {
        state.withLock { state in
            guard var entry = state.peers[spare.peer.ipv4] else { return false }
            entry.making -= 1
            entry.failures = 0
            state.peers[spare.peer.ipv4] = entry
            guard entry.spares.count + entry.lent.count < entry.wanted else { return false }
            state.peers[spare.peer.ipv4]!.spares.append(spare)
            return true
        }
    }

    /// Making a spare towards `peer` failed. Once it `refused` (it holds no more, or does not punch), or after
    /// ``failuresBeforeBackoff`` failures in a row, the peer gets none for a while; otherwise the next connect to
    /// it tries again.
    func failed(towards peer: IPv4Address, refused: Bool, now: ContinuousClock.Instant = .now) {
        state.withLock { state in
            guard var entry = state.peers[peer] else { return }
            entry.making -= 1
            entry.failures += 1
            if refused || entry.failures >= Self.failuresBeforeBackoff {
                entry.backoffUntil = now + Timing.Choice.spareBackoff
                entry.failures = 0
            }
            state.peers[peer] = entry
        }
    }

    /// Forgets the peers not used for ``Timing/Choice/spareIdle``; returns their spares for the caller to close,
    /// and the loans to ask back (a peer with loans out is kept until they end).
    func sweep(now: ContinuousClock.Instant = .now) -> (closing: [Spare], recalling: [Loan]) {
        state.withLock { state in
            var closing: [Spare] = [], recalling: [Loan] = []
            for (peer, entry) in state.peers where now - entry.lastUsed >= Timing.Choice.spareIdle {
                closing += entry.spares
                guard !entry.lent.isEmpty else {
                    state.peers[peer] = nil
                    continue
                }
                state.peers[peer]!.spares = []
                state.peers[peer]!.borrower = nil
                for (id, loan) in entry.lent where !loan.recalled {
                    state.peers[peer]!.lent[id]!.recalled = true
                    recalling.append(loan)
                }
            }
            return (closing, recalling)
        }
    }

    /// Forgets `peer` (it left or expired); returns its spares and loans for the caller to close.
    func forget(_ peer: IPv4Address) -> (spares: [Spare], loans: [Loan]) {
        state.withLock { state in
            let entry = state.peers.removeValue(forKey: peer)
            return (entry?.spares ?? [], entry.map { Array($0.lent.values) } ?? [])
        }
    }

    // MARK: Lending

    /// The spares ready towards `peer`, taken out to be lent to its borrower — `borrower`, which connected to it
    /// just now, or the one before — with that borrower; nil when there are none or nobody to lend to. The caller
    /// records each with ``recordLoan(_:)`` before it sends it.
    func lend(towards peer: IPv4Address, to borrower: (any SpareBorrower)? = nil) -> (any SpareBorrower, [Spare])? {
        state.withLock { state in
            guard var entry = state.peers[peer] else { return nil }
            if let borrower { entry.borrower = borrower }
            let ready = entry.spares
            if entry.borrower != nil { entry.spares = [] }
            state.peers[peer] = entry
            guard let to = entry.borrower, !ready.isEmpty else { return nil }
            return (to, ready)
        }
    }

    /// A spare is lent. False when its peer was forgotten meanwhile: the caller closes it.
    func recordLoan(_ loan: Loan) -> Bool {
        state.withLock { state in
            guard state.peers[loan.spare.peer.ipv4] != nil else { return false }
            state.peers[loan.spare.peer.ipv4]!.lent[loan.spare.id] = loan
            return true
        }
    }

    /// `borrower` says it claimed (a connect took it: a use of the peer) or gave back lent spare `id`; the loan, or
    /// nil when it has none such.
    func endLoan(_ id: UInt64, of borrower: ObjectIdentifier, claimed: Bool, now: ContinuousClock.Instant = .now) -> Loan? {
        state.withLock { state in
            guard let peer = state.peers.first(where: { $0.value.lent[id].map { ObjectIdentifier($0.borrower) == borrower } ?? false })?.key,
                let loan = state.peers[peer]!.lent.removeValue(forKey: id)
            else { return nil }
            if claimed { state.peers[peer]!.lastUsed = now }
            return loan
        }
    }

    /// `borrower`'s process ended: its loans, which nobody can claim any more; it is nobody's borrower from now on.
    func endLoans(of borrower: ObjectIdentifier) -> [Loan] {
        state.withLock { state in
            var ended: [Loan] = []
            for (peer, entry) in state.peers {
                if let current = entry.borrower, ObjectIdentifier(current) == borrower { state.peers[peer]!.borrower = nil }
                for (id, loan) in entry.lent where ObjectIdentifier(loan.borrower) == borrower {
                    state.peers[peer]!.lent[id] = nil
                    ended.append(loan)
                }
            }
            return ended
        }
    }

    /// How many spares are ready towards `peer`.
    func ready(towards peer: IPv4Address) -> Int { state.withLock { $0.peers[peer]?.spares.count ?? 0 } }
}
