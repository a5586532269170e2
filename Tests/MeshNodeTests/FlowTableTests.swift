import Testing
import WireFormat

@testable import MeshNode

/// A relayed connection's flow, counted on the app's socket `cookie`.
private func relayed(_ id: UInt64, cookie: UInt64, at now: ContinuousClock.Instant) -> FlowMonitor.Flow {
    FlowMonitor.Flow(
        id: id, initiator: true, peer: IPv4Address(100, 64, 0, 2), peerName: "srv", port: 7001, path: .relay, started: now,
        cookie: cookie, inode: 11, preamble: (0, 0), rttCookie: nil, sampledAt: now)
}

/// The changes of a relayed connection that moves onto the broker's splice port and into the app: the same flow,
/// whether they come after the node tracks the connection or before it (a connection spliced at once).
@Suite struct FlowTableTests {
    let now = ContinuousClock.now
    let changes: [FlowMonitor.Change] = [
        .upgraded(path: .spliced, rttCookie: 500),
        .follow(cookie: 500, path: .spliced, relayed: .init(sent: 7, received: 3)),
        .handedOff(inode: 77),
    ]

    func check(_ table: FlowMonitor.Table) {
        #expect(table.flows.count == 1)
        let flow = table.flows[500]
        #expect(flow?.id == 9)
        #expect(flow?.path == .spliced)
        #expect(flow?.rttCookie == 500)
        #expect(flow.map { [$0.preamble.sent, $0.preamble.received] } == [UInt64(SpliceHello.size + LinkToken.proofSize), UInt64(LinkToken.proofSize)])
        #expect(flow.map { [$0.base.sent, $0.base.received] } == [7, 3])
        #expect(flow?.inode == 77)
    }

    @Test func changesAfterTheConnection() {
        var table = FlowMonitor.Table()
        table.insert(relayed(9, cookie: 100, at: now))
        for change in changes { table.amend(9, change, now: now) }
        check(table)
    }

    @Test func changesBeforeTheConnectionWaitForIt() {
        var table = FlowMonitor.Table()
        for change in changes { table.amend(9, change, now: now) }
        #expect(table.flows.isEmpty)
        table.insert(relayed(9, cookie: 100, at: now))
        check(table)
    }

    @Test func someBeforeSomeAfter() {
        var table = FlowMonitor.Table()
        table.amend(9, changes[0], now: now)
        table.insert(relayed(9, cookie: 100, at: now))
        for change in changes.dropFirst() { table.amend(9, change, now: now) }
        check(table)
    }

    /// Another connection's changes stay its own; a change whose connection never came is dropped in time.
    @Test func waitingChangesAreKeptApartAndExpire() {
        var table = FlowMonitor.Table()
        table.amend(8, .handedOff(inode: 66), now: now)
        table.amend(9, .handedOff(inode: 77), now: now + FlowMonitor.Table.earlyLimit)
        table.insert(relayed(8, cookie: 100, at: now))
        table.insert(relayed(9, cookie: 200, at: now))
        #expect(table.flows[100]?.inode == 11, "connection 8's change waited past the limit")
        #expect(table.flows[200]?.inode == 77)
    }
}
