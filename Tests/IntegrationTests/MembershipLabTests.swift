import Foundation
import MeshLab
import Testing

/// The foundation, end to end: the real binary, a real broker on the lab's public host, nodes behind real NATs.
@Suite(
    "Membership in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct MembershipLabTests {
    @Test("two nodes behind easy NATs join, get distinct addresses, see them in their environment, resolve each other; the node exits with the app's status")
    func joinAndResolve() async throws {
        try await MeshLabFixture.with(prefix: "itm") { mesh in
            let app = { (peer: String, status: Int) in
                // The app uses the tool with only the broker address and mesh the node put in its environment.
                ["sh", "-c", "echo \"env $BOXER_MESH_NAME $BOXER_MESH_IP $BOXER_MESH\"; echo \"peer $(\(MeshLabFixture.binary) resolve \(peer) --secret-file \(mesh.secretFile))\"; sleep 1; exit \(status)"]
            }
            let alpha = try mesh.node(1, name: "alpha", options: ["--wait-for", "2"], app("beta", 7))
            let beta = try mesh.node(2, name: "beta", options: ["--wait-for", "2"], app("alpha", 0))
            #expect(alpha.waitUntilExit(timeout: .seconds(20)) == 7, "alpha: \(alpha.standardError)")
            #expect(beta.waitUntilExit(timeout: .seconds(20)) == 0, "beta: \(beta.standardError)")
            let alphaLines = alpha.standardOutput.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            let betaLines = beta.standardOutput.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            let alphaEnv = try #require(alphaLines.first { $0.first == "env" }, "alpha printed: \(alpha.standardOutput)")
            let betaEnv = try #require(betaLines.first { $0.first == "env" }, "beta printed: \(beta.standardOutput)")
            #expect(alphaEnv[1] == "alpha" && betaEnv[1] == "beta")
            #expect(alphaEnv[3] == "default" && betaEnv[3] == "default")
            #expect(alphaEnv[2].hasPrefix("100.64.") && betaEnv[2].hasPrefix("100.64."))
            #expect(alphaEnv[2] != betaEnv[2])
            // Each resolved the other to the address the other saw in its own environment.
            #expect(alphaLines.first { $0.first == "peer" }?.last == betaEnv[2], "alpha: \(alpha.standardOutput)")
            #expect(betaLines.first { $0.first == "peer" }?.last == alphaEnv[2], "beta: \(beta.standardOutput)")
            #expect(mesh.broker.standardError.contains("node=alpha"))
        }
    }

    @Test("the node passes the signals a process manager sends on to its app, and exits with the app's status")
    func signalsReachTheApp() async throws {
        try await MeshLabFixture.with(prefix: "its") { mesh in
            let script = "trap 'echo got-usr1' USR1; trap 'echo got-hup' HUP; trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done"
            let alpha = try mesh.node(1, name: "alpha", ["sh", "-c", script])
            defer { alpha.kill() }
            #expect(alpha.waitForOutput(containing: "ready", timeout: .seconds(20)), "\(alpha.standardError)")
            alpha.kill(SIGUSR1)
            #expect(alpha.waitForOutput(containing: "got-usr1", timeout: .seconds(5)), "\(alpha.standardOutput)")
            alpha.kill(SIGHUP)
            #expect(alpha.waitForOutput(containing: "got-hup", timeout: .seconds(5)), "\(alpha.standardOutput)")
            alpha.terminate()
            #expect(alpha.waitUntilExit(timeout: .seconds(10)) == 9, "\(alpha.standardOutput)\n\(alpha.standardError)")
            #expect(alpha.standardOutput.contains("got-term"))
        }
    }

    @Test("the broker sees nodes arrive from their NAT's public address")
    func nodesComeThroughTheirNAT() async throws {
        try await MeshLabFixture.with(prefix: "itn") { mesh in
            let alpha = try mesh.node(1, name: "alpha", ["sleep", "30"])
            defer { alpha.kill() }
            #expect(await alpha.waitForLog(containing: "joined mesh"))
            let sockets = try mesh.lab.run(.broker, ["ss", "-tnH", "state", "established", "( sport = :7700 )"]).check()
            #expect(sockets.standardOutput.contains("\(NATLab.publicAddress(ofNAT: 1)):"), "\(sockets.standardOutput)")
            #expect(!sockets.standardOutput.contains(NATLab.privateAddress(ofFunction: 1)))
        }
    }

    @Test("kill -9 of a node: the tap shows its expiry within 3 s, and the name is free again")
    func killedNodeExpires() async throws {
        try await MeshLabFixture.with(prefix: "itk") { mesh in
            let tap = try mesh.lab.spawn(
                .function(2), [MeshLabFixture.binary, "tap", "--json", "--broker", MeshLabFixture.brokerHost, "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
            // A sleep no other test runs: its orphan is killed by its exact command line (pkill sees the whole machine).
            let victim = try mesh.node(1, name: "victim", ["sleep", "60.75"])
            #expect(tap.waitForOutput(containing: #""event":"join""#, timeout: .seconds(10)), "\(tap.standardOutput)")
            let killed = ContinuousClock.now
            victim.kill(SIGKILL)
            _ = try? mesh.lab.run(.function(1), ["pkill", "-x", "-f", "sleep 60.75"])  // the orphaned app
            let expired = await eventually(timeout: .seconds(5)) { tap.standardOutput.contains(#""event":"expire""#) }
            let elapsed = ContinuousClock.now - killed
            #expect(expired, "tap printed: \(tap.standardOutput)")
            #expect(elapsed < .seconds(3), "expiry took \(elapsed)")
            let line = tap.standardOutput.split(separator: "\n").first { $0.contains(#""event":"expire""#) } ?? ""
            #expect(line.contains(#""node":"victim""#))
            let again = try mesh.node(1, name: "victim", ["true"])
            #expect(again.waitUntilExit(timeout: .seconds(10)) == 0, "\(again.standardError)")
        }
    }

    @Test("a standard STUN client behind a NAT reports the NAT's public address; over TCP too; the easy NAT keeps the port")
    func stunBehindNAT() async throws {
        try await MeshLabFixture.with(prefix: "its") { mesh in
            let public1 = NATLab.publicAddress(ofNAT: 1)
            // Debian's stun-client (`stun`, RFC 3489, UDP only) is the independent client.
            let udp = try mesh.lab.run(.function(1), ["stun", MeshLabFixture.brokerHost, "-v", "-p", "40001"], timeout: .seconds(20))
            #expect((udp.standardOutput + udp.standardError).contains("MappedAddress = \(public1):40001"), "\(udp)")
            // TCP, the transport punching uses, from a fixed port: our own client.
            let tcp = try mesh.lab.run(
                .function(1), [MeshLabFixture.binary, "stun", "--tcp", "--local-port", "40002", MeshLabFixture.brokerHost],
                timeout: .seconds(15))
            #expect(tcp.status == 0 && tcp.standardOutput == "\(public1):40002\n", "\(tcp)")
        }
    }

    @Test("a wrong secret is refused clearly; garbage on every broker port leaves it serving the others")
    func wrongSecretAndGarbage() async throws {
        try await MeshLabFixture.with(prefix: "itg") { mesh in
            let keeper = try mesh.node(2, name: "keeper", ["sleep", "60"])
            defer { keeper.kill() }
            #expect(await keeper.waitForLog(containing: "joined mesh"))

            let wrongSecret = mesh.work.appendingPathComponent("wrong").path
            try "not-the-secret".write(toFile: wrongSecret, atomically: true, encoding: .utf8)
            let intruder = try mesh.node(1, name: "intruder", secretFile: wrongSecret, ["true"])
            let status = intruder.waitUntilExit(timeout: .seconds(15))
            #expect(status != nil && status != 0)
            #expect(intruder.standardError.contains("wrong mesh secret"), "\(intruder.standardError)")

            // Garbage from a function host: random TCP bytes to the control, tap and STUN ports, a UDP flood at STUN.
            let flood = """
                import os, socket
                host = "\(MeshLabFixture.brokerHost)"
                for port in (7700, 7701, 3478):
                    for size in (1, 11, 4096, 70000):
                        s = socket.create_connection((host, port), timeout=2)
                        try:
                            s.sendall(os.urandom(size))
                        except OSError:
                            pass
                        s.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(5000):
                    u.sendto(os.urandom(i % 600), (host, 3478))
                print("flood done")
                """
            let garbage = try mesh.lab.run(.function(1), ["python3", "-c", flood], timeout: .seconds(30))
            #expect(garbage.standardOutput.contains("flood done"), "\(garbage)")

            #expect(mesh.broker.isRunning)
            let resolved = try mesh.tool(1, ["resolve", "keeper"])
            #expect(resolved.status == 0 && resolved.standardOutput.hasPrefix("100.64."), "\(resolved)")
            let stun = try mesh.lab.run(.function(1), ["stun", MeshLabFixture.brokerHost, "-v"], timeout: .seconds(20))
            #expect((stun.standardOutput + stun.standardError).contains("MappedAddress = \(NATLab.publicAddress(ofNAT: 1)):"), "\(stun)")
            #expect(keeper.isRunning, "the connected node must not notice: \(keeper.standardError)")
            #expect(mesh.broker.standardError.contains("dropped"), "bad input is logged")
        }
    }

    @Test("a node that cannot reach the broker says so and exits non-zero after --connect-timeout")
    func unreachableBroker() async throws {
        try await MeshLabFixture.with(prefix: "itu", functions: 1) { mesh in
            let started = ContinuousClock.now
            let lost = try mesh.lab.spawn(
                .function(1),
                [MeshLabFixture.binary, "node", "--broker", "203.0.113.99", "--name", "lost", "--connect-timeout", "2",
                 "--secret-file", mesh.secretFile, "--", "true"])
            let status = lost.waitUntilExit(timeout: .seconds(15))
            #expect(status == 1, "\(lost.standardError)")
            #expect(ContinuousClock.now - started < .seconds(6))
            #expect(lost.standardError.contains("cannot reach the broker at tcp://203.0.113.99:7700"), "\(lost.standardError)")
        }
    }
}
