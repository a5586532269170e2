import Foundation
import MeshLab
import Testing

/// Small python3 programs the lab tests run inside lab hosts (python3 is on every machine of this project).
enum LabScripts {
    /// The interpreter: Debian's, so a pyenv shim's PATH tricks do not matter inside namespaces.
    static let python =
        FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : "python3"

    /// A reflector: listens on every port given (all addresses), answers each connection with the peer's
    /// `ip:port` and closes first. Prints `ready` once all ports listen.
    static let reflector = """
        import socket, sys, threading
        def serve(ls):
            while True:
                c, peer = ls.accept()
                try:
                    c.sendall(f"{peer[0]}:{peer[1]}\\n".encode())
                except OSError:
                    pass
                c.close()
        listeners = []
        for p in sys.argv[1:]:
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("0.0.0.0", int(p)))
            ls.listen(64)
            listeners.append(ls)
        for ls in listeners:
            threading.Thread(target=serve, args=(ls,), daemon=True).start()
        print("ready", flush=True)
        threading.Event().wait()
        """

    /// Asks a reflector: `HOST PORT LOCALPORT` (0 = any). Binds LOCALPORT with SO_REUSEADDR, prints the answer.
    static let whoami = """
        import socket, sys
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if int(sys.argv[3]):
            s.bind(("0.0.0.0", int(sys.argv[3])))
        s.settimeout(5)
        s.connect((sys.argv[1], int(sys.argv[2])))
        data = b""
        while True:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        s.close()
        print(data.decode().strip())
        """

    /// One time-limited connection attempt: `HOST PORT SECONDS`; prints connected, refused, timeout or error.
    static let probe = """
        import socket, sys
        s = socket.socket()
        s.settimeout(float(sys.argv[3]))
        try:
            s.connect((sys.argv[1], int(sys.argv[2])))
            print("connected")
        except TimeoutError:
            print("timeout")
        except ConnectionRefusedError:
            print("refused")
        except OSError as e:
            print("error", e.errno, e)
        """

    /// Round trips: `HOST PORT COUNT`; times COUNT TCP handshakes (connect() = one RTT), prints `MIN MEDIAN` in ms.
    static let rtt = """
        import socket, sys, time
        times = []
        for _ in range(int(sys.argv[3])):
            s = socket.socket()
            s.settimeout(5)
            t0 = time.perf_counter()
            s.connect((sys.argv[1], int(sys.argv[2])))
            times.append((time.perf_counter() - t0) * 1000)
            s.close()
        times.sort()
        print(f"{times[0]:.3f} {times[len(times) // 2]:.3f}")
        """

    /// A hole punch by TCP simultaneous open: `LOCALPORT PEERIP PEERPORT SECONDS NAME`.
    /// Binds LOCALPORT (SO_REUSEADDR + SO_REUSEPORT), connect()s to the peer, retrying until SECONDS pass;
    /// once connected sends `hello from NAME`, reads the peer's line, prints `connected ATTEMPTS PEER LINE`
    /// and exits 0. Prints `gave up` and exits 1 otherwise.
    static let punch = """
        import socket, sys, time
        local_port, peer = int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))
        deadline = time.monotonic() + float(sys.argv[4])
        name = sys.argv[5]
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", local_port))
            s.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
            try:
                s.connect(peer)
            except OSError as e:
                print("attempt", attempts, "failed:", repr(e), flush=True)
                s.close()
                time.sleep(0.1)
                continue
            s.settimeout(3)
            s.sendall(f"hello from {name}\\n".encode())
            data = b""
            while not data.endswith(b"\\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            host, port = s.getpeername()
            print("connected", attempts, f"{host}:{port}", data.decode().strip(), flush=True)
            s.close()
            sys.exit(0 if data else 1)
        print("gave up after", attempts, "attempts", flush=True)
        sys.exit(1)
        """

    /// One UDP datagram each way: `LOCALPORT PEERIP PEERPORT SENDAT NAME`. Binds LOCALPORT, sends
    /// `hello from NAME` to the peer at wall-clock time SENDAT (lab hosts share the clock), then waits 3 s for
    /// the peer's; prints `got LINE` or `nothing`.
    static let crossing = """
        import socket, sys, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", int(sys.argv[1])))
        time.sleep(max(0.0, float(sys.argv[4]) - time.time()))
        s.sendto(f"hello from {sys.argv[5]}".encode(), (sys.argv[2], int(sys.argv[3])))
        s.settimeout(3)
        try:
            print("got", s.recv(256).decode(), flush=True)
        except TimeoutError:
            print("nothing", flush=True)
        """

    /// `python3 -c SCRIPT ARGS…`
    static func command(_ script: String, _ args: [CustomStringConvertible]) -> [String] {
        [python, "-c", script] + args.map(\.description)
    }
}

extension NATLab {
    /// Starts a reflector on `ports` in `host` and waits until it listens.
    func startReflector(in host: LabHost, ports: [Int]) throws -> LabProcess {
        let process = try spawn(host, LabScripts.command(LabScripts.reflector, ports))
        guard process.waitForOutput(containing: "ready", timeout: .seconds(10)) else {
            throw TestFailure("reflector in \(host) did not start: \(process.standardError)")
        }
        return process
    }

    /// The address (`ip`, `port`) the broker's reflector at `port` sees for function `i` connecting from `localPort`.
    func mapping(ofFunction i: Int, localPort: Int, reflectorPort: Int) throws -> (ip: String, port: Int) {
        let result = try run(
            .function(i),
            LabScripts.command(LabScripts.whoami, [NATLab.brokerAddress, reflectorPort, localPort]),
            timeout: .seconds(10)
        ).check()
        let answer = result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = answer.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { throw TestFailure("reflector answered '\(answer)'") }
        return (String(parts[0]), port)
    }

    /// One time-limited connection attempt from `host` to `address:port`: connected, refused, timeout or error.
    func probe(from host: LabHost, to address: String, port: Int, seconds: Double = 1.5) throws -> String {
        try run(host, LabScripts.command(LabScripts.probe, [address, port, seconds]), timeout: .seconds(10))
            .check().standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A test's own failure, with a message.
struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Builds a lab, runs `body`, and always takes the lab down; checks that nothing with the prefix is left.
func withLab(_ prefix: String, _ config: LabConfig, _ body: (NATLab) throws -> Void) throws {
    let lab = NATLab(prefix: prefix)
    try lab.up(config)
    do {
        try body(lab)
    } catch {
        _ = try? lab.down()
        throw error
    }
    try lab.down()
    #expect(try lab.existingNamespaces().isEmpty)
}
