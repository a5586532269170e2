import Testing
import WireFormat

@testable import MeshNode

func member(_ name: String, _ last: UInt32) -> Member {
    .with {
        $0.name = name
        $0.address = 0x6440_0000 | last
    }
}

func update(
    _ kind: Boxermesh_V1_MembershipUpdate.Kind, _ version: UInt64, _ members: [Member], more: Bool = false,
    part: UInt32 = 0
) -> Boxermesh_V1_MembershipUpdate {
    .with {
        $0.kind = kind
        $0.version = version
        $0.members = members
        $0.more = more
        $0.part = part
    }
}

private func synced(_ version: UInt64, _ members: [Member]) -> MemberTable {
    var table = MemberTable()
    let outcome = table.apply(update(.snapshot, version, members))
    precondition(outcome == .applied)
    return table
}

/// The node's table of names: a snapshot, then changes strictly in order; anything else makes it forget and ask
/// for a snapshot, never answer from a table it knows to be stale.
@Suite("Member table: snapshot, changes in order, and the pushes it refuses")
struct MemberTableTests {
    @Test("nothing to answer before the snapshot; changes before it are left to the snapshot")
    func beforeSnapshot() {
        var table = MemberTable()
        #expect(!table.isSynced)
        #expect(table.apply(update(.join, 4, [member("early", 9)])) == .ignored)
        #expect(table.apply(update(.snapshot, 4, [member("alpha", 1), member("early", 9)])) == .applied)
        #expect(table.isSynced && table.version == 4)
        #expect(table.member(named: "early")?.address == 0x6440_0009)
        #expect(table.member(named: "ALPHA")?.name == "alpha", "names are case-insensitive")
        #expect(table.member(at: 0x6440_0001)?.name == "alpha")
        #expect(table.member(named: "nobody") == nil && table.member(at: 0x6440_0002) == nil)
    }

    @Test("a join and a leave apply on top of the version before them; old and repeated ones are ignored")
    func changesInOrder() {
        var table = synced(7, [member("alpha", 1)])
        #expect(table.apply(update(.join, 7, [member("stale", 5)])) == .ignored)
        #expect(table.apply(update(.join, 8, [member("beta", 2)])) == .applied)
        #expect(table.apply(update(.join, 8, [member("beta", 2)])) == .ignored)
        #expect(table.member(named: "beta")?.address == 0x6440_0002)
        #expect(table.member(named: "stale") == nil)
        #expect(table.apply(update(.leave, 9, [member("beta", 2)])) == .applied)
        #expect(table.member(named: "beta") == nil && table.member(at: 0x6440_0002) == nil)
        // The freed address goes to a new name: the reverse lookup follows.
        #expect(table.apply(update(.join, 10, [member("gamma", 2)])) == .applied)
        #expect(table.member(at: 0x6440_0002)?.name == "gamma" && table.version == 10)
    }

    @Test("a missed change makes the table forget everything until a snapshot")
    func gap() {
        var table = synced(3, [member("alpha", 1), member("beta", 2)])
        guard case .outOfStep(let why) = table.apply(update(.leave, 5, [member("alpha", 1)])) else {
            Issue.record("a gap was applied")
            return
        }
        #expect(why.contains("missed membership updates 4–4"), "\(why)")
        // beta may have left in the missed change: no stale answer.
        #expect(!table.isSynced && table.member(named: "beta") == nil)
        #expect(table.apply(update(.join, 6, [member("gamma", 3)])) == .ignored)
        #expect(table.apply(update(.snapshot, 6, [member("gamma", 3)])) == .applied)
        #expect(table.member(named: "gamma") != nil && table.member(named: "beta") == nil)
    }

    @Test("a snapshot in parts replaces the table once its last part arrives, and needs every part in order")
    func snapshotParts() {
        var table = synced(2, [member("old", 7)])
        #expect(table.apply(update(.snapshot, 5, [member("a", 1)], more: true, part: 0)) == .applied)
        #expect(table.member(named: "old") != nil, "the old table answers until the new one is complete")
        #expect(table.apply(update(.snapshot, 5, [member("b", 2)], more: true, part: 1)) == .applied)
        #expect(table.apply(update(.snapshot, 5, [member("c", 3)], part: 2)) == .applied)
        #expect(table.version == 5 && table.member(named: "old") == nil)
        #expect(["a", "b", "c"].allSatisfy { table.member(named: $0) != nil })

        // A part whose predecessor was lost.
        #expect(table.apply(update(.snapshot, 9, [member("x", 4)], more: true, part: 0)) == .applied)
        if case .outOfStep = table.apply(update(.snapshot, 9, [member("z", 6)], part: 2)) {} else {
            Issue.record("a snapshot with a missing part was applied")
        }
        #expect(!table.isSynced)
        // A change while a snapshot is unfinished means its last part was lost.
        _ = table.apply(update(.snapshot, 11, [member("x", 4)], more: true))
        if case .outOfStep = table.apply(update(.join, 12, [member("y", 5)])) {} else {
            Issue.record("a change was applied to an unfinished snapshot")
        }
        // A new part 0 starts over.
        _ = table.apply(update(.snapshot, 13, [member("p", 1)], more: true))
        #expect(table.apply(update(.snapshot, 14, [member("q", 2)])) == .applied)
        #expect(table.member(named: "q") != nil && table.member(named: "p") == nil && table.version == 14)
    }

    @Test("malformed pushes are refused with a reason, and the table asks for a snapshot", arguments: [
        (update(.unspecified, 4, [member("a", 1)]), "unknown kind"),
        (update(.join, 4, []), "with 0 members"),
        (update(.join, 4, [member("a", 1), member("b", 2)]), "with 2 members"),
        (update(.join, 4, [member("a", 1)], more: true), "marked as a snapshot part"),
        (update(.join, 4, [member("Bad_Name", 1)]), "invalid name"),
        (update(.join, 4, [member("", 1)]), "invalid name"),
        (update(.join, 4, [.with { $0.name = "noaddr" }]), "without an address"),
        (update(.leave, 4, [member("unknown", 9)]), "did not hold it"),
        (update(.snapshot, 4, [member("a", 1), member("a", 2)]), "twice"),
        (update(.snapshot, 4, [member("a", 1), member("b", 1)]), "twice"),
    ])
    func malformed(update: Boxermesh_V1_MembershipUpdate, reason: String) {
        var table = synced(3, [member("alpha", 1)])
        guard case .outOfStep(let why) = table.apply(update) else {
            Issue.record("applied a malformed update: \(update)")
            return
        }
        #expect(why.contains(reason), "\(why)")
        #expect(!table.isSynced && table.member(named: "alpha") == nil)
    }

    @Test("a heartbeat's version ahead of the table's shows a lost update")
    func behind() {
        var table = MemberTable()
        #expect(!table.isBehind(9), "an empty table is being filled, not behind")
        table = synced(4, [])
        #expect(!table.isBehind(4) && !table.isBehind(3) && table.isBehind(5))
    }
}
