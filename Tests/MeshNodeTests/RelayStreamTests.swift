import Foundation
import Testing
import WireFormat

@testable import MeshNode

/// The relayed stream's two state machines, transition by transition, and the frames a peer must not send.
@Suite("Relayed stream: its state machines and what a peer may not do")
struct RelayStreamTests {
    static let outbound: [RelayStream.Outbound] = [.relay, .relayEnded, .direct, .directEnded]
    static let inbound: [RelayStream.Inbound] = [.relay, .draining(until: 7), .direct, .ending, .shut]

    @Test("outbound: relay → relay ended | direct → direct ended, and nothing else")
    func outboundTransitions() {
        let legal: Set<String> = ["relay→relayEnded", "relay→direct", "direct→directEnded"]
        for from in Self.outbound {
            for to in Self.outbound {
                #expect(RelayStream.allows(from, to) == legal.contains("\(from)→\(to)"), "\(from) → \(to)")
            }
        }
    }

    @Test("inbound: relay → draining → direct → ending → shut, or relay → ending on fin, and nothing else")
    func inboundTransitions() {
        let legal: Set<String> = [
            "relay→draining(until: 7)", "relay→ending", "draining(until: 7)→direct", "direct→ending", "ending→shut",
        ]
        for from in Self.inbound {
            for to in Self.inbound {
                #expect(RelayStream.allows(from, to) == legal.contains("\(from)→\(to)"), "\(from) → \(to)")
            }
        }
    }

    @Test("fin: the relay ends after the last byte; both apps see EOF and the pumps forget the connection")
    func finOnRelay() throws {
        let pair = PumpPair(upgrade: false)
        defer { pair.close() }
        try pair.open()
        let bytes = pattern(300_000, seed: 11)  // more than one window: credit must come back
        try pair.write(pair.initiator, bytes)
        pair.shutWrite(pair.initiator)
        try pair.settle(until: { pair.acceptor.appReadEOF })
        #expect(pair.acceptor.received == bytes)
        #expect(pair.initiator.stream?.outbound == .relayEnded)
        #expect(pair.acceptor.stream?.inbound == .shut)
        pair.shutWrite(pair.acceptor)
        try pair.settle(until: { pair.initiator.appReadEOF && pair.initiator.stream == nil && pair.acceptor.stream == nil })
    }

    @Test("credit arriving after the connection closed is ignored; data for it is answered with a reset")
    func framesAfterClose() throws {
        let pair = PumpPair(upgrade: false)
        defer { pair.close() }
        try pair.open()
        pair.shutWrite(pair.initiator)
        pair.shutWrite(pair.acceptor)
        try pair.settle(until: { pair.initiator.stream == nil && pair.acceptor.stream == nil })
        pair.initiator.pump.received(RelayFrame.with(PumpPair.id, .credit(4096)).frame())
        #expect(pair.initiator.outbox.isEmpty)
        pair.initiator.pump.received(RelayFrame.with(PumpPair.id, .data(Data([1, 2, 3]))).frame())
        #expect(pair.initiator.sentFrames.map(\.rst.reason) == ["no such relayed connection"])
    }

    /// Frames a peer may not send, and the state they arrive in.
    enum Violation: String, CaseIterable, CustomTestStringConvertible {
        case dataPastWindow, dataAfterFin, finAfterFin, switchWithoutDirect, creditBeyondSent
        var testDescription: String { rawValue }
    }

    @Test("a peer that breaks the relay protocol gets a reset, and so does the app: never a crash or a hang",
        arguments: Violation.allCases)
    func violation(_ violation: Violation) throws {
        let pair = PumpPair(upgrade: false)
        defer { pair.close() }
        try pair.open()
        let pump = pair.acceptor.pump!
        let id = PumpPair.id
        switch violation {
        case .dataPastWindow:
            // The app reads nothing and its socket buffers are small: the window fills and the peer goes on.
            try pair.shrinkBuffers(pair.acceptor)
            let chunk = RelayFrame.with(id, .data(Data(repeating: 1, count: RelayFrame.maximumData))).frame()
            for _ in 0..<64 where pair.acceptor.stream != nil { pump.received(chunk) }
        case .dataAfterFin:
            pump.received(RelayFrame.with(id, .fin(true)).frame())
            pump.received(RelayFrame.with(id, .data(Data([1]))).frame())
        case .finAfterFin:
            pump.received(RelayFrame.with(id, .fin(true)).frame())
            pump.received(RelayFrame.with(id, .fin(true)).frame())
        case .switchWithoutDirect:
            pump.received(RelayFrame.with(id, .switchOffset(0)).frame())
        case .creditBeyondSent:
            pump.received(RelayFrame.with(id, .credit(1)).frame())
        }
        #expect(pair.acceptor.stream == nil, "the connection survived a protocol violation")
        #expect(pair.acceptor.sentFrames.contains { $0.connectionID == id && $0.rst.reason.contains("protocol") || $0.rst.reason.contains("does not hold") })
        // The app's socket is reset (after a fin it may first read the EOF that came before): it never hangs.
        var buffer = [UInt8](repeating: 0, count: 65536)
        var outcome = 1
        while outcome > 0 {
            var entry = pollfd(fd: pair.acceptor.app, events: Int16(POLLIN), revents: 0)
            #expect(poll(&entry, 1, 5000) == 1, "the app's socket neither ended nor was reset")
            outcome = recv(pair.acceptor.app, &buffer, buffer.count, 0)
        }
        if violation != .dataAfterFin && violation != .finAfterFin {
            #expect(outcome == -1 && errno == ECONNRESET)
        }
    }
}
