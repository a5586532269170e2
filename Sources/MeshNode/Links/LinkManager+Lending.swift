import FoundationEssentials
import Glibc
import Logging
import WireFormat

/// An app process whose shim takes spare links lent by the node (``LinkManager/lendSpares(towards:to:)``).
protocol SpareBorrower: AnyObject, Sendable {
    /// Sends a lent spare to the process with its socket (the node keeps its copy); false when it could not (the
    /// process is gone, or its connection has no room now).
    func lend(_ spare: Boxermesh_V1_ShimSpare, fd: Int32) -> Bool
    /// Asks the process to give lent spare `id` back.
    func recall(_ id: UInt64)
}

/// Spare links lent to the app: a process that connects to a peer again and again gets the spares ready towards
/// it, and its shim claims one itself when the app connects there next (the schema's ShimSpare) — no node thread,
/// no hop, on the connect's way; the node's part (the report, the flow, the successor) follows the shim's word.
extension LinkManager {
    /// Lends the spares ready towards `address` to the app process that connects to it: `borrower`, which did just
    /// now, or else the last one that did. Each goes with its claim ready but for the port, asking for the
    /// spare's successor as a claim by the node would.
    func lendSpares(towards address: IPv4Address, to borrower: (any SpareBorrower)? = nil) {
        guard let (to, ready) = spares.lend(towards: address, to: borrower) else { return }
        for spare in ready {
            let successor = spare.successor == nil ? nil : successorPort(towards: address)
            let loan = SparePool.Loan(spare: spare, successor: successor, borrower: to)
            let message = Boxermesh_V1_ShimSpare.with {
                $0.spare = spare.id
                $0.peerAddress = spare.peer.address
                $0.localPort = UInt32(spare.localPort)
                $0.claim = Data(SpareClaim.claim(.init(port: 0, answered: false, successor: successor?.endpoint)))
                $0.freshMs = UInt32(Timing.Choice.spareFreshness / .milliseconds(1))
            }
            guard spares.recordLoan(loan) else {
                endUnclaimed(loan)
                continue
            }
            if !to.lend(message, fd: spare.fd), let loan = spares.endLoan(spare.id, of: ObjectIdentifier(to), claimed: false) {
                logger.debug("a spare link could not be lent", metadata: ["peer": "\(spare.peer.name)", "why": "\(String(cString: strerror(Glibc.errno)))"])
                endUnclaimed(loan)
            }
        }
    }

    /// The shim of `borrower` claimed lent spare `id` for `port` (the app holds it; its connect returned `setup`
    /// after it began), or gave it back (port 0; `reason` says why). The shim tells only once the app's connect is
    /// done, so this work, at once, never holds the connect up (measured in the lab: the connect's median 111 µs,
    /// against 129 µs with this work 2 ms later and 348 µs with the shim telling before the app had the socket).
    func loanEnded(_ id: UInt64, port: UInt16, setup: Duration, reason: String, by borrower: any SpareBorrower) {
        guard let loan = spares.endLoan(id, of: ObjectIdentifier(borrower), claimed: port != 0) else {
            logger.debug("an app process reported a spare link not lent to it", metadata: ["spare": "\(id)"])
            return
        }
        let spare = loan.spare
        guard port != 0 else {
            logger.debug("a lent spare link came back", metadata: ["peer": "\(spare.peer.name)", "why": "\(reason)"])
            endUnclaimed(loan)
            return
        }
        Self.cork(spare.fd, false)  // the shim held its claim back: it leaves now, if the app wrote nothing yet
        if let successor = loan.successor { makeSuccessor(of: spare, from: successor) }
        makeSpares(towards: spare.peer.ipv4)
        settle(spare.offer, fd: spare.fd, path: .direct, port: port, setup: setup, spare: .lent)
        close(spare.fd)  // after the bookkeeping: the app holds the only copy now
    }

    /// The process of `borrower` ended (or lost its connection to the node, and closed its copies): the spares
    /// lent to it end with it.
    func borrowerLeft(_ borrower: any SpareBorrower) {
        for loan in spares.endLoans(of: ObjectIdentifier(borrower)) { endUnclaimed(loan) }
    }

    /// A loan ended unclaimed: ours is the last copy of the link, and its successor is not coming.
    private func endUnclaimed(_ loan: SparePool.Loan) {
        if loan.successor != nil { spares.abandonSuccessor(towards: loan.spare.peer.ipv4) }
        RelaySockets.reset(loan.spare.fd)
    }
}
