import Foundation
import MeshLab
import Testing

extension SeccompLabTests {
    static let interruptedConnect = LinkLabTests.tool("interrupted_connect.c")
    static let eventLoopConnect = LinkLabTests.tool("event_loop_connect.c")
    static let interruptedAccept = LinkLabTests.tool("interrupted_accept.c")

    /// Connects `count` times, one after another, to srv:7000 and echoes a line on each; prints "echoed N".
    static let lineClient = """
        import socket, sys
        count = int(sys.argv[1])
        for i in range(count):
            with socket.create_connection(("srv", 7000), timeout=20) as s:
                line = b"line %d\\n" % i
                s.sendall(line)
                data = b""
                while not data.endswith(b"\\n"):
                    chunk = s.recv(100)
                    if not chunk:
                        sys.exit("connection %d closed after %r" % (i, data))
                    data += chunk
                if data != line:
                    sys.exit("connection %d echoed %r" % (i, data))
        print("echoed", count, flush=True)
        """

    /// Accepts connections on 7000 and echoes one line on each, printing "accepted N" for the N-th.
    static let lineEcho = """
        import socket
        server = socket.create_server(("0.0.0.0", 7000))
        print("listening", flush=True)
        count = 0
        while True:
            client, _ = server.accept()
            count += 1
            print("accepted", count, flush=True)
            with client, client.makefile("rwb") as stream:
                stream.write(stream.readline())
        """

    /// Builds the C tool `source` with `-static` (so `--interpose auto` supervises it), and starts ``lineEcho`` as
    /// node `echo` in function 1 with `echoOptions`: the program, the listening server (the caller stops it) and
    /// the echo's mesh address as function 2 resolves it.
    static func staticClientOfEcho(
        _ mesh: MeshLabFixture, source: String, echoOptions: [String] = []
    ) throws -> (program: String, server: LabProcess, address: String) {
        let program = mesh.work.appendingPathComponent(URL(fileURLWithPath: source).deletingPathExtension().lastPathComponent).path
        try mesh.lab.run(.broker, ["cc", "-static", "-O2", "-o", program, source]).check()
        let server = try mesh.node(1, name: "echo", options: echoOptions, ["/usr/bin/python3", "-c", lineEcho])
        do {
            guard server.waitForOutput(containing: "listening", timeout: .seconds(15)) else {
                throw FixtureError("the line echo did not start: \(server.standardError)")
            }
            let address = try mesh.tool(2, ["resolve", "echo"]).check().standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
            return (program, server, address)
        } catch {
            server.kill(SIGTERM)
            throw error
        }
    }

    @Test("a static program's connect, interrupted by SIGALRM every millisecond (no SA_RESTART) and retried, makes one link")
    func connectUnderSignals() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "sqi", functionMemory: 1024) { mesh in
            let (program, server, address) = try Self.staticClientOfEcho(mesh, source: Self.interruptedConnect, echoOptions: ["--log-level", "info"])
            defer { server.kill(SIGTERM) }
            let client = try mesh.node(2, name: "client", options: ["--log-level", "info"], [program, address, "7000"])
            #expect(client.waitUntilExit(timeout: .seconds(60)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardError.contains("the app runs under the seccomp supervisor: \(program) is statically linked"),
                "\(client.standardError)")
            #expect(client.standardOutput.contains("echo: hello through the signals"), "\(client.standardOutput)")
            // The timer did interrupt the connect (a link takes milliseconds), and each retry joined the first link.
            let interruptions = client.standardOutput.firstMatch(of: /connected after (\d+) interruptions/).flatMap { Int($0.1) }
            #expect((interruptions ?? 0) > 0, "\(client.standardOutput)")
            #expect(client.standardError.components(separatedBy: "link up").count - 1 == 1, "\(client.standardError)")
            #expect(await server.waitForLog(containing: "link up"), "\(server.standardError)")
            #expect(server.standardError.components(separatedBy: "link up").count - 1 == 1, "\(server.standardError)")
            #expect(server.standardOutput.contains("accepted 1") && !server.standardOutput.contains("accepted 2"), "\(server.standardOutput)")
        }
    }

    /// Also: the node forgets the mesh addresses of sockets the app closed (its table is pruned every 256 links).
    @Test("a static server whose blocking accept SIGALRM interrupts every millisecond (no SA_RESTART) gets every mesh connection")
    func acceptUnderSignals() async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "sqa", functionMemory: 1024) { mesh in
            let program = mesh.work.appendingPathComponent("interrupted_accept").path
            try mesh.lab.run(.broker, ["cc", "-static", "-O2", "-o", program, Self.interruptedAccept]).check()
            let count = 300
            let server = try mesh.node(1, name: "srv", options: ["--log-level", "debug"], [program, "7000", "\(count)"])
            defer { server.kill(SIGTERM) }
            #expect(server.waitForOutput(containing: "listening", timeout: .seconds(15)), "\(server.standardError)")
            let client = try mesh.node(2, name: "client", ["/usr/bin/python3", "-c", Self.lineClient, "\(count)"])
            #expect(client.waitUntilExit(timeout: .seconds(120)) == 0, "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardOutput.contains("echoed \(count)"), "\(client.standardOutput)")
            #expect(server.waitUntilExit(timeout: .seconds(30)) == 0, "\(server.standardOutput)\n\(server.standardError)")
            #expect(server.standardError.contains("the app runs under the seccomp supervisor"), "\(server.standardError)")
            // The timer did interrupt the accepts.
            let interruptions = server.standardOutput.firstMatch(of: /accepted \d+ after (\d+) interruptions/).flatMap { Int($0.1) }
            #expect((interruptions ?? 0) > 0, "\(server.standardOutput)")
            let forgotten = server.standardError.firstMatch(of: /forgot (\d+) mesh sockets the app closed/).flatMap { Int($0.1) }
            #expect((forgotten ?? 0) > 200, "\(server.standardError.suffix(3000))")
        }
    }

    /// A single-threaded event loop that registered its socket with epoll before connect(): the non-blocking
    /// connect returns EINPROGRESS, that registration (its data too) reports the socket writable once the link is
    /// up and, after SO_ERROR put the link in, readable when the echo comes back; getpeername tells the mesh
    /// address. An app that writes at once without asking (`write-first`) is bridged through the node and works
    /// too; a closed port reports its refusal through the same registration and SO_ERROR (`refused`). TCP_NODELAY,
    /// set before connect(), is still set on the socket the app ends up with.
    @Test("a static event loop's non-blocking connect: EINPROGRESS, its epoll registration from before connect follows the link; one that never asks SO_ERROR is bridged; a refusal shows in SO_ERROR",
        arguments: ["ask", "write-first", "refused"])
    func nonBlockingConnect(mode: String) async throws {
        try MeshLabFixture.requireShim()
        try await MeshLabFixture.with(prefix: "sq" + mode.prefix(1), functionMemory: 1024) { mesh in
            let (program, server, address) = try Self.staticClientOfEcho(mesh, source: Self.eventLoopConnect)
            defer { server.kill(SIGTERM) }
            let arguments = mode == "refused" ? [address, "7001"] : [address, "7000"] + (mode == "write-first" ? [mode] : [])
            let client = try mesh.node(2, name: "loop", options: ["--log-level", "info"], [program] + arguments)
            let status = client.waitUntilExit(timeout: .seconds(60))
            #expect(status == (mode == "refused" ? 1 : 0), "\(client.standardOutput)\n\(client.standardError)")
            #expect(client.standardError.contains("the app runs under the seccomp supervisor: \(program) is statically linked"),
                "\(client.standardError)")
            let lines = client.standardOutput.split(separator: "\n").map(String.init)
            let start = ["connect: Operation now in progress", "writable: 1 events, data kept"]
            let expected = switch mode {
            case "refused": start + ["SO_ERROR: Connection refused"]
            case "write-first": start + ["peer: \(address):7000", "nodelay: 1", "readable: 1 events, data kept", "echo: hello from the event loop"]
            default: start + ["SO_ERROR: 0", "peer: \(address):7000", "nodelay: 1", "readable: 1 events, data kept", "echo: hello from the event loop"]
            }
            #expect(lines == expected, "\(client.standardOutput)")
            let bridged = client.standardError.contains("this connection's bytes pass through the node")
            #expect(bridged == (mode == "write-first"), "\(client.standardError)")
            #expect(!client.standardError.contains("did not follow its connect"), "\(client.standardError)")
        }
    }
}
