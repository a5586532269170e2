import Foundation
import Testing
import WireFormat

@testable import MeshNode

/// Punch and prove between two ends on loopback, as two nodes do through their NATs (no NAT here, so the
/// accepting end's listener takes the connection: see ``Puncher``).
@Suite("Direct path: punch and prove on loopback")
struct DirectPathTests {
    let path = DirectPath(reflector: Endpoint(IPv4Address.loopback, port: 9), pool: BlockingPool(name: "test-direct", limit: 4))
    let token = LinkToken(Array(repeating: 3, count: 32))

    func punchBoth(acceptorToken: LinkToken) async throws -> (Result<Int32, SocketError>, Result<Int32, SocketError>) {
        let (a, b) = (try Puncher.freeLocalPort(), try Puncher.freeLocalPort())
        // Generous: a success returns as soon as the ends meet, and on a loaded machine (tests run in parallel on
        // two cores, some blocking the cooperative pool) the punch may start seconds after this line.
        let deadline = ContinuousClock.now + .seconds(30)
        let (path, token) = (path, token)
        async let initiator = Self.outcome(
            path, from: a, to: b, proof: .init(token: token, connectionID: 5, initiator: true), until: deadline)
        async let acceptor = Self.outcome(
            path, from: b, to: a, proof: .init(token: acceptorToken, connectionID: 5, initiator: false), until: deadline)
        return await (initiator, acceptor)
    }

    static func outcome(
        _ path: DirectPath, from: UInt16, to: UInt16, proof: DirectPath.Proof, until deadline: ContinuousClock.Instant,
        abandoned: @escaping @Sendable () -> Bool = { false }
    ) async -> Result<Int32, SocketError> {
        do throws(SocketError) {
            return .success(
                try await path.punch(
                    from: from, to: Endpoint(IPv4Address.loopback, port: to), proving: proof, until: deadline,
                    listening: !proof.initiator, abandoned: abandoned))
        } catch {
            return .failure(error)
        }
    }

    @Test("a free local port comes from the namespace's ephemeral range, and no socket holds it")
    func freePorts() throws {
        let text = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
        let range = text.split(whereSeparator: \.isWhitespace).compactMap { UInt16($0) }
        #expect(range.count == 2 && Puncher.ephemeralPorts == range[0]...range[1])
        for _ in 0..<20 {
            let port = try Puncher.freeLocalPort()
            #expect(Puncher.ephemeralPorts.contains(port))
            // Bindable without SO_REUSEADDR: nothing holds it, not even a socket in TIME_WAIT.
            let probe = try DialSocket(server: Endpoint(IPv4Address.loopback, port: 9), transport: .tcp, localPort: port, reuse: false)
            probe.close()
        }
    }

    @Test("both ends get one proven socket of the same connection, with the app's first bytes untouched")
    func proven() async throws {
        let (initiator, acceptor) = try await punchBoth(acceptorToken: token)
        let (near, far) = (try initiator.get(), try acceptor.get())
        defer { close(near); close(far) }
        let bytes: [UInt8] = [1, 2, 3, 4]
        #expect(send(near, bytes, bytes.count, 0) == bytes.count)
        var received = [UInt8](repeating: 0, count: 4)
        #expect(recv(far, &received, 4, Int32(MSG_WAITALL)) == 4)
        #expect(received == bytes)
    }

    @Test("a peer with the wrong token is refused: the link is not the one the broker paired")
    func wrongToken() async throws {
        let (initiator, acceptor) = try await punchBoth(acceptorToken: LinkToken(Array(repeating: 4, count: 32)))
        for result in [initiator, acceptor] {
            if case .success(let fd) = result { close(fd) }
        }
        // Each end checks the other's proof: both refuse.
        #expect(throws: SocketError.self) { try initiator.get() }
        if case .failure(let error) = acceptor { #expect(error.code == ECONNREFUSED) } else { Issue.record("the acceptor took a wrong proof") }
    }

    @Test("nobody at the other end: the punch gives up at its deadline with ETIMEDOUT, or at once when abandoned")
    func noPeer() async throws {
        let (a, b) = (try Puncher.freeLocalPort(), try Puncher.freeLocalPort())
        let proof = DirectPath.Proof(token: token, connectionID: 9, initiator: true)
        let started = ContinuousClock.now
        let timedOut = await Self.outcome(path, from: a, to: b, proof: proof, until: .now + .milliseconds(400))
        #expect(throws: SocketError.self) { try timedOut.get() }
        if case .failure(let error) = timedOut { #expect(error.code == ETIMEDOUT) }
        #expect(ContinuousClock.now - started >= .milliseconds(400))
        let abandoned = await Self.outcome(path, from: a, to: b, proof: proof, until: .now + .seconds(30), abandoned: { true })
        if case .failure(let error) = abandoned { #expect(error.code == ECANCELED) } else { Issue.record("an abandoned punch connected") }
    }
}
