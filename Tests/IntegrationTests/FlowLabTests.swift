import Foundation
import MeshLab
import Testing

/// The tap's flow samples and close events, end to end: unmodified redis-server and redis-benchmark through the
/// preload shim, over direct punched links, while `boxer-mesh tap --json` watches; the byte counts are checked
/// against redis-server's own counters of what it read and wrote.
@Suite(
    "Flow samples and close events in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct FlowLabTests {
    /// redis-server's total_net_input_bytes and total_net_output_bytes, asked on loopback in its function.
    static func redisTraffic(_ mesh: MeshLabFixture) throws -> (input: Int, output: Int) {
        let info = try mesh.lab.run(.function(1), ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "INFO", "stats"]).check()
        func field(_ name: String) throws -> Int {
            guard let line = info.standardOutput.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix(name + ":") }),
                let value = Int(line.dropFirst(name.count + 1))
            else { throw FixtureError("no \(name) in INFO stats: \(info.standardOutput)") }
            return value
        }
        return (try field("total_net_input_bytes"), try field("total_net_output_bytes"))
    }

    static func events(_ output: String) -> [[String: Any]] {
        output.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    @Test("tap --json during redis-benchmark: join, connect (direct), flow and close events; close bytes match redis-server's counters")
    func redisBenchmark() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "itf") { mesh in
            let tap = try mesh.lab.spawn(
                .broker, [MeshLabFixture.binary, "tap", "--json", "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
            let server = try mesh.redisServer(1, options: ["--flow-interval", "0.2"])
            defer { server.kill(SIGTERM) }
            let before = try Self.redisTraffic(mesh)
            let bench = try mesh.node(
                2, name: "bench", options: ["--flow-interval", "0.2"],
                ["redis-benchmark", "-h", "cache", "-p", "6379", "-t", "set,get", "-n", "40000", "-c", "4", "-d", "1000", "-q"])
            #expect(bench.waitUntilExit(timeout: .seconds(120)) == 0, "\(bench.standardOutput)\n\(bench.standardError)")
            let after = try Self.redisTraffic(mesh)
            // What redis-server read and wrote meanwhile: the benchmark's traffic, and one INFO reply (≈ 2 KB).
            let (input, output) = (after.input - before.input, after.output - before.output)

            // Every connection redis-benchmark opened to cache closes, and the tap says so.
            var connects: [[String: Any]] = []
            var closes: [[String: Any]] = []
            let allClosed = await eventually(timeout: .seconds(15)) {
                let events = Self.events(tap.standardOutput).filter { $0["node"] as? String == "bench" && $0["peer"] as? String == "cache" }
                connects = events.filter { $0["event"] as? String == "connect" }
                closes = events.filter { $0["event"] as? String == "close" }
                let open = Set(connects.compactMap { $0["connection"] as? Int })
                return !open.isEmpty && open == Set(closes.compactMap { $0["connection"] as? Int })
            }
            #expect(allClosed, "connects \(connects.count), closes \(closes.count): \(tap.standardOutput)")
            let events = Self.events(tap.standardOutput)
            let joined = Set(events.filter { $0["event"] as? String == "join" }.compactMap { $0["node"] as? String })
            #expect(joined.isSuperset(of: ["cache", "bench"]), "\(joined)")
            // One connection for the CONFIG queries, then four clients for each of SET and GET.
            #expect(connects.count >= 9, "\(connects.count) connect events")
            #expect(connects.allSatisfy { $0["path"] as? String == "direct" && $0["port"] as? Int == 6379 }, "\(connects)")
            let sent = closes.compactMap { $0["bytes_to_peer"] as? Int }.reduce(0, +)
            let received = closes.compactMap { $0["bytes_from_peer"] as? Int }.reduce(0, +)
            print("flow lab: redis-server read \(input) and wrote \(output) bytes; the tap's close events say \(sent) and \(received)")
            #expect(input > 40_000_000 && output > 40_000_000, "the benchmark moved too little to compare: \(input)/\(output)")
            #expect(abs(Double(sent - input)) / Double(input) < 0.03, "sent \(sent) vs redis read \(input)")
            #expect(abs(Double(received - output)) / Double(output) < 0.03, "received \(received) vs redis wrote \(output)")
            #expect(closes.allSatisfy { ($0["duration_ms"] as? Int ?? -1) >= 0 && $0["path"] as? String == "direct" }, "\(closes)")

            // While the benchmark ran, the connecting node sampled its open connections every 0.2 s.
            let flows = events.filter { $0["event"] as? String == "flow" && $0["peer"] as? String == "cache" }
            #expect(!flows.isEmpty, "no flow samples: \(tap.standardOutput)")
            #expect(flows.contains { ($0["bytes_to_peer"] as? Int ?? 0) > 0 && ($0["rtt_us"] as? Int ?? 0) > 0
                && ($0["rate_to_peer_bps"] as? Int ?? 0) > 0 }, "\(flows)")
        }
    }
}
