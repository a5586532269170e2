import WireFormat

/// The mesh's names and addresses as this node knows them, kept from the broker's membership pushes: a snapshot,
/// then each change on top of the version before it (the schema's MembershipUpdate). Pure state without locks or
/// sockets (``MeshNames`` guards it), so the ordering rules are tested without a broker.
struct MemberTable {
    /// The version the table holds; nil while it holds nothing to answer from (before the first snapshot, and
    /// after ``forget()``).
    private(set) var version: UInt64?
    private var byName: [String: Member] = [:]
    private var byAddress: [UInt32: String] = [:]
    /// Parts of a snapshot whose last part has not arrived yet.
    private var partial: (version: UInt64, parts: UInt32, members: [Member])?

    /// What applying an update did.
    enum Outcome: Equatable {
        /// The table changed (or a snapshot part was kept).
        case applied
        /// Nothing to do: an update the table already holds, or a change while no snapshot is there to apply it to
        /// (the snapshot on its way covers it).
        case ignored
        /// The table lost step with the broker (a missed update, or one that makes no sense): it forgot everything
        /// and needs a fresh snapshot. The text says why, for the log.
        case outOfStep(String)
    }

    /// Answers lookups: a complete snapshot arrived and no step was missed since.
    var isSynced: Bool { version != nil }

    /// Applies one pushed update.
    mutating func apply(_ update: Boxermesh_V1_MembershipUpdate) -> Outcome {
        if let problem = Self.problem(in: update) { return lostStep(problem) }
        switch update.kind {
        case .snapshot:
            return receiveSnapshotPart(update)
        case .join, .leave:
            guard partial == nil else {
                return lostStep("a change (version \(update.version)) came before the snapshot's last part")
            }
            guard let version else { return .ignored }
            if update.version <= version { return .ignored }
            guard update.version == version + 1 else {
                return lostStep("missed membership updates \(version + 1)–\(update.version - 1)")
            }
            let member = update.members[0]
            if update.kind == .join {
                insert(member)
            } else {
                guard byName[member.name]?.address == member.address else {
                    return lostStep("'\(member.name)' \(member.ipv4) left, but the table did not hold it")
                }
                byName[member.name] = nil
                byAddress[member.address] = nil
            }
            self.version = update.version
            return .applied
        case .unspecified, .UNRECOGNIZED:
            preconditionFailure("problem(in:) refuses these")
        }
    }

    /// Drops everything: the table answers nothing until the next complete snapshot.
    mutating func forget() {
        version = nil
        byName = [:]
        byAddress = [:]
        partial = nil
    }

    /// The member called `name` (any case); nil when there is none, or the table is not synced.
    func member(named name: String) -> Member? {
        byName[name] ?? byName[name.lowercased()]
    }

    /// Every member; nil when the table is not synced.
    var members: [Member]? { isSynced ? Array(byName.values) : nil }

    /// The member holding `address`; nil when there is none, or the table is not synced.
    func member(at address: UInt32) -> Member? {
        byAddress[address].flatMap { byName[$0] }
    }

    /// Whether the broker's `version` (from a heartbeat) shows a change this table never got.
    func isBehind(_ brokerVersion: UInt64) -> Bool {
        guard let version else { return false }
        return brokerVersion > version
    }

    private mutating func receiveSnapshotPart(_ update: Boxermesh_V1_MembershipUpdate) -> Outcome {
        var members = update.members
        // Part 0 starts a snapshot (and replaces an unfinished one, whose last part was lost); any other part must
        // be the next of the snapshot under way.
        if update.part > 0 {
            guard let partial, partial.version == update.version, partial.parts == update.part else {
                return lostStep("snapshot part \(update.part) (version \(update.version)) without the parts before it")
            }
            members = partial.members + members
        }
        guard !update.more else {
            partial = (update.version, update.part + 1, members)
            return .applied
        }
        var names = Set<String>()
        var addresses = Set<UInt32>()
        for member in members {
            guard names.insert(member.name).inserted, addresses.insert(member.address).inserted else {
                return lostStep("a snapshot holds '\(member.name)' or \(member.ipv4) twice")
            }
        }
        forget()
        for member in members { insert(member) }
        version = update.version
        return .applied
    }

    private mutating func insert(_ member: Member) {
        // A name's old address and an address's old name go: the broker holds each name and address once.
        if let old = byName[member.name] { byAddress[old.address] = nil }
        if let oldName = byAddress[member.address] { byName[oldName] = nil }
        byName[member.name] = member
        byAddress[member.address] = member.name
    }

    private mutating func lostStep(_ why: String) -> Outcome {
        forget()
        return .outOfStep(why)
    }

    /// Why an update cannot be applied as it stands (a broken or hostile push), or nil.
    private static func problem(in update: Boxermesh_V1_MembershipUpdate) -> String? {
        switch update.kind {
        case .snapshot: break
        case .join, .leave:
            guard update.members.count == 1 else {
                return "a membership change with \(update.members.count) members (expected 1)"
            }
            guard !update.more else { return "a membership change marked as a snapshot part" }
        case .unspecified, .UNRECOGNIZED:
            return "a membership update of unknown kind \(update.kind.rawValue)"
        }
        for member in update.members {
            guard (try? MeshName.validated(member.name, role: "node name")) == member.name else {
                return "a member with the invalid name '\(member.name)'"
            }
            guard member.address != 0 else { return "member '\(member.name)' without an address" }
        }
        return nil
    }
}
