import Foundation
import MeshLab
import Testing

/// Programs the preload shim cannot reach — a static binary and Go programs, Debian's own builds, unmodified —
/// under `boxer-mesh node`'s seccomp supervisor (`--interpose auto` picks it), in Lambda-sized functions: uid
/// 65534 without capabilities, a read-only root (the supervisor changes no file of the system), a private /tmp.
@Suite(
    "Static and Go programs on the mesh (seccomp supervisor)", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, cgroups, iptables"))
struct SeccompLabTests {
    static let natsClient = LinkLabTests.tool("nats_client.py")
    static let denySeccomp = LinkLabTests.tool("deny_seccomp.py")
    static let fakeDNS = LinkLabTests.tool("fake_dns.py")

    /// busybox's nslookup has a DNS client of its own and never reads /etc/hosts: it reaches mesh names only
    /// through the node's DNS responder. Its UDP socket connects to the name server from the function's
    /// resolv.conf, or the one named on the command line (a fake one on the broker's host here, which answers
    /// everything with 192.0.2.7): a mesh name is answered by the node, any other name by that server.
    @Test("busybox nslookup (its own DNS client) finds mesh names through the node's DNS responder; other names go on to the app's name server")
    func dnsResponder() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "scd", functionMemory: 512) { mesh in
            let upstream = try mesh.lab.spawn(.broker, ["python3", Self.fakeDNS, NATLab.brokerAddress])
            defer { upstream.kill(SIGTERM) }
            #expect(upstream.waitForOutput(containing: "serving", timeout: .seconds(10)), "\(upstream.standardError)")
            let server = try mesh.node(1, name: "web", ["/usr/bin/python3", "-m", "http.server", "8000"])
            defer { server.kill(SIGTERM) }
            #expect(await server.waitForLog(containing: "preload shim"), "\(server.standardError)")
            let address = try mesh.tool(2, ["resolve", "web"]).check().standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            let lookups = try mesh.node(
                2, name: "ask",
                ["/bin/busybox", "sh", "-c",
                 "busybox nslookup web && busybox nslookup web \(NATLab.brokerAddress) && busybox nslookup example.org \(NATLab.brokerAddress)"])
            #expect(lookups.waitUntilExit(timeout: .seconds(60)) == 0, "\(lookups.standardOutput)\n\(lookups.standardError)")
            #expect(lookups.standardError.contains("the app runs under the seccomp supervisor"), "\(lookups.standardError)")
            let answers = lookups.standardOutput.components(separatedBy: "Name:").dropFirst().map {
                $0.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            // web, twice (the function's own name server and the fake one never asked), then example.org.
            #expect(answers.filter { $0.hasPrefix("web") && $0.contains("Address: \(address)") }.count == 2, "\(lookups.standardOutput)")
            #expect(answers.contains { $0.hasPrefix("example.org") && $0.contains("Address: 192.0.2.7") }, "\(lookups.standardOutput)")
            #expect(!upstream.standardOutput.contains("asked web"), "\(upstream.standardOutput)")
            #expect(upstream.standardOutput.contains("asked example.org"), "\(upstream.standardOutput)")
        }
    }

    @Test("busybox-static wget fetches a file from python3 -m http.server by mesh name, sha256 intact; the tap counts its bytes; a closed port is refused")
    func busyboxWget() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "scw", functionMemory: 512) { mesh in
            let tap = try mesh.lab.spawn(
                .broker, [MeshLabFixture.binary, "tap", "--json", "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
            let site = mesh.work.appendingPathComponent("site")
            try FileManager.default.createDirectory(at: site, withIntermediateDirectories: true)
            let file = site.appendingPathComponent("blob.bin").path
            let made = try mesh.lab.run(.broker, ["sh", "-c", "head -c 3000000 /dev/urandom > \(file) && chmod 644 \(file) && sha256sum \(file)"])
            let expected = try #require(made.standardOutput.split(separator: " ").first.map(String.init))
            let server = try mesh.node(1, name: "web", ["/usr/bin/python3", "-m", "http.server", "8000", "--directory", site.path])
            defer { server.kill(SIGTERM) }
            #expect(await server.waitForLog(containing: "preload shim"), "\(server.standardError)")
            try await Task.sleep(for: .seconds(1))
            let client = try mesh.node(
                2, name: "fetch",
                ["/bin/busybox", "sh", "-c", "busybox wget -q -O /tmp/got.bin http://web:8000/blob.bin && busybox sha256sum /tmp/got.bin"])
            #expect(client.waitUntilExit(timeout: .seconds(60)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardOutput.hasPrefix(expected), "got \(client.standardOutput), want \(expected)")
            #expect(client.standardError.contains("the app runs under the seccomp supervisor: /bin/busybox is statically linked"),
                "\(client.standardError)")
            // The tap saw the supervised app's connection, direct, and its close with the file's bytes.
            var events: [[String: Any]] = []
            let closed = await eventually(timeout: .seconds(15)) {
                events = FlowLabTests.events(tap.standardOutput).filter { $0["node"] as? String == "fetch" && $0["peer"] as? String == "web" }
                return events.contains { $0["event"] as? String == "close" }
            }
            #expect(closed, "\(tap.standardOutput)")
            #expect(events.contains { $0["event"] as? String == "connect" && $0["path"] as? String == "direct" && $0["port"] as? Int == 8000 },
                "\(events)")
            #expect(events.contains { $0["event"] as? String == "close" && ($0["bytes_from_peer"] as? Int ?? 0) >= 3_000_000 }, "\(events)")
            let refused = try mesh.node(2, name: "nobody", ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://web:8001/"])
            #expect(refused.waitUntilExit(timeout: .seconds(30)) == 1, "\(refused.standardError)")
            #expect(refused.standardError.contains("Connection refused"), "\(refused.standardError)")
        }
    }

    @Test("where a platform filter forbids seccomp(2): auto warns and falls back to the shim; --interpose seccomp fails clearly (126)")
    func filterForbidden() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "scf", functionMemory: 512) { mesh in
            func forbidden(_ name: String, _ options: [String]) throws -> LabProcess {
                try mesh.lab.spawn(
                    .function(2),
                    ["/usr/bin/python3", Self.denySeccomp, MeshLabFixture.binary, "node", "--broker", MeshLabFixture.brokerHost,
                     "--name", name, "--secret-file", mesh.secretFile] + options + ["--", "/bin/busybox", "true"])
            }
            let auto = try forbidden("auto", [])
            #expect(auto.waitUntilExit(timeout: .seconds(30)) == 0, "\(auto.standardError)")
            #expect(auto.standardError.contains(
                "/bin/busybox is statically linked (no ELF interpreter), but the seccomp supervisor cannot run here"), "\(auto.standardError)")
            #expect(auto.standardError.contains("Operation not permitted"), "\(auto.standardError)")
            let forced = try forbidden("forced", ["--interpose", "seccomp"])
            #expect(forced.waitUntilExit(timeout: .seconds(30)) == 126, "\(forced.standardError)")
            #expect(forced.standardError.contains("cannot run '/bin/busybox': the seccomp supervisor cannot run here"), "\(forced.standardError)")
        }
    }

    @Test("Prometheus scrapes prometheus-node-exporter by mesh name over the relay (hard NATs), a name that joined after Prometheus started: the target is up in Prometheus' API")
    func prometheusOverRelay() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "scp", nat: .hard, functionMemory: 1024) { mesh in
            let config = mesh.work.appendingPathComponent("prometheus.yml").path
            try """
                global:
                  scrape_interval: 2s
                  scrape_timeout: 1500ms
                scrape_configs:
                  - job_name: node
                    static_configs:
                      - targets: ['exporter:9100']
                """.write(toFile: config, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: config)
            // Prometheus first: its resolver (Go's own) reads /etc/hosts before the exporter's name exists, and must
            // see it once the exporter joins.
            let prometheus = try mesh.node(
                1, name: "prometheus", options: ["--log-level", "info"],
                ["/usr/bin/prometheus", "--config.file=\(config)", "--storage.tsdb.path=/tmp/prometheus", "--web.listen-address=127.0.0.1:9090"])
            defer { prometheus.kill(SIGTERM) }
            var early = ""
            let unknown = try await eventually(timeout: .seconds(60)) {
                early = try mesh.lab.run(.function(1), ["curl", "-sS", "--max-time", "2", "http://127.0.0.1:9090/api/v1/targets"],
                    timeout: .seconds(5)).standardOutput
                // A failed scrape: the name is unknown ("lookup exporter … no such host"), or the lookup went on to
                // the function's DNS server, which the lab does not answer ("context deadline exceeded").
                return early.contains(#""health":"down""#)
            }
            #expect(unknown, "before the exporter joined: \(early)")
            let exporter = try mesh.node(
                2, name: "exporter",
                ["/usr/bin/prometheus-node-exporter", "--web.listen-address=:9100", "--collector.disable-defaults", "--collector.loadavg"])
            defer { exporter.kill(SIGTERM) }
            #expect(await exporter.waitForLog(containing: "Listening on", timeout: .seconds(30)), "\(exporter.standardError)")
            let query = "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22node%22%7D"
            var answer = ""
            let up = try await eventually(timeout: .seconds(90)) {
                answer = try mesh.lab.run(.function(1), ["curl", "-sS", "--max-time", "2", query], timeout: .seconds(5)).standardOutput
                return answer.contains(#""instance":"exporter:9100""#) && answer.contains(#","1"]"#)
            }
            #expect(up, "Prometheus says: \(answer)\nits node:\n\(prometheus.standardError)")
            let targets = try mesh.lab.run(.function(1), ["curl", "-sS", "http://127.0.0.1:9090/api/v1/targets"]).standardOutput
            #expect(targets.contains(#""health":"up""#), "\(targets)")
            #expect(prometheus.standardError.contains("/usr/bin/prometheus is a Go program"), "\(prometheus.standardError)")
            #expect(exporter.standardError.contains("/usr/bin/prometheus-node-exporter is a Go program"), "\(exporter.standardError)")
            #expect(prometheus.standardError.contains("path=relay"), "the scrape went direct behind hard NATs: \(prometheus.standardError)")
        }
    }

    @Test("three nats-server in three functions form a cluster by mesh names; a subscriber in a fourth gets every message published in a fifth")
    func natsCluster() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "scn", functions: 5, functionMemory: 512) { mesh in
            let names = ["nats1", "nats2", "nats3"]
            let servers = try names.enumerated().map { index, name in
                let routes = names.filter { $0 != name }.map { "nats://\($0):6222" }.joined(separator: ",")
                return try mesh.node(
                    index + 1, name: name, options: ["--wait-for", "3"],
                    ["/usr/sbin/nats-server", "-n", name, "-p", "4222", "-m", "8222", "--cluster_name", "mesh",
                     "--cluster", "nats://0.0.0.0:6222", "--routes", routes])
            }
            defer { servers.forEach { $0.kill(SIGTERM) } }
            // Each server routes to both others.
            for (index, server) in servers.enumerated() {
                var routez = ""
                let routed = try await eventually(timeout: .seconds(60)) {
                    routez = try mesh.lab.run(.function(index + 1), ["curl", "-sS", "--max-time", "2", "http://127.0.0.1:8222/routez"],
                        timeout: .seconds(5)).standardOutput
                    return routez.contains(#""num_routes": 2"#)
                }
                #expect(routed, "\(names[index]): \(routez)\n\(server.standardError)")
                #expect(server.standardError.contains("/usr/sbin/nats-server is a Go program"), "\(server.standardError)")
                // nats-server logs each route with its peer's address (getpeername, dialled or accepted): the mesh
                // address, never the punched endpoint or the relay's loopback.
                let routes = server.standardError.split(separator: "\n").filter { $0.contains(" - rid:") }
                #expect(!routes.isEmpty && routes.allSatisfy { $0.contains("] 100.64.") }, "\(routes.joined(separator: "\n"))")
                // Go's non-blocking connects: each link took its stand-in's place, with Go's poller registration.
                #expect(!server.standardError.contains("pass through the node") && !server.standardError.contains("did not follow"),
                    "\(server.standardError)")
            }
            let count = 2000
            let subscriber = try mesh.node(4, name: "sub", [Self.natsClient, "sub", "nats1", "4222", "mesh.test", "\(count)"])
            defer { subscriber.kill(SIGTERM) }
            #expect(subscriber.waitForOutput(containing: "ready", timeout: .seconds(30)), "\(subscriber.standardError)")
            // The subscription's interest has reached the publisher's server through the routes.
            let interest = try await eventually(timeout: .seconds(30)) {
                try mesh.lab.run(.function(3), ["curl", "-sS", "--max-time", "2", "http://127.0.0.1:8222/routez?subs=1"], timeout: .seconds(5))
                    .standardOutput.contains(#""mesh.test""#)
            }
            #expect(interest)
            let publisher = try mesh.node(5, name: "pub", [Self.natsClient, "pub", "nats3", "4222", "mesh.test", "\(count)"])
            #expect(publisher.waitUntilExit(timeout: .seconds(60)) == 0, "\(publisher.standardOutput)\n\(publisher.standardError)")
            #expect(subscriber.waitUntilExit(timeout: .seconds(60)) == 0, "\(subscriber.standardOutput)\n\(subscriber.standardError)")
            #expect(subscriber.standardOutput.contains("got \(count) in order"), "\(subscriber.standardOutput)")
        }
    }
}
