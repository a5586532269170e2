import Foundation
import MeshLab
import Testing

/// Unmodified Debian binaries under `boxer-mesh node`, in two functions behind easy NATs, reaching each other by
/// mesh name through the preload shim over direct punched links.
@Suite(
    "Unmodified apps across the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct AppsLabTests {
    @Test("redis-benchmark in one function completes SET and GET against redis-server in another, by name")
    func redis() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "itd") { mesh in
            let server = try mesh.redisServer(1)
            defer { server.kill(SIGTERM) }
            _ = try mesh.redisBenchmark(from: 2)
        }
    }

    /// A new connection per request: 30,000 mesh connects, and as many inbound connections pushed by the broker to
    /// the accepting node. Each push used to make the node's push handler one call deeper (`ControlClient`), so the
    /// accepting node slowed down and died of a stack overflow after some 20,000, and redis-benchmark then retried
    /// its connects for ever at full CPU.
    @Test("redis-benchmark -k 0 (a new connection per request, 8 clients) completes SET and GET, 15,000 each, by name")
    func redisConnectionPerRequest() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "itc") { mesh in
            let server = try mesh.redisServer(1)
            defer { server.kill(SIGTERM) }
            let started = ContinuousClock.now
            let (bench, output) = try mesh.redisBenchmark(
                from: 2, requests: 15000, clients: 8, benchmarkArguments: ["-k", "0"], timeout: .seconds(600))
            print("redis-benchmark -k 0 through the mesh took \(ContinuousClock.now - started):\n\(output)")
            #expect(server.isRunning, "the accepting node ended: \(server.standardError)")
            #expect(!bench.standardError.contains("failed"), "\(bench.standardError)")
            // Both nodes went through 30,000 links without a problem worth a warning (a link the app never got).
            #expect(!server.standardError.contains(" warning "), "\(server.standardError)")
            #expect(!bench.standardError.contains(" warning "), "\(bench.standardError)")
        }
    }

    @Test("iperf3 completes from B to A and, with -R, from A to B")
    func iperf() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "iti") { mesh in
            let server = try mesh.node(1, name: "server", ["iperf3", "-s", "-p", "5201", "--forceflush"])
            defer { server.kill(SIGTERM) }
            #expect(server.waitForOutput(containing: "Server listening", timeout: .seconds(15)), "\(server.standardOutput)")
            for (client, reverse) in zip(try mesh.iperfBothWays(from: 2, to: "server"), [false, true]) {
                #expect(client.exitStatus == 0, "\(client.standardOutput)\n\(client.standardError)")
                #expect(client.standardOutput.contains("receiver"), "\(client.standardOutput)")
                #expect(client.standardOutput.contains("Connecting to host server"), "\(client.standardOutput)")
                if reverse { #expect(client.standardOutput.contains("Reverse mode"), "\(client.standardOutput)") }
            }
        }
    }

    @Test("curl fetches a 100 MB file from python3 -m http.server intact, over the NATs' public addresses, not the broker")
    func bigFile() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "ith") { mesh in
            let site = mesh.work.appendingPathComponent("site")
            try FileManager.default.createDirectory(at: site, withIntermediateDirectories: true)
            let file = site.appendingPathComponent("big.bin").path
            let made = try mesh.lab.run(.broker, ["sh", "-c", "head -c 100000000 /dev/urandom > \(file) && sha256sum \(file)"])
            let expected = try #require(made.standardOutput.split(separator: " ").first.map(String.init))
            let server = try mesh.node(1, name: "web", ["python3", "-m", "http.server", "8000", "--directory", site.path])
            defer { server.kill(SIGTERM) }
            try await Task.sleep(for: .seconds(1))
            let brokerBefore = try mesh.lab.interfaceBytes(.broker, "eth0")
            let natBefore = try mesh.lab.interfaceBytes(.nat(1), "wan0")
            // Into the function's own /tmp: the rest of a function's file system is read-only.
            let client = try mesh.node(
                2, name: "fetch",
                ["sh", "-c", MeshLabFixture.inTemporaryFile("curl -sS --fail -o \"$out\" http://web:8000/big.bin && sha256sum \"$out\"")])
            #expect(client.waitUntilExit(timeout: .seconds(120)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardOutput.hasPrefix(expected), "got \(client.standardOutput), want \(expected)")
            let brokerAfter = try mesh.lab.interfaceBytes(.broker, "eth0")
            let natAfter = try mesh.lab.interfaceBytes(.nat(1), "wan0")
            // The file crossed NAT 1's public side and never the broker host (only control traffic did).
            #expect(natAfter.transmitted - natBefore.transmitted > 100_000_000)
            #expect(brokerAfter.received - brokerBefore.received < 2_000_000, "broker host received \(brokerAfter.received - brokerBefore.received) bytes")
            // A port nobody listens on: refused promptly.
            let started = ContinuousClock.now
            let refused = try mesh.node(2, name: "nobody", ["curl", "-sS", "http://web:8001/"])
            #expect(refused.waitUntilExit(timeout: .seconds(30)) == 7, "\(refused.standardError)")  // curl: couldn't connect
            let python = try mesh.node(
                2, name: "nobody2", ["/usr/bin/python3", "-c", "import socket; socket.create_connection(('web', 8001))"])
            #expect(python.waitUntilExit(timeout: .seconds(30)) == 1)
            #expect(python.standardError.contains("ConnectionRefusedError: [Errno 111] Connection refused"), "\(python.standardError)")
            #expect(ContinuousClock.now - started < .seconds(10))
        }
    }
}

extension NATLab {
    /// An interface's byte counters in a lab host, from /sys (the namespace's own view).
    func interfaceBytes(_ host: LabHost, _ interface: String) throws -> (received: Int, transmitted: Int) {
        let result = try run(
            host, ["cat", "/sys/class/net/\(interface)/statistics/rx_bytes", "/sys/class/net/\(interface)/statistics/tx_bytes"]
        ).check()
        let numbers = result.standardOutput.split(separator: "\n").compactMap { Int($0) }
        guard numbers.count == 2 else { throw FixtureError("cannot read \(interface) counters in \(host): \(result.standardOutput)") }
        return (numbers[0], numbers[1])
    }
}
