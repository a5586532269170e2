import Foundation
import Glibc
import MeshLab
import Testing

/// Nothing lost when things fail: a peer function that vanishes without a FIN or RST (its processes stopped, its
/// NAT dropping everything, as when a platform freezes or kills it) must not leave apps hanging on it, a peer that
/// is only slow must not be cut off, and an idle direct link must outlive its NATs' TCP timeouts. The apps are
/// Tests/tools/liveness_app.py, plain Python sockets through the preload shim.
@Suite(
    "Vanished peers and idle links in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct FailureLabTests {
    static let app = LinkLabTests.tool("liveness_app.py")
    /// What the node sets on every direct mesh socket, as liveness_app.py prints it (LinkLiveness).
    static let tuned = "keepalive 1 idle 2 interval 1 count 3 user_timeout 0"

    @Test("a vanished peer on a direct link: the app blocked in recv fails within 5 s of the broker's expiry; the tap shows the close")
    func vanishedDirect() async throws {
        try await vanished(prefix: "kav", nat: .easy, path: "direct")
    }

    @Test("a vanished peer on a relayed link: the app blocked in recv fails within 5 s of the broker's expiry; the tap shows the close")
    func vanishedRelayed() async throws {
        try await vanished(prefix: "kar", nat: .hard, path: "relay")
    }

    /// A writer's unacknowledged data keeps keepalive from probing: only the node, told of the expiry, ends it.
    @Test("a vanished peer on a direct link: the app writing to it fails within 5 s of the broker's expiry; the tap shows the close")
    func vanishedWriter() async throws {
        try await vanished(prefix: "kaw", nat: .easy, path: "direct", mode: "write")
    }

    /// fn2's app holds a connection to fn1's app, blocked in recv (`hold`) or writing (`write`); then fn1 vanishes.
    func vanished(prefix: String, nat: NATKind, path: String, mode: String = "hold") async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: prefix, nat: nat) { mesh in
            let tap = try await Self.tap(mesh)
            defer { tap.kill() }
            let server = try Self.server(mesh)
            defer { server.kill() }
            let client = try mesh.node(2, name: "cli", [Self.app, mode, "srv", "7000"])
            defer { client.kill() }
            try #require(client.waitForOutput(containing: "connected at", timeout: .seconds(30)), "\(client.standardOutput)\n\(client.standardError)")
            let connect = await Self.event(in: tap, "connect", node: "cli")
            #expect(connect?["path"] as? String == path, "\(tap.standardOutput)")
            if path == "direct" {
                // Both ends carry the node's settings: the connecting app's socket and the accepted one.
                #expect(client.standardOutput.contains("connected to 7000: \(Self.tuned)"), "\(client.standardOutput)")
                #expect(server.standardOutput.contains("\(mode == "hold" ? "HOLD" : "SINK") on 7000: \(Self.tuned)"), "\(server.standardOutput)")
            }

            let frozen = try Self.vanish(mesh, function: 1, node: server)
            defer { Self.kill(frozen) }
            let expire = await Self.event(in: tap, "expire", node: "srv", timeout: .seconds(10))
            let expiredAt = try #require(expire?["time_unix_ms"] as? Int, "no expire event: \(tap.standardOutput)")
            let call = mode == "hold" ? "recv" : "send"
            try #require(client.waitForOutput(containing: "\(call) ended", timeout: .seconds(15)), "\(client.standardOutput)")
            let ended = try #require(client.standardOutput.split(separator: "\n").first { $0.hasPrefix("\(call) ended") })
            let words = ended.split(separator: " ")
            let failedAt = try #require(Int(words.last ?? ""), "\(ended)")
            let delay = failedAt - expiredAt
            print("failure lab (\(path), \(mode)): the app's \(call) ended with \(words[2]) \(delay) ms after the broker expired its peer")
            // The node resets the socket (a recv blocked at that moment returns EPIPE, later calls ECONNRESET); where
            // it cannot, keepalive does (ETIMEDOUT).
            #expect(["ECONNRESET", "EPIPE", "ETIMEDOUT"].contains(words[2]), "\(call) must fail, not end cleanly: \(ended)")
            #expect(delay <= 5000, "\(delay) ms after the expiry")
            let close = await Self.event(in: tap, "close", node: "cli")
            #expect(close?["peer"] as? String == "srv" && close?["path"] as? String == path, "\(tap.standardOutput)")
        }
    }

    @Test("a peer frozen for 1 s (processes stopped, its NAT dropping everything) is not cut off: the echo stream goes on intact")
    func frozenPeer() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "kaf") { mesh in
            let tap = try await Self.tap(mesh)
            defer { tap.kill() }
            let server = try Self.server(mesh)
            defer { server.kill() }
            let client = try mesh.node(2, name: "cli", [Self.app, "echo", "srv", "7000", "6"])
            defer { client.kill() }
            try #require(client.waitForOutput(containing: "connected to 7000", timeout: .seconds(30)), "\(client.standardError)")
            #expect(await Self.event(in: tap, "connect", node: "cli")?["path"] as? String == "direct", "\(tap.standardOutput)")
            let frozen = try Self.vanish(mesh, function: 1, node: server)
            // The freeze itself is what is tested: one second of a stopped, unreachable peer.
            try await Task.sleep(for: .seconds(1))
            try Self.reappear(mesh, function: 1, frozen)
            #expect(client.waitUntilExit(timeout: .seconds(60)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardOutput.contains("ok echo"), "\(client.standardOutput)")
            #expect(server.isRunning, "\(server.standardError)")
            #expect(!tap.standardOutput.contains(#""event":"expire""#), "\(tap.standardOutput)")
        }
    }

    @Test("a direct link idle for 3 × its NATs' 10 s TCP timeout carries data both ways; without keepalive (set by both apps) it is lost")
    func idleLink() async throws {
        try MeshLabFixture.requireShim()
        let timeout = 10
        try await MeshLabFixture.with(prefix: "kai", natTCPTimeout: timeout) { mesh in
            let sysctl = try mesh.lab.run(.nat(1), ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_established"]).check()
            #expect(sysctl.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "\(timeout)")
            let server = try Self.server(mesh)
            defer { server.kill() }
            let client = try mesh.node(2, name: "cli", [Self.app, "idle", "srv", "7000", "\(3 * timeout)"])
            defer { client.kill() }
            #expect(client.waitUntilExit(timeout: .seconds(Int64(3 * timeout + 60))) == 0, "\(client.standardOutput)\n\(client.standardError)")
            let output = client.standardOutput
            #expect(output.contains("keepalive: carried data both ways after 30.0 s idle"), "\(output)")
            // The control: both apps turned keepalive off (the client before connect, the server on its listener),
            // so nothing refreshed the NATs' mappings.
            #expect(output.contains("connected to 7001: keepalive 0"), "\(output)")
            #expect(server.standardOutput.contains("IDLE on 7001: keepalive 0"), "\(server.standardOutput)")
            #expect(output.contains("no-keepalive: lost after 30.0 s idle"), "\(output)")
            #expect(output.contains("connected to 7000: \(Self.tuned)"), "\(output)")
            #expect(server.standardOutput.contains("IDLE on 7000: \(Self.tuned)"), "\(server.standardOutput)")
        }
    }

    // MARK: Helpers

    /// `boxer-mesh tap --json` on the broker host, once it watches the mesh.
    static func tap(_ mesh: MeshLabFixture) async throws -> LabProcess {
        let tap = try mesh.lab.spawn(
            .broker, [MeshLabFixture.binary, "tap", "--json", "--no-flows", "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
        guard await tap.waitForLog(containing: "watching mesh") else { throw FixtureError("the tap did not start: \(tap.standardError)") }
        return tap
    }

    /// liveness_app.py serving ports 7000 and 7001 as node `srv` in function 1.
    static func server(_ mesh: MeshLabFixture) throws -> LabProcess {
        let server = try mesh.node(1, name: "srv", [app, "serve", "7000"])
        guard server.waitForOutput(containing: "listening on 7000", timeout: .seconds(15)) else {
            throw FixtureError("server did not start: \(server.standardError)")
        }
        return server
    }

    /// The first tap event of `kind` about `node`, once it came.
    static func event(in tap: LabProcess, _ kind: String, node: String, timeout: Duration = .seconds(15)) async -> [String: Any]? {
        var found: [String: Any]? = nil
        _ = await eventually(timeout: timeout) {
            found = FlowLabTests.events(tap.standardOutput).first { $0["event"] as? String == kind && $0["node"] as? String == node }
            return found != nil
        }
        return found
    }

    /// Makes function `index` vanish without a FIN or RST: its node and app stop (SIGSTOP) and its NAT drops
    /// everything it forwards. Returns the stopped processes.
    static func vanish(_ mesh: MeshLabFixture, function index: Int, node: LabProcess) throws -> [Int32] {
        let pids = processTree(node.pid)
        for pid in pids { Glibc.kill(pid, SIGSTOP) }
        _ = try mesh.lab.run(.nat(index), ["iptables", "-I", "FORWARD", "1", "-j", "DROP"]).check()
        return pids
    }

    /// Undoes ``vanish(_:function:node:)``.
    static func reappear(_ mesh: MeshLabFixture, function index: Int, _ pids: [Int32]) throws {
        _ = try mesh.lab.run(.nat(index), ["iptables", "-D", "FORWARD", "1"]).check()
        for pid in pids { Glibc.kill(pid, SIGCONT) }
    }

    /// Stopped processes do not go with the lab: kill them.
    static func kill(_ pids: [Int32]) {
        for pid in pids { Glibc.kill(pid, SIGKILL) }
    }

    /// `pid` and its descendants, from /proc's child lists.
    static func processTree(_ pid: Int32) -> [Int32] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let children = tasks.flatMap { task in
            ((try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? "")
                .split(separator: " ").compactMap { Int32($0) }
        }
        return [pid] + children.flatMap(processTree)
    }
}
