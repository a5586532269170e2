import ChildProcess
import Foundation
import Testing

/// A real `boxer-mesh broker` on loopback (ephemeral ports), and ways to run the built binary as a Lambda
/// `bootstrap` against the strict Runtime API of Tests/tools/runtime_api.py. No root, no lab.
struct LambdaFixture {
    let work: URL
    let secret = "lambda fixture secret"
    let controlPort: UInt16
    let relayPort: UInt16
    let brokerLog: String

    static let binary = MeshLabFixture.binary
    /// The Lambda package's bootstrap: BOXER_MESH_LAMBDA_BOOTSTRAP names a packaged one (scripts/test.sh runs
    /// these tests again with the one it packaged), else boxer-mesh-lambda built beside boxer-mesh.
    static let runtimeBinary = ProcessInfo.processInfo.environment["BOXER_MESH_LAMBDA_BOOTSTRAP"]
        ?? URL(fileURLWithPath: binary).deletingLastPathComponent().appendingPathComponent("boxer-mesh-lambda").path

    /// Starts a broker, waits until it serves, runs `body`, and stops everything it started.
    static func with<T>(_ body: (LambdaFixture) async throws -> T) async throws -> T {
        let work = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("boxer-lambda-\(UUID())")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let ports = try freePorts(4)
        let fixture = LambdaFixture(
            work: work, controlPort: ports[0], relayPort: ports[3], brokerLog: work.appendingPathComponent("broker.log").path)
        let secretFile = work.appendingPathComponent("secret").path
        try fixture.secret.write(toFile: secretFile, atomically: true, encoding: .utf8)
        let broker = try ChildProcess(
            [
                binary, "broker", "--listen", "tcp://127.0.0.1:\(ports[0])", "--tap-listen", "tcp://127.0.0.1:\(ports[1])",
                "--stun-port", "\(ports[2])", "--relay-port", "\(ports[3])", "--splice-port", "0", "--subnet", "100.64.0.0/24",
                "--secret-file", secretFile,
            ],
            standardOutput: .null, standardError: .file(fixture.brokerLog))
        defer {
            broker.send(SIGKILL)
            _ = broker.wait()
        }
        let serving = await eventually(timeout: .seconds(20)) {
            let log = fixture.contents(of: fixture.brokerLog)
            return log.contains("control plane serving") && log.contains("STUN reflector serving")
        }
        guard serving else { throw FixtureError("the broker did not start: \(fixture.contents(of: fixture.brokerLog))") }
        return try await body(fixture)
    }

    /// An event as a user writes it, for this fixture's broker and mesh "lambda".
    func event(_ fields: [String: Any]) -> String {
        var all: [String: Any] = ["broker": "127.0.0.1:\(controlPort)", "mesh": "lambda", "relayPort": Int(relayPort)]
        all.merge(fields) { $1 }
        let data = try! JSONSerialization.data(withJSONObject: all, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    /// Starts the strict Runtime API with `invocations` (the raw event text and the seconds to its deadline), then
    /// boxer-mesh-lambda as `bootstrap` against it, with the mesh secret and `environment` in its environment.
    func runtime(_ invocations: [(event: String, deadlineIn: Double)], environment: [String: String] = [:]) async throws -> RuntimeRun {
        try await RuntimeRun(fixture: self, invocations: invocations, environment: environment)
    }

    /// Starts `boxer-mesh node` for this fixture's mesh, as a user would beside the functions.
    func node(_ name: String, _ command: [String]) throws -> ChildProcess {
        let log = work.appendingPathComponent("node-\(name).log").path
        return try ChildProcess(
            [
                Self.binary, "node", "--broker", "127.0.0.1:\(controlPort)", "--mesh", "lambda", "--name", name,
                "--relay-port", "\(relayPort)", "--",
            ] + command,
            environment: ProcessInfo.processInfo.environment.merging(["BOXER_MESH_SECRET": secret]) { $1 },
            standardOutput: .file(log + ".out"), standardError: .file(log))
    }

    func contents(of path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }
}

/// The strict Runtime API (Tests/tools/runtime_api.py) serving `invocations`, and its record of every request.
final class RuntimeAPIServer: Sendable {
    let process: ChildProcess
    let output: String
    let port: Int

    init(fixture: LambdaFixture, invocations: [(event: String, deadlineIn: Double)]) async throws {
        let id = UUID().uuidString.prefix(8)
        let scenario = fixture.work.appendingPathComponent("scenario-\(id).json").path
        let list = invocations.map { ["event": $0.event, "deadline_in": $0.deadlineIn] as [String: Any] }
        try JSONSerialization.data(withJSONObject: list).write(to: URL(fileURLWithPath: scenario))
        let output = fixture.work.appendingPathComponent("api-\(id).out").path
        process = try ChildProcess(["/usr/bin/python3", LinkLabTests.tool("runtime_api.py"), scenario], standardOutput: .file(output))
        self.output = output
        let listening = await eventually(timeout: .seconds(10)) { Self.records(in: output).first?["listening"] != nil }
        guard listening, let port = Self.records(in: output).first?["listening"] as? Int else {
            process.send(SIGKILL)
            throw FixtureError("the Runtime API server did not start")
        }
        self.port = port
    }

    deinit {
        process.send(SIGKILL)
        _ = process.wait()
    }

    /// Every record the server wrote so far, in order.
    var records: [[String: Any]] { Self.records(in: output) }

    /// Rules of the Runtime API that were broken.
    var violations: [String] { records.compactMap { $0["violation"] as? String } }

    /// Waits until the server recorded `count` results (responses and errors) and returns them in order.
    func results(_ count: Int, timeout: Duration) async -> [PostedResult] {
        _ = await eventually(timeout: timeout) { self.postedResults.count >= count }
        return postedResults
    }

    private var postedResults: [PostedResult] {
        records.compactMap { record in
            let before = record["ms_before_deadline"] as? Int ?? 0
            if let id = record["response"] as? String {
                let body = (record["body"] as? String).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) }
                return PostedResult(id: id, response: body as? [String: Any], error: nil, errorType: nil, msBeforeDeadline: before)
            }
            if let id = record["error"] as? String {
                return PostedResult(
                    id: id, response: nil, error: record["body"] as? [String: Any], errorType: record["type"] as? String,
                    msBeforeDeadline: before)
            }
            return nil
        }
    }

    static func records(in path: String) -> [[String: Any]] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }
}

/// What the runtime posted for one invocation.
struct PostedResult {
    let id: String
    /// The response body, parsed; nil for an error.
    let response: [String: Any]?
    /// The error body, parsed; nil for a response.
    let error: [String: Any]?
    /// The Lambda-Runtime-Function-Error-Type header of an error.
    let errorType: String?
    let msBeforeDeadline: Int

    var errorMessage: String { error?["errorMessage"] as? String ?? "" }
    var output: [String] { response?["output"] as? [String] ?? [] }
}

/// One run of the runtime: boxer-mesh-lambda as `bootstrap` against a ``RuntimeAPIServer``.
final class RuntimeRun: Sendable {
    let server: RuntimeAPIServer
    let runtime: ChildProcess
    let runtimeOutput: String
    let runtimeErrors: String

    init(fixture: LambdaFixture, invocations: [(event: String, deadlineIn: Double)], environment: [String: String]) async throws {
        server = try await RuntimeAPIServer(fixture: fixture, invocations: invocations)
        let id = UUID().uuidString.prefix(8)
        runtimeOutput = fixture.work.appendingPathComponent("runtime-\(id).out").path
        runtimeErrors = fixture.work.appendingPathComponent("runtime-\(id).err").path
        // Started under the name the platform uses: a symbolic link called bootstrap.
        let folder = fixture.work.appendingPathComponent("function-\(id)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let bootstrap = folder.appendingPathComponent("bootstrap").path
        try FileManager.default.createSymbolicLink(atPath: bootstrap, withDestinationPath: LambdaFixture.runtimeBinary)
        var variables = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("BOXER_") }
        variables["AWS_LAMBDA_RUNTIME_API"] = "127.0.0.1:\(server.port)"
        variables["BOXER_MESH_SECRET"] = fixture.secret
        variables.merge(environment) { $1 }
        runtime = try ChildProcess(
            [bootstrap], environment: variables, standardOutput: .file(runtimeOutput), standardError: .file(runtimeErrors))
    }

    deinit {
        runtime.send(SIGKILL)
        _ = runtime.wait()
    }

    func results(_ count: Int, timeout: Duration) async -> [PostedResult] { await server.results(count, timeout: timeout) }
    var records: [[String: Any]] { server.records }
    var violations: [String] { server.violations }
}

/// `count` different TCP ports on loopback nobody uses right now (the kernel's picks, all held until all are
/// picked; UDP on the same numbers is almost always free too).
func freePorts(_ count: Int) throws -> [UInt16] {
    var sockets: [Int32] = []
    defer { sockets.forEach { close($0) } }
    return try (0..<count).map { _ in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket: \(String(cString: strerror(errno)))") }
        sockets.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw FixtureError("bind: \(String(cString: strerror(errno)))") }
        return UInt16(bigEndian: address.sin_port)
    }
}
