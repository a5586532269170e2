import Foundation
import MeshLab
import Testing

/// Mesh names as unmodified programs see them (Python's getaddrinfo, getent), answered by their own node: a name
/// resolves in another function from the moment its node joined, and stops resolving when the node leaves, expires
/// or is lost with a broker restart, with no stale answer once the tap has shown the leave.
@Suite(
    "Names in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct NamesLabTests {
    static let watch = LinkLabTests.tool("name_watch.py")
    /// The target node's app: a sleep no other test runs, so that its orphan (after kill -9 of its node) can be
    /// killed by its exact command line (pkill sees every process on the machine, not just the lab's).
    static let targetApp = ["sleep", "61.25"]

    func killOrphanedTargetApp(_ mesh: MeshLabFixture) throws {
        _ = try mesh.lab.run(.function(1), ["pkill", "-x", "-f", Self.targetApp.joined(separator: " ")])
    }

    /// One line of name_watch.py: the answer, when the first lookup giving it started, when the last lookup giving
    /// the previous answer started (ns since the epoch).
    struct Change {
        let answer: String
        let first: UInt64
        let lastOld: UInt64
    }

    func changes(_ watcher: LabProcess) -> [Change] {
        watcher.standardOutput.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ").map(String.init)
            guard parts.count == 4, parts[0] == "change", let first = UInt64(parts[2]), let last = UInt64(parts[3])
            else { return nil }
            return Change(answer: parts[1], first: first, lastOld: last)
        }
    }

    /// `boxer-mesh tap --json` in function 2, each line prefixed with when the tap printed it (ns since the epoch).
    func tap(_ mesh: MeshLabFixture) async throws -> LabProcess {
        let stamp = """
            import subprocess, sys, time
            tap = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
            for line in tap.stdout:
                print(time.time_ns(), line.strip(), flush=True)
            """
        let tap = try mesh.lab.spawn(
            .function(2),
            ["python3", "-c", stamp, MeshLabFixture.binary, "tap", "--json", "--no-flows", "--broker", MeshLabFixture.brokerHost,
             "--secret-file", mesh.secretFile])
        #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
        return tap
    }

    /// When the tap printed the first `event` of `node` (ns since the epoch).
    func shown(_ tap: LabProcess, _ event: String, of node: String) -> UInt64? {
        tap.standardOutput.split(separator: "\n").first { $0.contains(#""event":"\#(event)""#) && $0.contains(#""node":"\#(node)""#) }
            .flatMap { UInt64($0.split(separator: " ")[0]) }
    }

    /// The address a node logged when it joined.
    func joinedAddress(of node: LabProcess) -> String? {
        node.standardError.split(separator: "\n").first { $0.contains("joined mesh") }?.split(separator: " ").last.map(String.init)
    }

    /// name_watch.py watching "target" under node "watcher" in function 2. The lab has no DNS server: the system
    /// resolver, asked once the mesh says "not found", gives up after one short try.
    func watcher(_ mesh: MeshLabFixture) throws -> LabProcess {
        try mesh.node(2, name: "watcher", environment: ["RES_OPTIONS": "timeout:1 attempts:1"], [Self.watch, "target", "40"])
    }

    /// `target` joins in function 1 and a watcher in function 2 sees it by name; `end` makes it go; returns the
    /// watcher once it has seen the name stop resolving, and the tap.
    func watchTargetGo(
        _ mesh: MeshLabFixture, event: String, _ end: (LabProcess) throws -> Void
    ) async throws -> (watcher: LabProcess, tap: LabProcess, target: String) {
        let tap = try await tap(mesh)
        let target = try mesh.node(1, name: "target", Self.targetApp)
        defer { target.kill() }
        #expect(await target.waitForLog(containing: "joined mesh"), "\(target.standardError)")
        let watcher = try watcher(mesh)
        #expect(watcher.waitForOutput(containing: "getent-found", timeout: .seconds(15)), "\(watcher.standardOutput)\n\(watcher.standardError)")
        try await Task.sleep(for: .milliseconds(500))  // lookups that answer with the address, on record
        try end(target)
        #expect(watcher.waitUntilExit(timeout: .seconds(15)) == 0, "\(watcher.standardOutput)\n\(watcher.standardError)")
        #expect(tap.waitForOutput(containing: #""event":"\#(event)""#, timeout: .seconds(5)), "\(tap.standardOutput)")
        return (watcher, tap, try #require(joinedAddress(of: target), "\(target.standardError)"))
    }

    /// The watcher saw `address` by name (getaddrinfo and getent), then "none" from the first lookup after the tap
    /// showed the leave on; returns how long before the tap printed it the last lookup that still answered started.
    func expectGoneBeforeTap(_ watcher: LabProcess, _ tap: LabProcess, event: String, address: String) throws -> Double {
        let seen = changes(watcher)
        #expect(seen.map(\.answer) == [address, "none"], "\(watcher.standardOutput)")
        let lines = watcher.standardOutput.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("getent-found 0 \(address)") && $0.contains(" target (") }, "\(watcher.standardOutput)")
        #expect(lines.contains { $0.hasPrefix("getent-gone 2 ") }, "\(watcher.standardOutput)")
        let shownAt = try #require(shown(tap, event, of: "target"), "\(tap.standardOutput)")
        let gone = try #require(seen.last)
        // The last lookup that still answered with the address started no later than the tap showed the leave. The
        // broker pushes to the nodes before it publishes, but the watcher's node and the tap are two processes
        // that each take it from there: CI saw the node 0.3 ms behind the tap once. Beyond 20 ms is a fault.
        #expect(gone.lastOld < shownAt + 20_000_000, "a lookup started \(Double(gone.lastOld) / 1e6 - Double(shownAt) / 1e6) ms after the tap showed the \(event) still answered \(address)")
        return (Double(shownAt) - Double(gone.lastOld)) / 1e6
    }

    @Test("a name resolves in another function through the shim, and stops resolving when its node leaves, as the tap shows it")
    func leave() async throws {
        try await MeshLabFixture.with(prefix: "nml") { mesh in
            let (watcher, tap, address) = try await watchTargetGo(mesh, event: "leave") { $0.kill(SIGTERM) }
            defer { tap.kill() }
            let margin = try expectGoneBeforeTap(watcher, tap, event: "leave", address: address)
            print("names lab: leave: the last lookup that answered started \(margin) ms before the tap printed the leave; \(watcher.standardOutput)")
        }
    }

    @Test("kill -9 of a node: its name stops resolving when it expires, as the tap shows it")
    func expiry() async throws {
        try await MeshLabFixture.with(prefix: "nmk") { mesh in
            var killed = Date()
            let (watcher, tap, address) = try await watchTargetGo(mesh, event: "expire") { target in
                killed = Date()
                target.kill(SIGKILL)
                try killOrphanedTargetApp(mesh)
            }
            defer { tap.kill() }
            let margin = try expectGoneBeforeTap(watcher, tap, event: "expire", address: address)
            let gone = try #require(changes(watcher).last)
            let afterKill = Double(gone.first) / 1e9 - killed.timeIntervalSince1970
            #expect(afterKill < 3, "the name resolved for \(afterKill) s after kill -9 (expiry: 2 s)")
            print("names lab: expiry: the name stopped resolving \(afterKill) s after kill -9; the last lookup that answered started \(margin) ms before the tap printed the expiry")
        }
    }

    @Test("a node lost while the broker was down: its name stops resolving once the others rejoined the restarted broker")
    func brokerRestart() async throws {
        try await MeshLabFixture.with(prefix: "nmr") { mesh in
            let target = try mesh.node(1, name: "target", Self.targetApp)
            defer { target.kill() }
            #expect(await target.waitForLog(containing: "joined mesh"), "\(target.standardError)")
            let address = try #require(joinedAddress(of: target), "\(target.standardError)")
            let watcher = try watcher(mesh)
            #expect(watcher.waitForOutput(containing: "getent-found", timeout: .seconds(15)), "\(watcher.standardOutput)\n\(watcher.standardError)")
            try mesh.killBroker()
            target.kill(SIGKILL)
            try killOrphanedTargetApp(mesh)
            try await Task.sleep(for: .seconds(1))
            // Still answered meanwhile: nobody (not even a tap) can know it is gone while the broker is away.
            #expect(changes(watcher).map(\.answer) == [address], "\(watcher.standardOutput)")
            try await mesh.restartBroker()
            let restarted = Date().timeIntervalSince1970
            #expect(watcher.waitUntilExit(timeout: .seconds(15)) == 0, "\(watcher.standardOutput)\n\(watcher.standardError)")
            #expect(watcher.standardError.contains("rejoined the mesh"), "\(watcher.standardError)")
            let seen = changes(watcher)
            #expect(seen.map(\.answer) == [address, "none"], "\(watcher.standardOutput)")
            let gone = try #require(seen.last)
            let after = Double(gone.first) / 1e9 - restarted
            #expect(after < 3, "the lost node's name resolved for \(after) s after the broker was back")
            print("names lab: broker restart: the lost node's name stopped resolving \(after) s after the broker was back")
        }
    }
}
