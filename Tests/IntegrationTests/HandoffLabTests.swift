import Foundation
import MeshLab
import Testing

/// After a relayed connection moves to a direct link, the app itself takes the punched socket (the preload shim
/// swaps it in), so its bytes stop passing through the node. Driven by Tests/tools/handoff_app.c under the shim,
/// in three app patterns, both ways at once, across the switch; punching is blocked until the connection is up on
/// the relay, as in the relay lab's upgrade test.
@Suite(
    "Handoff of upgraded connections in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct HandoffLabTests {
    static let source = LinkLabTests.tool("handoff_app.c")

    /// The sha256 (as sha256sum prints it) of the first `bytes` bytes of handoff_app's stream `seed`.
    static func digest(_ mesh: MeshLabFixture, program: String, seed: Int, bytes: String) throws -> String {
        try mesh.lab.run(.broker, ["sh", "-c", "\(program) generate \(seed) \(bytes) | sha256sum"]).check().standardOutput
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A relayed connection between handoff_app in `clientMode` (node cli, on function 2) and in `serverMode` (node
    /// srv, on function 1), both ways for 8 s, upgraded once both are up (`spliced`: both nodes only relay, with
    /// --relay-splice, and the connection moves onto the broker's splice port at once); `whileStreaming` runs as
    /// soon as the connection's handoff settled on the client (`settled` appeared in its log), while the apps still
    /// stream. Checks that both apps exit 0 and that each stream arrived whole; returns the tap's handoff and
    /// upgrade events.
    private func stream(
        clientMode: String, serverMode: String, settled: String, spliced: Bool = false,
        whileStreaming: (MeshLabFixture, LabProcess, LabProcess) async throws -> Void
    ) async throws -> [Substring] {
        var events: [Substring] = []
        try await MeshLabFixture.with(prefix: "hof") { mesh in
            let program = mesh.work.appendingPathComponent("handoff_app").path
            try mesh.lab.run(.broker, ["cc", "-O2", "-pthread", "-o", program, Self.source]).check()
            let tap = try mesh.lab.spawn(.broker, [RelayLabTests.pythonSubscriber, "tcp://127.0.0.1:7701", "default", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "subscribed to"), "\(tap.standardError)")
            if !spliced { try RelayLabTests.blockPunching(mesh, "-I") }
            let options = ["--log-level", "debug"] + (spliced ? ["--path", "relay", "--relay-splice"] : ["--upgrade-max-interval", "1"])
            let seconds = 8
            let server = try mesh.node(1, name: "srv", options: options, ["sh", "-c", "\(program) \(serverMode) serve 5000 \(seconds) | sha256sum"])
            defer { server.kill() }
            #expect(await server.waitForLog(containing: "listening on 5000", timeout: .seconds(15)), "\(server.standardError)")
            let client = try mesh.node(2, name: "cli", options: options, ["sh", "-c", "\(program) \(clientMode) connect srv 5000 \(seconds) | sha256sum"])
            defer { client.kill() }
            #expect(await client.waitForLog(containing: "connected", timeout: .seconds(20)), "\(client.standardError)")
            // The node logs the link after the app has it: the app's "connected" can come first.
            #expect(await client.waitForLog(containing: "path=relay", timeout: .seconds(5)), "\(client.standardError)")
            if !spliced {
                try await Task.sleep(for: .seconds(1))
                try RelayLabTests.blockPunching(mesh, "-D")
            }
            #expect(await client.waitForLog(containing: settled, timeout: .seconds(5)), "\(client.standardError)")
            try await whileStreaming(mesh, client, server)
            #expect(client.waitUntilExit(timeout: .seconds(60)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(server.waitUntilExit(timeout: .seconds(60)) == 0, "\(server.standardOutput)\n\(server.standardError)")
            var sent: [String] = []
            for (receiver, sender, seed) in [(server, client, 1), (client, server, 2)] {
                let count = sender.standardError.split(separator: "\n").last { $0.hasPrefix("sent ") }?.split(separator: " ").last
                // Both sides' logs: what ended one app early is often in its peer's node's log.
                let logs = "sender:\n\(sender.standardError)\nreceiver:\n\(receiver.standardError)"
                let bytes = try #require(count.map(String.init), "\(logs)")
                #expect(Int(bytes) ?? 0 > 0)
                #expect(receiver.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == (try Self.digest(mesh, program: program, seed: seed, bytes: bytes)),
                    "stream \(seed) (\(bytes) bytes) arrived changed\n\(logs)")
                sent.append(bytes)
            }
            // The close event counts every byte each way: relayed, copied by the node, and moved by the app itself.
            let closed = await eventually(timeout: .seconds(10)) { tap.standardOutput.contains("KIND_CLOSE") }
            let close = tap.standardOutput.split(separator: "\n").first { $0.contains("KIND_CLOSE") } ?? ""
            #expect(closed && close.contains("\"bytes_from_to\": \"\(sent[0])\"") && close.contains("\"bytes_to_from\": \"\(sent[1])\""),
                "sent \(sent): \(close)")
            events = tap.standardOutput.split(separator: "\n").filter { $0.contains("KIND_HANDOFF") || $0.contains("KIND_UPGRADE") }
        }
        return events
    }

    @Test(
        "an upgraded connection is handed to the app mid-stream: its fd becomes the punched socket, both directions arrive whole",
        arguments: ["blocking", "epoll", "writer"])
    func handoff(mode: String) async throws {
        let held = "the app holds the direct socket"
        let events = try await stream(clientMode: mode, serverMode: mode, settled: held) { mesh, client, server in
            #expect(await server.waitForLog(containing: held, timeout: .seconds(5)), "\(server.standardError)")
            // While the apps still stream: the app's fd is a TCP socket to the peer's NAT, not the loopback socket.
            let sockets = try mesh.lab.run(.function(2), ["ss", "-Htnp"]).check().standardOutput
            let app = sockets.split(separator: "\n").filter { $0.contains("\"handoff_app\"") }
            #expect(app.count == 1 && app[0].contains(NATLab.publicAddress(ofNAT: 1)) && !app[0].contains("127.0.0.1"), "\(sockets)")
        }
        // Both sides' handoffs show on the tap, and nothing was declined.
        #expect(events.contains { $0.contains("\"connecting\"") } && events.contains { $0.contains("\"accepting\"") }, "\(events)")
        #expect(!events.contains { $0.contains("handoff_declined") }, "\(events)")
        #expect(events.contains { $0.contains("KIND_UPGRADE") && $0.contains("PATH_DIRECT") }, "\(events)")
    }

    @Test(
        "a relayed connection moves onto the broker's splice port and is handed to the app mid-stream: its fd is a TCP socket to the broker, both directions arrive whole",
        arguments: ["blocking", "epoll", "writer"])
    func spliced(mode: String) async throws {
        let held = "the app holds the spliced socket"
        let events = try await stream(clientMode: mode, serverMode: mode, settled: held, spliced: true) { mesh, client, server in
            #expect(await server.waitForLog(containing: held, timeout: .seconds(5)), "\(server.standardError)")
            // While the apps still stream: each app's fd is its function's TCP connection to the broker's splice port.
            for (function, node) in [(2, client), (1, server)] {
                let sockets = try mesh.lab.run(.function(function), ["ss", "-Htnp"]).check().standardOutput
                let app = sockets.split(separator: "\n").filter { $0.contains("\"handoff_app\"") }
                #expect(app.count == 1 && app[0].contains("\(NATLab.brokerAddress):7704"), "function \(function): \(sockets)")
                #expect(node.standardError.contains("relayed connection moved onto the broker's splice"), "\(node.standardError)")
            }
        }
        #expect(events.contains { $0.contains("\"connecting\"") } && events.contains { $0.contains("\"accepting\"") }, "\(events)")
        #expect(!events.contains { $0.contains("handoff_declined") }, "\(events)")
        #expect(events.contains { $0.contains("KIND_UPGRADE") && $0.contains("PATH_SPLICED") }, "\(events)")
        #expect(!events.contains { $0.contains("PATH_DIRECT") }, "\(events)")
    }

    @Test("a connection whose socket another process shares (a forked child streams on it) stays on the node's copy loop, whole; the tap says why")
    func sharedSocket() async throws {
        let events = try await stream(clientMode: "forked", serverMode: "blocking", settled: "declined the direct socket") { _, client, _ in
            #expect(client.standardError.contains("shared with process"), "\(client.standardError)")
            #expect(!client.standardError.contains("the app holds the direct socket"), "\(client.standardError)")
        }
        let connecting = events.filter { $0.contains("\"connecting\"") }
        #expect(!connecting.isEmpty && connecting.allSatisfy { $0.contains("handoff_declined") && $0.contains("shared with process") },
            "\(events)")
    }

    @Test("unmodified redis-cli and iperf3 run on across the upgrade; each of their connections' apps takes the punched socket on both sides")
    func unmodifiedApps() async throws {
        try await MeshLabFixture.with(prefix: "hoa") { mesh in
            try RelayLabTests.blockPunching(mesh, "-I")
            let options = ["--log-level", "info", "--upgrade-max-interval", "1"]
            let redis = try mesh.redisServer(1, options: options)
            defer { redis.kill() }
            let iperfServer = try mesh.node(1, name: "server", options: options, ["iperf3", "-s", "-p", "5201", "--forceflush"])
            defer { iperfServer.kill() }
            #expect(iperfServer.waitForOutput(containing: "Server listening", timeout: .seconds(15)), "\(iperfServer.standardOutput)")
            // One blocking client (800 commands, 10 ms apart) and one bulk stream (iperf3's control and data connections).
            let counter = try mesh.node(2, name: "counter", options: options, ["redis-cli", "-h", "cache", "-r", "800", "-i", "0.01", "incr", "n"])
            defer { counter.kill() }
            let iperf = try mesh.node(2, name: "client", options: options, ["iperf3", "-c", "server", "-p", "5201", "-t", "8", "-f", "m"])
            defer { iperf.kill() }
            for node in [counter, iperf] {
                #expect(await node.waitForLog(containing: "path=relay", timeout: .seconds(20)), "\(node.standardError)")
            }
            try await Task.sleep(for: .seconds(1))
            try RelayLabTests.blockPunching(mesh, "-D")
            #expect(counter.waitUntilExit(timeout: .seconds(60)) == 0, "\(counter.standardOutput)\n\(counter.standardError)")
            #expect(iperf.waitUntilExit(timeout: .seconds(60)) == 0, "\(iperf.standardOutput)\n\(iperf.standardError)")
            #expect(iperf.standardOutput.contains("receiver"), "\(iperf.standardOutput)")
            let total = try mesh.node(2, name: "check", ["redis-cli", "-h", "cache", "get", "n"])
            #expect(total.waitUntilExit(timeout: .seconds(30)) == 0)
            #expect(total.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "800", "\(total.standardOutput)")
            let held = "the app holds the direct socket"
            func handoffs(_ node: LabProcess) -> Int { node.standardError.components(separatedBy: held).count - 1 }
            #expect(handoffs(counter) == 1, "\(counter.standardError)")
            #expect(handoffs(iperf) == 2, "\(iperf.standardError)")
            #expect(handoffs(redis) == 1, "\(redis.standardError)")
            #expect(handoffs(iperfServer) == 2, "\(iperfServer.standardError)")
        }
    }
}
