import Logging
import Synchronization
import WireFormat

/// The node's answers to its app's name lookups, without the broker: the mesh's membership as the broker pushes it
/// (``MemberTable``), also written out for the app to read itself (``HostsFile``), and the lookups that wait while
/// the table is being filled (before the first snapshot, after a missed update, while the node joins again). Pushes
/// arrive on the control client's thread; lookups come from the shim service's threads.
final class MeshNames: Sendable {
    /// What the table says of a name or an address.
    enum Answer: Equatable {
        case found(Member)
        case notFound
        /// The table is being filled: ask again once ``waitUntilSynced(timeout:)`` returns.
        case notSynced
    }

    private struct State {
        var table = MemberTable()
        /// A MembershipResync is under way (one at a time).
        var resyncing = false
        /// A resync was needed before the session was there to send it.
        var resyncPending = false
    }

    /// Weak: the session holds this table.
    private struct SessionReference {
        weak var session: MeshSession?
    }

    private let state = Mutex(State())
    /// Open while the table is in step (set with the table, under `state`'s lock).
    private let synced = Latch()
    private let session = Mutex(SessionReference())
    private let logger: Logger
    /// The table as the app reads it, if it does.
    let hosts: HostsFile?

    init(logger: Logger, hosts: HostsFile? = nil) {
        self.logger = logger
        self.hosts = hosts
    }

    /// Applies a membership push; false for any other message (the caller handles those).
    func receive(_ message: ControlMessage) -> Bool {
        guard case .membershipUpdate(let update) = message.body else { return false }
        let outcome = state.withLock { state in
            let outcome = state.table.apply(update)
            if let hosts { Self.follow(outcome, of: update, table: state.table, in: hosts) }
            followSync(state.table)
            return outcome
        }
        if case .outOfStep(let why) = outcome {
            logger.warning("the mesh's membership table lost step with the broker (\(why)); asking for a snapshot")
            resyncSoon()
        }
        return true
    }

    /// Brings the hosts file to what the table holds after `update`: the one change, or the whole table once a
    /// snapshot's last part arrived; "not in step" once the table lost it.
    private static func follow(
        _ outcome: MemberTable.Outcome, of update: Boxermesh_V1_MembershipUpdate, table: MemberTable, in hosts: HostsFile
    ) {
        switch outcome {
        case .ignored: break
        case .outOfStep: hosts.clear()
        case .applied:
            switch update.kind {
            case .join: hosts.insert(update.members[0])
            case .leave: hosts.remove(update.members[0])
            default: if !update.more, let members = table.members { hosts.replace(with: members) }
            }
        }
    }

    /// What the table says of `name`, at once.
    func lookup(name: String) -> Answer {
        state.withLock { state in
            guard state.table.isSynced else { return .notSynced }
            return state.table.member(named: name).map(Answer.found) ?? .notFound
        }
    }

    /// What the table says of `address`, at once.
    func lookup(address: UInt32) -> Answer {
        state.withLock { state in
            guard state.table.isSynced else { return .notSynced }
            return state.table.member(at: address).map(Answer.found) ?? .notFound
        }
    }

    /// Waits until the table answers lookups, at most `timeout`; false when it still does not.
    func waitUntilSynced(timeout: Duration) async -> Bool { await synced.wait(timeout: timeout) }

    /// Opens or closes ``synced`` as `table` is in step or not (under `state`'s lock).
    private func followSync(_ table: MemberTable) {
        if table.isSynced { synced.open() } else { synced.close() }
    }

    /// The session that sends resyncs: set once joined.
    func attach(_ session: MeshSession) {
        self.session.withLock { $0.session = session }
        if state.withLock({ $0.resyncPending }) { resyncSoon() }
    }

    /// Forgets the table (the node lost its session: the mesh may have changed unseen); the snapshot that comes with
    /// the next Welcome fills it again.
    func forget() {
        state.withLock { state in
            state.table.forget()
            hosts?.clear()
            followSync(state.table)
        }
    }

    /// Whether the table must be filled again: it missed a change the broker counted (`brokerVersion`, from a
    /// heartbeat; it then forgets what it holds), or it holds nothing and no resync is under way.
    func needsResync(brokerVersion: UInt64) -> Bool {
        state.withLock { state in
            guard !state.resyncing else { return false }
            if state.table.isBehind(brokerVersion) {
                state.table.forget()
                hosts?.clear()
                followSync(state.table)
                return true
            }
            return !state.table.isSynced
        }
    }

    /// Asks the broker for a snapshot (pushed before the reply), unless a request for one is under way already.
    func resync(through session: MeshSession) async {
        let claimed = state.withLock { state in
            state.resyncPending = false
            defer { state.resyncing = true }
            return !state.resyncing
        }
        guard claimed else { return }
        defer { state.withLock { $0.resyncing = false } }
        do {
            _ = try await session.request(.membershipResync(.init()), timeout: session.connectTimeout)
        } catch {
            logger.warning("could not get the mesh's membership from the broker (\(error)); the next heartbeat asks again")
        }
    }

    /// Resyncs from a task of its own (a push arrives on the control client's thread, which must not wait).
    private func resyncSoon() {
        let session = state.withLock { state -> MeshSession? in
            let session = self.session.withLock { $0.session }
            if session == nil { state.resyncPending = true }
            return session
        }
        guard let session else { return }
        Task { await resync(through: session) }
    }
}
