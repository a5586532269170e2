import Foundation
import MeshLab
import Testing

/// Relayed connections end to end in the NAT lab, driven by Tests/tools/relay_app.py (an app speaking the shim
/// protocol itself, under `--no-shim`): hard NATs on both sides defeat punching, so every connection goes
/// node ↔ broker ↔ node over ZeroMQ; with easy NATs and a firewall rule that blocks punching until it is lifted,
/// a relayed connection moves to a direct link mid-stream.
@Suite(
    "Relayed connections in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct RelayLabTests {
    static let app = LinkLabTests.tool("relay_app.py")
    static let pythonSubscriber = LinkLabTests.tool("tap_subscriber.py")

    /// Runs `relay_app.py client srv 5000 TEST ARGS` under a node in function `index`; returns it once exited.
    func client(
        _ mesh: MeshLabFixture, _ index: Int, name: String, options: [String] = [], target: String = "srv", _ test: [String],
        timeout: Duration = .seconds(120)
    ) throws -> LabProcess {
        let process = try mesh.node(
            index, name: name, options: ["--no-shim", "--log-level", "debug"] + options, [Self.app, "client", target, "5000"] + test)
        process.waitUntilExit(timeout: timeout)
        return process
    }

    func server(_ mesh: MeshLabFixture, _ index: Int, name: String = "srv", options: [String] = []) throws -> LabProcess {
        let server = try mesh.node(index, name: name, options: ["--no-shim", "--log-level", "debug"] + options, [Self.app, "serve", "5000"])
        guard server.waitForOutput(containing: "listening on 5000", timeout: .seconds(15)) else {
            throw FixtureError("server did not start: \(server.standardError)")
        }
        return server
    }

    @Test("hard NAT on both sides: streams, half-close, resets, TCP options and many connections both ways go through the broker")
    func hardNAT() async throws {
        try await MeshLabFixture.with(prefix: "rlh", nat: .hard) { mesh in
            let tap = try mesh.lab.spawn(
                .broker, [MeshLabFixture.binary, "tap", "--json", "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
            let server = try server(mesh, 1)
            defer { server.kill() }
            let brokerBefore = try mesh.lab.interfaceBytes(.broker, "eth0")
            let started = ContinuousClock.now
            let sink = try client(mesh, 2, name: "c-sink", ["sink", "20000000"])
            #expect(sink.exitStatus == 0, "\(sink.standardOutput)\n\(sink.standardError)")
            #expect(sink.standardOutput.contains("path relay"), "\(sink.standardOutput)")
            #expect(sink.standardOutput.contains("ok sink: the server read the same bytes"), "\(sink.standardOutput)")
            #expect(sink.standardOutput.contains("ok sink: EOF after the answer"), "\(sink.standardOutput)")
            #expect(sink.standardError.contains("no direct link in time; relaying"), "\(sink.standardError)")
            // Punching is tried for max(1 s, 4 × RTT), then the relay opens at once.
            #expect(ContinuousClock.now - started < .seconds(20))
            let brokerAfter = try mesh.lab.interfaceBytes(.broker, "eth0")
            #expect(brokerAfter.received - brokerBefore.received > 20_000_000, "the stream did not cross the broker host")
            #expect(server.standardOutput.contains("path relay"), "\(server.standardOutput)")
            // The tap's close event counts what the apps sent through the relay, to the byte: the client's "SINK\n"
            // and 20,000,000 bytes, the server's answer "sha256 <64 hex digits> 20000000\n".
            var close = ""
            let closed = await eventually(timeout: .seconds(10)) {
                close = tap.standardOutput.split(separator: "\n").map(String.init)
                    .first { $0.contains(#""event":"close""#) && $0.contains(#""node":"c-sink""#) } ?? ""
                return !close.isEmpty
            }
            #expect(closed, "\(tap.standardOutput)")
            #expect(close.contains(#""bytes_to_peer":20000005"#) && close.contains(#""bytes_from_peer":81"#)
                && close.contains(#""path":"relay""#), "\(close)")

            for (name, test, expected) in [
                ("c-source", ["source", "20000000"], "ok source: EOF after the last byte"),
                ("c-echo", ["echo", "20000000"], "ok echo: 20000000 bytes back intact"),
                ("c-reset", ["reset"], "ok reset: ECONNRESET"),
                ("c-options", ["options"], "ok sink: the server read the same bytes"),
            ] {
                let run = try client(mesh, 2, name: name, test)
                #expect(run.exitStatus == 0 && run.standardOutput.contains(expected), "\(name): \(run.standardOutput)\n\(run.standardError)")
            }
            let clientReset = try client(mesh, 2, name: "c-creset", ["client-reset"])
            #expect(clientReset.exitStatus == 0, "\(clientReset.standardOutput)")
            #expect(await eventually(timeout: .seconds(5)) { server.standardOutput.contains("server: saw ECONNRESET") }, "\(server.standardOutput)")

            // Many connections at once, in both directions: fn2 → fn1 and fn1 → fn2 together. These relay at once
            // (--path relay): what is tested here is the relay carrying them all, not 48 punches failing in parallel.
            let reverseServer = try self.server(mesh, 2, name: "srv2")
            defer { reverseServer.kill() }
            let forward = try mesh.node(
                2, name: "c-many", options: ["--no-shim", "--log-level", "info", "--path", "relay"],
                [Self.app, "client", "srv", "5000", "many", "24", "500000"])
            let backward = try mesh.node(
                1, name: "c-many2", options: ["--no-shim", "--log-level", "info", "--path", "relay"],
                [Self.app, "client", "srv2", "5000", "many", "24", "500000"])
            for run in [forward, backward] {
                #expect(run.waitUntilExit(timeout: .seconds(120)) == 0, "\(run.standardOutput)\n\(run.standardError)")
                #expect(run.standardOutput.contains("many: 24/24 connections echoed 500000 bytes intact"), "\(run.standardOutput)")
                #expect(run.standardOutput.contains("paths ['relay']"), "\(run.standardOutput)")
            }

            // Forbidding the relay where punching cannot work: the connect fails, it does not hang.
            let direct = try client(mesh, 2, name: "c-direct", options: ["--path", "direct", "--punch-timeout", "2"], ["sink", "10"])
            #expect(direct.exitStatus == 1 && direct.standardOutput.contains("client failed: errno"), "\(direct.standardOutput)")

            let relayed = await eventually(timeout: .seconds(5)) {
                tap.standardOutput.contains(#""event":"connect""#) && tap.standardOutput.contains(#""path":"relay""#)
            }
            #expect(relayed, "tap printed: \(tap.standardOutput)")
        }
    }

    /// Hundreds of relayed connections opened at once, five rounds, in both directions, while two CPU hogs take the
    /// cores: every connection must echo its bytes intact. fn2 → fn1 forces the relay; fn1 → fn2 punches first
    /// (and fails, behind hard NATs) then relays, as an app with the default path would.
    @Test("stress: 5 rounds of 100 + 100 relayed connections at once beside two CPU hogs, none reset or failed")
    func concurrentStress() async throws {
        try await MeshLabFixture.with(prefix: "rls", nat: .hard) { mesh in
            let hogs = try (0..<2).map { _ in try mesh.lab.spawn(.broker, ["python3", "-c", "while True: pass"]) }
            defer { for hog in hogs { hog.kill() } }
            let forwardServer = try server(mesh, 1)
            defer { forwardServer.kill() }
            let backwardServer = try server(mesh, 2, name: "srv2")
            defer { backwardServer.kill() }
            let rounds = Array(repeating: ["many", "100", "100000"], count: 5).joined(separator: ["then"])
            let forward = try mesh.node(
                2, name: "s-fwd", options: ["--no-shim", "--log-level", "info", "--path", "relay"],
                [Self.app, "client", "srv", "5000"] + rounds)
            let backward = try mesh.node(
                1, name: "s-back", options: ["--no-shim", "--log-level", "info"], [Self.app, "client", "srv2", "5000"] + rounds)
            for run in [forward, backward] {
                #expect(run.waitUntilExit(timeout: .seconds(300)) == 0, "\(run.standardOutput)\n\(run.standardError)")
                let intact = run.standardOutput.components(separatedBy: "many: 100/100 connections echoed 100000 bytes intact")
                #expect(intact.count - 1 == 5, "\(run.standardOutput)")
                #expect(!run.standardOutput.contains("failed"), "\(run.standardOutput)")
            }
            print("relay stress: \(forward.standardOutput)\(backward.standardOutput)")
        }
    }

    @Test("hard NAT on both sides: unmodified redis-benchmark (8 clients) and iperf3 both ways complete through the broker host")
    func unmodifiedApps() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "rla", nat: .hard) { mesh in
            let tap = try mesh.lab.spawn(
                .broker, [MeshLabFixture.binary, "tap", "--json", "--no-flows", "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
            let redis = try mesh.redisServer(1)
            defer { redis.kill(SIGTERM) }
            let iperf = try mesh.node(1, name: "server", ["iperf3", "-s", "-p", "5201", "--forceflush"])
            defer { iperf.kill(SIGTERM) }
            #expect(iperf.waitForOutput(containing: "Server listening", timeout: .seconds(15)), "\(iperf.standardOutput)")
            let brokerBefore = try mesh.lab.interfaceBytes(.broker, "eth0")
            // One process opening 8 connections at once: the node answers its connects concurrently, and after the
            // first punch towards cache failed, the rest relay at once.
            let started = ContinuousClock.now
            let (bench, _) = try mesh.redisBenchmark(
                from: 2, requests: 4000, clients: 8, options: ["--log-level", "info"], timeout: .seconds(120))
            print("relay lab: redis-benchmark -c 8 over the relay took \(ContinuousClock.now - started)")
            for client in try mesh.iperfBothWays(from: 2, to: "server") {
                #expect(client.exitStatus == 0, "\(client.standardOutput)\n\(client.standardError)")
                #expect(client.standardOutput.contains("receiver"), "\(client.standardOutput)")
                print("relay lab: iperf3: \(client.standardOutput.split(separator: "\n").last { $0.contains("receiver") } ?? "")")
            }
            let brokerAfter = try mesh.lab.interfaceBytes(.broker, "eth0")
            #expect(brokerAfter.received - brokerBefore.received > 50_000_000, "the traffic did not cross the broker host")
            let connects = tap.standardOutput.split(separator: "\n").filter { $0.contains(#""event":"connect""#) }
            #expect(connects.count >= 10, "\(tap.standardOutput)")
            #expect(connects.allSatisfy { $0.contains(#""path":"relay""#) }, "\(connects)")
            #expect(bench.standardError.contains("relaying at once"), "\(bench.standardError)")
        }
    }

    @Test("hard NAT, --relay-splice: a connection to a peer a punch just failed for moves onto the broker's splice port at once; both streams arrive whole")
    func splicedAtOnce() async throws {
        try await MeshLabFixture.with(prefix: "rls", nat: .hard) { mesh in
            let server = try server(mesh, 1, options: ["--relay-splice"])
            defer { server.kill() }
            // The first connect punches, fails and relays; the second relays at once, and so splices at once.
            let app = Self.app
            let twice = try mesh.node(
                2, name: "c-twice", options: ["--no-shim", "--log-level", "debug", "--relay-splice"],
                ["sh", "-c", "\(app) client srv 5000 sink 100000 && \(app) client srv 5000 sink 20000000"])
            defer { twice.kill() }
            #expect(twice.waitUntilExit(timeout: .seconds(60)) == 0, "\(twice.standardOutput)\n\(twice.standardError)")
            let intact = twice.standardOutput.components(separatedBy: "ok sink: the server read the same bytes").count - 1
            #expect(intact == 2, "\(twice.standardOutput)")
            let log = twice.standardError.split(separator: "\n")
            #expect(log.contains { $0.contains("no direct link in time; relaying") }, "\(twice.standardError)")
            #expect(log.contains { $0.contains("relaying at once: punching towards this peer failed") }, "\(twice.standardError)")
            #expect(log.contains { $0.contains("moved onto the broker's splice") && $0.contains("attempt=1") }, "\(twice.standardError)")
            #expect(!log.contains { $0.contains("moved to a direct link") }, "\(twice.standardError)")
        }
    }

    @Test("200 MB over a relayed connection arrive with the same sha256; a 1 KB/s reader slows its writer and the broker's memory stays bounded")
    func bigTransferAndSlowReader() async throws {
        try await MeshLabFixture.with(prefix: "rlb", nat: .hard) { mesh in
            let server = try server(mesh, 1)
            defer { server.kill() }
            let big = try client(mesh, 2, name: "c-big", ["sink", "200000000"], timeout: .seconds(300))
            #expect(big.exitStatus == 0, "\(big.standardOutput)\n\(big.standardError)")
            #expect(big.standardOutput.contains("ok sink: the server read the same bytes"), "\(big.standardOutput)")
            #expect(big.standardOutput.contains("path relay"), "\(big.standardOutput)")
            let sent = big.standardOutput.split(separator: "\n").first { $0.hasPrefix("sent 200000000 bytes") } ?? ""
            print("relay lab: \(sent)")

            let baseline = try Self.residentKiB(mesh.broker.pid)
            let flood = try mesh.node(
                2, name: "c-flood", options: ["--no-shim"], [Self.app, "client", "srv", "5000", "flood", "30"])
            var peak = baseline
            let deadline = ContinuousClock.now + .seconds(45)
            while flood.isRunning && ContinuousClock.now < deadline {
                peak = max(peak, try Self.residentKiB(mesh.broker.pid))
                try await Task.sleep(for: .milliseconds(250))
            }
            #expect(flood.waitUntilExit(timeout: .seconds(30)) == 0, "\(flood.standardOutput)\n\(flood.standardError)")
            let accepted = flood.standardOutput.split(separator: "\n").last { $0.hasPrefix("flood: ") } ?? ""
            let bytes = Int(accepted.split(separator: " ").dropFirst().first ?? "") ?? .max
            print("relay lab: broker RSS \(baseline) KiB before the flood, peak \(peak) KiB during it; \(accepted)")
            // The reader took ~30 KB; all the writer got rid of sits in socket buffers and one 1 MiB window.
            #expect(bytes < 64 << 20, "the writer was not slowed: \(accepted)")
            // One connection may make the broker hold at most its two windows (2 MiB); allow for allocator slack.
            #expect(peak - baseline < 16 << 10, "broker RSS grew from \(baseline) KiB to \(peak) KiB")
            // README: relayed data in the broker stays within --relay-memory-mib (256 MiB by default).
            #expect(peak < baseline + (256 << 10))
        }
    }

    @Test("a relayed connection moves to a direct link mid-stream when punching becomes possible; the tap shows it; new connections go direct")
    func upgrade() async throws {
        try await MeshLabFixture.with(prefix: "rlu", nat: .easy) { mesh in
            let python = try mesh.lab.spawn(.broker, [Self.pythonSubscriber, "tcp://127.0.0.1:7701", "default", mesh.secretFile])
            defer { python.kill() }
            #expect(await python.waitForLog(containing: "subscribed to"), "\(python.standardError)")
            let block = { (action: String) throws in try Self.blockPunching(mesh, action) }
            try block("-I")
            let server = try server(mesh, 1)
            defer { server.kill() }
            let stream = try mesh.node(
                2, name: "c-stream", options: ["--no-shim", "--log-level", "debug", "--upgrade-max-interval", "1"],
                [Self.app, "client", "srv", "5000", "stream", "10", "then", "sink", "1000000"])
            #expect(stream.waitForOutput(containing: "path relay", timeout: .seconds(20)), "\(stream.standardOutput)\n\(stream.standardError)")
            try await Task.sleep(for: .seconds(3))
            #expect(!stream.standardError.contains("moved to a direct link"), "upgraded while blocked")
            try block("-D")
            let lifted = ContinuousClock.now
            let moved = await stream.waitForLog(containing: "relayed connection moved to a direct link", timeout: .seconds(10))
            let took = ContinuousClock.now - lifted
            print("relay lab: moved to a direct link \(took) after the block was lifted")
            #expect(moved, "\(stream.standardError)")
            #expect(took < .seconds(3))
            #expect(stream.waitUntilExit(timeout: .seconds(60)) == 0, "\(stream.standardOutput)\n\(stream.standardError)")
            let output = stream.standardOutput.split(separator: "\n").filter { !$0.hasPrefix("streaming") }
            #expect(output.filter { $0.contains("ok sink: the server read the same bytes") }.count == 2, "\(output)")
            // The same node's next connection to that peer goes direct.
            #expect(output.filter { $0.hasPrefix("connected ") }.last?.hasSuffix("path direct") == true, "\(output)")
            let upgraded = await eventually(timeout: .seconds(5)) {
                python.standardOutput.contains(#""kind": "KIND_UPGRADE""#)
            }
            #expect(upgraded, "\(python.standardOutput)")
            let line = python.standardOutput.split(separator: "\n").first { $0.contains("KIND_UPGRADE") } ?? ""
            #expect(line.contains(#""path": "PATH_DIRECT""#), "\(line)")
            #expect(python.standardOutput.contains(#""path": "PATH_RELAY""#), "\(python.standardOutput)")
            // Forcing the relay where punching works: relayed at once, and it stays relayed.
            let forced = try client(mesh, 2, name: "c-forced", options: ["--path", "relay"], ["stream", "3"])
            #expect(forced.exitStatus == 0 && forced.standardOutput.contains("path relay"), "\(forced.standardOutput)\n\(forced.standardError)")
            #expect(!forced.standardError.contains("moved to a direct link"), "\(forced.standardError)")
        }
    }

    /// With `-I`, a firewall rule on each NAT drops whatever goes towards the other NAT, so no punch gets through;
    /// `-D` lifts it.
    static func blockPunching(_ mesh: MeshLabFixture, _ action: String) throws {
        for (nat, other) in [(1, 2), (2, 1)] {
            _ = try mesh.lab.run(
                .nat(nat), ["iptables", action, "FORWARD", "-o", "wan0", "-d", NATLab.publicAddress(ofNAT: other), "-j", "DROP"]
            ).check()
        }
    }

    /// The resident memory of a process, from /proc.
    static func residentKiB(_ pid: Int32) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { throw FixtureError("no VmRSS for \(pid)") }
        return kib
    }
}
