import Foundation
import MeshLab
import Testing

/// The broker killed with SIGKILL mid-stream and started again on the same address, in the NAT lab, driven by
/// Tests/tools/relay_app.py under `--no-shim`: direct links never notice, nodes rejoin with their names and
/// addresses, relayed connections resume without losing a byte, and a broker that stays away ends them cleanly.
@Suite(
    "Broker restart in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct BrokerRestartLabTests {
    static let app = LinkLabTests.tool("relay_app.py")

    func server(_ mesh: MeshLabFixture, _ index: Int, name: String = "srv") throws -> LabProcess {
        let server = try mesh.node(index, name: name, options: ["--no-shim", "--log-level", "info"], [Self.app, "serve", "5000"])
        guard server.waitForOutput(containing: "listening on 5000", timeout: .seconds(15)) else {
            throw FixtureError("server did not start: \(server.standardError)")
        }
        return server
    }

    /// Starts `relay_app.py client srv 5000 TEST…` under a node in function `index` and returns it at once.
    func client(
        _ mesh: MeshLabFixture, _ index: Int, name: String, options: [String] = [], target: String = "srv", _ test: [String]
    ) throws -> LabProcess {
        try mesh.node(index, name: name, options: ["--no-shim", "--log-level", "info"] + options, [Self.app, "client", target, "5000"] + test)
    }

    /// The address `name` resolves to at the broker, asked from function `index`.
    func address(_ mesh: MeshLabFixture, _ index: Int, of name: String) throws -> String {
        let result = try mesh.tool(index, ["resolve", name])
        return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Waits until every node logged its rejoin; returns how long after `restarted` the last one did.
    func rejoined(_ nodes: [LabProcess], after restarted: ContinuousClock.Instant) async -> Duration? {
        for node in nodes {
            guard await node.waitForLog(containing: "rejoined the mesh after the broker lost our session", timeout: .seconds(10))
            else { return nil }
        }
        return ContinuousClock.now - restarted
    }

    @Test("kill -9 during a direct stream: the stream completes intact, nodes rejoin with the same names and addresses, new connections work")
    func directStream() async throws {
        try await MeshLabFixture.with(prefix: "brd", nat: .easy) { mesh in
            let server = try server(mesh, 1)
            defer { server.kill() }
            let stream = try client(mesh, 2, name: "c-stream", ["stream", "8", "then", "sink", "1000000"])
            defer { stream.kill() }
            #expect(stream.waitForOutput(containing: "path direct", timeout: .seconds(20)), "\(stream.standardOutput)\n\(stream.standardError)")
            let before = try ["srv", "c-stream"].map { try address(mesh, 1, of: $0) }
            try mesh.killBroker()
            try await Task.sleep(for: .seconds(2))
            let restarted = try await mesh.restartBroker()
            let rejoin = await rejoined([server, stream], after: restarted)
            print("broker restart lab: direct: both nodes rejoined \(rejoin.map { "\($0)" } ?? "never") after the broker was back")
            #expect(rejoin != nil && rejoin! < .seconds(2), "\(server.standardError)\n\(stream.standardError)")
            #expect(try ["srv", "c-stream"].map { try address(mesh, 1, of: $0) } == before)
            #expect(stream.waitUntilExit(timeout: .seconds(60)) == 0, "\(stream.standardOutput)\n\(stream.standardError)")
            let output = stream.standardOutput.split(separator: "\n").filter { !$0.hasPrefix("streaming") }
            // The stream that spanned the restart, then a new connection after it: both intact, both direct.
            #expect(output.filter { $0.contains("ok sink: the server read the same bytes") }.count == 2, "\(output)")
            #expect(output.filter { $0.hasPrefix("connected ") && $0.hasSuffix("path direct") }.count == 2, "\(output)")
        }
    }

    @Test(
        "kill -9 during a relayed stream both ways, back within 3 or 9 s: the stream resumes and completes with the same sha256",
        arguments: [3, 9])
    func relayedStream(secondsDown: Int) async throws {
        try await MeshLabFixture.with(prefix: "brr", nat: .hard) { mesh in
            let server = try server(mesh, 1)
            defer { server.kill() }
            let echo = try client(mesh, 2, name: "c-echo", ["echo-stream", "10", "then", "sink", "1000000"])
            defer { echo.kill() }
            #expect(echo.waitForOutput(containing: "path relay", timeout: .seconds(20)), "\(echo.standardOutput)\n\(echo.standardError)")
            try await Task.sleep(for: .seconds(2))
            try mesh.killBroker()
            let killed = ContinuousClock.now
            try await Task.sleep(for: .seconds(secondsDown))
            let restarted = try await mesh.restartBroker()
            let rejoin = await rejoined([server, echo], after: restarted)
            print("broker restart lab: relay: both nodes rejoined \(rejoin.map { "\($0)" } ?? "never") after the broker was back")
            #expect(rejoin != nil && rejoin! < .seconds(2))
            #expect(await echo.waitForLog(containing: "relayed connection resumed", timeout: .seconds(10)), "\(echo.standardError)")
            #expect(await server.waitForLog(containing: "relayed connection resumed", timeout: .seconds(10)), "\(server.standardError)")
            print("broker restart lab: relay (\(secondsDown) s down): resumed \(ContinuousClock.now - killed) after the kill, "
                + "\(ContinuousClock.now - restarted) after the broker was back; "
                + (echo.standardError.split(separator: "\n").first { $0.contains("relayed connection resumed") }.map(String.init) ?? ""))
            #expect(echo.waitUntilExit(timeout: .seconds(90)) == 0, "\(echo.standardOutput)\n\(echo.standardError)")
            let output = echo.standardOutput.split(separator: "\n").filter { !$0.hasPrefix("streaming") }
            #expect(output.contains { $0.hasPrefix("ok echo:") && $0.contains("bytes back intact") }, "\(output)")
            #expect(output.contains { $0.contains("ok sink: the server read the same bytes") }, "\(output)")
            #expect(output.filter { $0.hasPrefix("connected ") && $0.hasSuffix("path relay") }.count == 2, "\(output)")
        }
    }

    /// A broker that is only slow — frozen longer than a heartbeat's deadline, as a loaded one can be — is not a
    /// lost relay: relayed connections go on where they were.
    @Test("a broker frozen for 3 s (SIGSTOP) during a relayed stream both ways: the nodes notice, the stream goes on intact")
    func brokerFrozen() async throws {
        try await MeshLabFixture.with(prefix: "brf", nat: .hard) { mesh in
            let server = try server(mesh, 1)
            defer { server.kill() }
            let echo = try client(mesh, 2, name: "c-echo", ["echo-stream", "8"])
            defer { echo.kill() }
            #expect(echo.waitForOutput(containing: "path relay", timeout: .seconds(20)), "\(echo.standardOutput)\n\(echo.standardError)")
            try await Task.sleep(for: .seconds(2))
            mesh.broker.kill(SIGSTOP)
            try await Task.sleep(for: .seconds(3))
            mesh.broker.kill(SIGCONT)
            #expect(echo.waitUntilExit(timeout: .seconds(60)) == 0, "\(echo.standardOutput)\n\(echo.standardError)")
            #expect(echo.standardOutput.split(separator: "\n").contains {
                $0.hasPrefix("ok echo:") && $0.contains("bytes back intact")
            }, "\(echo.standardOutput)")
            #expect(echo.standardError.contains("the broker is unreachable"), "the freeze went unnoticed: \(echo.standardError)")
            #expect(!echo.standardError.contains("relayed connection reset"), "\(echo.standardError)")
        }
    }

    @Test("kill -9 during a spliced stream (--relay-splice): the app gets ECONNRESET at once, never an EOF its peer did not send")
    func splicedStream() async throws {
        try await MeshLabFixture.with(prefix: "brs", nat: .hard) { mesh in
            let splice = ["--path", "relay", "--relay-splice"]
            let server = try mesh.node(1, name: "srv", options: ["--no-shim", "--log-level", "info"] + splice, [Self.app, "serve", "5000"])
            defer { server.kill() }
            #expect(server.waitForOutput(containing: "listening on 5000", timeout: .seconds(15)), "\(server.standardError)")
            let stream = try client(mesh, 2, name: "c-stream", options: splice, ["stream", "60"])
            defer { stream.kill() }
            #expect(await stream.waitForLog(containing: "moved onto the broker's splice", timeout: .seconds(20)), "\(stream.standardError)")
            try await Task.sleep(for: .seconds(1))
            try mesh.killBroker()
            let killed = ContinuousClock.now
            #expect(stream.waitUntilExit(timeout: .seconds(10)) == 1, "\(stream.standardOutput)\n\(stream.standardError)")
            let reset = ContinuousClock.now - killed
            print("broker restart lab: spliced: the app got its error \(reset) after the kill")
            #expect(reset < .seconds(3), "a spliced connection ends with the broker, not with the relay's 10 s wait")
            #expect(stream.standardOutput.contains("client failed: errno 104"), "\(stream.standardOutput)")
        }
    }

    @Test("broker away for 15 s: the relayed connection ends with ECONNRESET, a connect meanwhile fails with ETIMEDOUT; all works after")
    func brokerAwayTooLong() async throws {
        try await MeshLabFixture.with(prefix: "brl", nat: .hard) { mesh in
            let server = try server(mesh, 1)
            defer { server.kill() }
            let stream = try client(mesh, 2, name: "c-stream", ["stream", "60"])
            defer { stream.kill() }
            // Waits, then connects (by address: a name would not resolve) while the broker is down: the connect
            // waits --connect-timeout, then fails.
            let late = try client(
                mesh, 2, name: "c-late", options: ["--connect-timeout", "4"], target: try address(mesh, 1, of: "srv"),
                ["sleep", "5", "then", "sink", "1000"])
            defer { late.kill() }
            #expect(stream.waitForOutput(containing: "path relay", timeout: .seconds(20)), "\(stream.standardOutput)\n\(stream.standardError)")
            try mesh.killBroker()
            let killed = ContinuousClock.now
            #expect(stream.waitUntilExit(timeout: .seconds(20)) == 1, "\(stream.standardOutput)\n\(stream.standardError)")
            let reset = ContinuousClock.now - killed
            print("broker restart lab: away: the relayed app got its error \(reset) after the kill")
            #expect(stream.standardOutput.contains("client failed: errno 104"), "\(stream.standardOutput)")
            #expect(stream.standardError.contains("the relay did not come back within"), "\(stream.standardError)")
            #expect(late.waitUntilExit(timeout: .seconds(20)) == 1, "\(late.standardOutput)\n\(late.standardError)")
            #expect(late.standardOutput.contains("client failed: errno 110"), "\(late.standardOutput)")
            #expect(late.standardError.contains("the broker is unreachable"), "\(late.standardError)")
            try await Task.sleep(until: killed + .seconds(15))
            let restarted = try await mesh.restartBroker()
            let rejoin = await rejoined([server], after: restarted)
            print("broker restart lab: away: the server node rejoined \(rejoin.map { "\($0)" } ?? "never") after the broker was back")
            #expect(rejoin != nil && rejoin! < .seconds(2), "\(server.standardError)")
            let again = try client(mesh, 2, name: "c-again", ["sink", "1000000"])
            #expect(again.waitUntilExit(timeout: .seconds(30)) == 0, "\(again.standardOutput)\n\(again.standardError)")
            #expect(again.standardOutput.contains("ok sink: the server read the same bytes"), "\(again.standardOutput)")
        }
    }
}
