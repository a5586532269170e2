import Foundation
import Logging
import MeshBroker
import MeshNode
import Testing
import WireFormat
import ZeroMQ

/// The relay taking back a connection it never signalled (it restarted): only two resumes with the same id and
/// proof, one from each role, open it; the rest is refused with a reason or waits, and nothing crashes.
@Suite("The broker's relay: resuming connections after a restart")
struct RelayResumeTests {
    static let window = UInt32(RelayConfiguration().maximumWindow)

    func resume(_ id: UInt64, proof: [UInt8], initiator: Bool, received: UInt64 = 0, acknowledged: UInt64 = 0) -> RelayFrame {
        .with(id, .resume(.with {
            $0.proof = Data(proof)
            $0.initiator = initiator
            $0.window = Self.window
            $0.received = received
            $0.acknowledged = acknowledged
        }))
    }

    @Test("matching resumes reopen the connection with the counts they carry; forged, malformed and mismatched ones do not")
    func pairing() async throws {
        try await RelayTestBroker.with { broker in
            try await RelayBrokerTests().node(broker, "a") { a in
                try await RelayBrokerTests().node(broker, "b") { b in
                    let (tokenA, tokenB) = (a.welcome.session, b.welcome.session)
                    try await onTestThread {
                        let context = try ZMQContext()
                        let (dealerA, dealerB) = try Dealer.attachedPair(context, broker.relay, tokenA, tokenB)
                        let id: UInt64 = 77
                        let proof = LinkToken([UInt8](repeating: 9, count: 32)).resumeProof(connectionID: id)
                        // Malformed, and offsets that cannot be: refused at once.
                        dealerA.send(resume(id, proof: [1, 2, 3], initiator: true))
                        #expect(try dealerA.next().rst.reason.contains("malformed"))
                        dealerA.send(resume(id, proof: proof, initiator: true, received: 5, acknowledged: 6))
                        #expect(try dealerA.next().rst.reason.contains("do not add up"))
                        // A forged proof waits for a partner that never comes; the real pair is not disturbed.
                        dealerB.send(resume(id, proof: [UInt8](repeating: 1, count: 32), initiator: false))
                        dealerA.send(resume(id, proof: proof, initiator: true, received: 10, acknowledged: 4))
                        #expect(dealerA.next(timeout: .milliseconds(200)) == nil)
                        dealerB.send(resume(id, proof: proof, initiator: false, received: 30, acknowledged: 30))
                        // Each end gets the other's resume.
                        let atA = try dealerA.next().resume
                        let atB = try dealerB.next().resume
                        #expect(atA.received == 30 && !atA.initiator && atB.received == 10 && atB.initiator)
                        // A holds 6 of B's bytes unacknowledged: its credit for them passes, more is a violation.
                        dealerA.send(.with(id, .credit(6)))
                        #expect(try dealerB.next().credit == 6)
                        dealerA.send(.with(id, .data(Data("again".utf8))))
                        #expect(try dealerB.next().data == Data("again".utf8))
                        dealerA.send(.with(id, .credit(1)))
                        #expect(try dealerA.next().rst.reason.contains("never sent"))
                        #expect(try dealerB.next().rst.reason.contains("never sent"))
                        // Two resumes from the same role never pair.
                        let other = LinkToken([UInt8](repeating: 8, count: 32)).resumeProof(connectionID: 78)
                        dealerA.send(resume(78, proof: other, initiator: true))
                        dealerB.send(resume(78, proof: other, initiator: true))
                        #expect(try dealerA.next().rst.reason.contains("do not match"))
                        #expect(try dealerB.next().rst.reason.contains("do not match"))
                    }
                }
            }
        }
    }

    @Test("frames from a node the restarted relay does not know are answered with an rst marked unknown")
    func unknown() async throws {
        try await RelayTestBroker.with { broker in
            try await onTestThread {
                let dealer = try Dealer(try ZMQContext(), broker.relay)
                dealer.send(.with(5, .data(Data([1]))))
                let reset = try dealer.next()
                #expect(reset.connectionID == 5 && reset.rst.unknown)
                dealer.send(.with(0, .hello(.with { $0.session = Data(repeating: 3, count: 16) })))
                #expect(try dealer.next().rst.unknown)
            }
        }
    }
}
