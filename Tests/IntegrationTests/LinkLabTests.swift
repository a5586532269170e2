import Foundation
import MeshLab
import Testing

/// The node's side of mesh connections, end to end, driven by an app that speaks the shim protocol itself
/// (Tests/tools/shim_protocol_app.py), so it runs without the preload shim: signalling through the broker, the
/// punch through both NATs, the token proof, the socket handed over with SCM_RIGHTS, inbound accept.
@Suite(
    "Direct links in the NAT lab", .serialized,
    .enabled(if: NATLab.isRoot, "needs root: network namespaces, veth pairs and iptables"))
struct LinkLabTests {
    static let app = tool("shim_protocol_app.py")
    static let pythonSubscriber = tool("tap_subscriber.py")

    static func tool(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../tools/\(name)")
            .standardizedFileURL.path
    }

    @Test("a connection between two easy-NAT functions is punched directly, proven, handed over, and shows on the tap from open to close")
    func directLink() async throws {
        try await MeshLabFixture.with(prefix: "itl") { mesh in
            let started = ContinuousClock.now
            let tap = try mesh.lab.spawn(
                .broker, [MeshLabFixture.binary, "tap", "--json", "--broker", "127.0.0.1", "--secret-file", mesh.secretFile])
            defer { tap.kill() }
            #expect(await tap.waitForLog(containing: "watching mesh"), "\(tap.standardError)")
            // An independent subscriber (pyzmq, protoc's Python code, PyNaCl) decodes the same events.
            let python = try mesh.lab.spawn(.broker, [Self.pythonSubscriber, "tcp://127.0.0.1:7701", "default", mesh.secretFile])
            defer { python.kill() }
            #expect(await python.waitForLog(containing: "subscribed to"), "\(python.standardError)")
            let server = try mesh.node(1, name: "srv", options: ["--no-shim", "--log-level", "debug"], [Self.app, "serve", "5000"])
            defer { server.kill() }
            #expect(server.waitForOutput(containing: "listening on 5000", timeout: .seconds(15)), "\(server.standardError)")
            // A node advertises its first endpoint for inbound connections when its app first listens.
            #expect(await server.waitForLog(containing: "advertised an endpoint for inbound connections"), "\(server.standardError)")
            let advert = server.standardError.split(separator: "\n").first { $0.contains("advertised an endpoint") } ?? ""
            #expect(advert.contains("why=the app listens"), "\(server.standardError)")
            let client = try mesh.node(
                2, name: "cli", options: ["--no-shim", "--log-level", "info"],
                ["sh", "-c", "\(Self.app) connect $(\(Self.app) resolve srv) 5000 hello-through-the-nats"])
            #expect(client.waitUntilExit(timeout: .seconds(30)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            let lines = client.standardOutput
            // The server's node had advertised an endpoint: the broker offered it at once, without asking the server.
            #expect(client.standardError.split(separator: "\n").contains { $0.contains("link up") && $0.contains("offer=early") },
                "\(client.standardError)")
            #expect(lines.contains("answer echo:hello-through-the-nats"), "\(lines)")
            #expect(lines.contains("path direct"), "\(lines)")
            // The kernel socket the app got is connected to the server NAT's public endpoint: no relay in between.
            #expect(lines.contains("kernel peer \(NATLab.publicAddress(ofNAT: 1)):"), "\(lines)")
            #expect(server.standardOutput.contains("accepted 100.64."), "\(server.standardOutput)")
            let connected = await eventually(timeout: .seconds(5)) { tap.standardOutput.contains(#""event":"connect""#) }
            #expect(connected, "tap printed: \(tap.standardOutput)")
            let event = tap.standardOutput.split(separator: "\n").first { $0.contains(#""event":"connect""#) } ?? ""
            #expect(event.contains(#""path":"direct""#) && event.contains(#""node":"cli""#) && event.contains(#""peer":"srv""#))
            #expect(event.contains(#""port":5000"#) && event.contains(#""setup_ms":"#), "\(event)")
            // Both apps closed their sockets: the close event carries what each app sent (the client's line of 23
            // bytes, the server's echo of 40), read from the kernel's counters of the sockets the apps held.
            let closed = await eventually(timeout: .seconds(10)) { python.standardOutput.contains(#""kind": "KIND_CLOSE""#) }
            #expect(closed, "\(python.standardOutput)")
            let decoded = python.standardOutput.split(separator: "\n")
            #expect(decoded.filter { $0.contains(#""kind": "KIND_JOIN""#) }.count == 2, "\(python.standardOutput)")
            #expect(decoded.contains { $0.contains(#""kind": "KIND_OPEN""#) && $0.contains(#""path": "PATH_DIRECT""#) },
                "\(python.standardOutput)")
            let close = decoded.first { $0.contains(#""kind": "KIND_CLOSE""#) } ?? ""
            #expect(close.contains(#""bytes_from_to": "23""#) && close.contains(#""bytes_to_from": "40""#), "\(close)")
            #expect(close.contains(#""path": "PATH_DIRECT""#), "\(close)")
            // The duration since the link came up, in whole milliseconds: a link on this lab's paths may carry the
            // exchange within one, and a 0 is left out of protobuf's JSON. Never more than the test has run.
            let duration = close.firstMatch(of: /"duration_ms": "(\d+)"/).flatMap { Int($0.1) } ?? 0
            #expect(duration <= Int((ContinuousClock.now - started) / .milliseconds(1)) + 1, "\(close)")
            #expect(decoded.filter { $0.contains(#""kind": "KIND_CLOSE""#) }.count == 1, "both sides report; one close is published")
        }
    }

    @Test("a port nobody listens on is refused promptly; an unknown address is unreachable")
    func refusedAndUnreachable() async throws {
        try await MeshLabFixture.with(prefix: "itr") { mesh in
            let server = try mesh.node(1, name: "srv", options: ["--no-shim", "--log-level", "debug"], [Self.app, "serve", "5000"])
            defer { server.kill() }
            #expect(server.waitForOutput(containing: "listening on 5000", timeout: .seconds(15)), "\(server.standardError)")
            #expect(await server.waitForLog(containing: "advertised an endpoint for inbound connections"), "\(server.standardError)")
            let started = ContinuousClock.now
            let refused = try mesh.node(
                2, name: "cli", options: ["--no-shim", "--log-level", "debug"], ["sh", "-c", "\(Self.app) connect $(\(Self.app) resolve srv) 5001 x"])
            #expect(refused.waitUntilExit(timeout: .seconds(20)) == 1)
            #expect(refused.standardOutput.contains("errno 111"), "\(refused.standardOutput)")
            #expect(ContinuousClock.now - started < .seconds(5))
            // The broker had offered the server's advertised endpoint at once; the server's refusal withdrew it.
            #expect(refused.standardError.contains("the broker withdrew a connection offered early"), "\(refused.standardError)")
            let unknown = try mesh.node(2, name: "cli2", options: ["--no-shim"], [Self.app, "connect", "100.64.200.200", "5000", "x"])
            #expect(unknown.waitUntilExit(timeout: .seconds(20)) == 1)
            #expect(unknown.standardOutput.contains("errno 113"), "\(unknown.standardOutput)")
        }
    }
}
