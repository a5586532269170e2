import Foundation
import MeshLab
import Testing
import Synchronization

/// A NAT lab with a real `boxer-mesh broker` on its public host, for one integration test.
/// Everything runs the built `boxer-mesh` binary in the lab's namespaces; nothing leaves them.
struct MeshLabFixture {
    let lab: NATLab
    let config: LabConfig
    let secretFile: String
    let work: URL
    /// The broker's arguments, so ``restartBroker()`` starts it again the same way.
    let brokerCommand: [String]
    /// Every broker process started, the one running now last.
    private let brokers = BrokerProcesses()

    /// The broker process running now (a new one after ``restartBroker()``).
    var broker: LabProcess { brokers.list.withLock { $0.last! } }

    /// The built CLI beside this test binary (SwiftPM puts both in the same folder).
    static let binary: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("boxer-mesh").path
    }()

    static let brokerHost = NATLab.brokerAddress

    /// The function size of every lab that names none: 512 MB, as a user would size a small function (0.29 vCPU,
    /// unprivileged, read-only root), or BOXER_MESH_TEST_FUNCTION_MEMORY MB (0: no limits, root, the whole machine).
    static let defaultFunctionMemory: Int? = {
        guard let text = ProcessInfo.processInfo.environment["BOXER_MESH_TEST_FUNCTION_MEMORY"] else { return 512 }
        let megabytes = Int(text) ?? -1  // not a number: the lab refuses it with the sizes it takes
        return megabytes == 0 ? nil : megabytes
    }()

    /// A shell command that runs `command` with `$out` naming a new file in /tmp, removed afterwards: the one place a
    /// function may write (its root is read-only), and a private file when the lab models no functions.
    static func inTemporaryFile(_ command: String) -> String {
        #"out=$(mktemp) && trap 'rm -f "$out"' EXIT && "# + command
    }

    /// BOXER_MESH_TEST_LAB_PREFIX, when set, replaces every lab's own prefix: on a machine others run labs on too,
    /// a person runs the lab tests (one at a time, `--no-parallel`) in the namespaces given to them.
    static let prefixOverride: String? = ProcessInfo.processInfo.environment["BOXER_MESH_TEST_LAB_PREFIX"]
        .flatMap { $0.isEmpty ? nil : $0 }

    /// The preload shim of this build, where the node looks for it (every `swift build` builds it there).
    static func requireShim() throws {
        let shim = URL(fileURLWithPath: binary).deletingLastPathComponent()
            .appendingPathComponent("boxer-mesh_PreloadShim.resources/libboxer-shim.so").path
        guard FileManager.default.isReadableFile(atPath: shim) else {
            throw FixtureError("no preload shim at \(shim): build with `swift build` (the PreloadShimBuilder plugin)")
        }
    }

    /// What function hosts must see of the machine, though their /tmp is their own: the checkout (the test tools)
    /// and the build, should they live under /tmp (as a CI clone may).
    static let keptInFunctions: [String] = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardizedFileURL.path
        let build = URL(fileURLWithPath: binary).deletingLastPathComponent().path
        return build.hasPrefix(root + "/") ? [root] : [root, build]
    }()

    /// Builds the lab, starts the broker, runs `body`, and always tears everything down. With `functionMemory`,
    /// every function host is a Lambda function of that many MB (``FunctionLimits``): its programs run as an
    /// unprivileged user with a read-only root and a private /tmp.
    static func with<T>(
        prefix: String, functions: Int = 2, nat: NATKind = .easy, natTCPTimeout: Int? = nil,
        functionMemory: Int? = MeshLabFixture.defaultFunctionMemory,
        brokerArguments: [String] = [],
        _ body: (MeshLabFixture) async throws -> T
    ) async throws -> T {
        let prefix = prefixOverride ?? prefix
        let lab = NATLab(prefix: prefix)
        let config = LabConfig(
            functions: functions, nat: nat, natTCPTimeout: natTCPTimeout,
            functionLimits: functionMemory.map { FunctionLimits(memoryMB: $0, keptFromMachineTmp: keptInFunctions) })
        try lab.up(config)
        defer { _ = try? lab.down() }
        // Not under /tmp, which a function host replaces with its own; readable by a function's unprivileged user
        // (the secret is test data).
        let work = URL(fileURLWithPath: "/var/tmp/boxer-mesh-\(prefix)-\(UUID())")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        defer { try? FileManager.default.removeItem(at: work) }
        let secretFile = work.appendingPathComponent("secret").path
        try "integration-\(UUID())\n".write(toFile: secretFile, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: secretFile)
        let fixture = MeshLabFixture(
            lab: lab, config: config, secretFile: secretFile, work: work,
            brokerCommand: [binary, "broker", "--secret-file", secretFile] + brokerArguments)
        defer { fixture.brokers.list.withLock { $0.forEach { $0.kill() } } }
        try await fixture.startBroker()
        return try await body(fixture)
    }

    /// Starts the broker and waits until it serves.
    private func startBroker() async throws {
        let broker = try lab.spawn(.broker, brokerCommand)
        brokers.list.withLock { $0.append(broker) }
        let started = await eventually(timeout: .seconds(10)) {
            broker.standardError.contains("STUN reflector serving") && broker.standardError.contains("control plane serving")
        }
        guard started else {
            throw FixtureError("broker did not start: \(broker.standardError)")
        }
    }

    /// Kills the broker with SIGKILL (no goodbye to anyone) and waits until it is gone.
    func killBroker() throws {
        let broker = broker
        broker.kill(SIGKILL)
        guard broker.waitUntilExit(timeout: .seconds(10)) != nil else { throw FixtureError("the broker survived SIGKILL") }
    }

    /// Starts a fresh broker on the same address and ports (it knows nothing of the old one's state) and waits
    /// until it serves; returns when it began serving.
    @discardableResult
    func restartBroker() async throws -> ContinuousClock.Instant {
        try await startBroker()
        return .now
    }

    /// Starts `boxer-mesh node` in function `index` running `app`.
    func node(
        _ index: Int, name: String, secretFile: String? = nil, options: [String] = [], environment: [String: String] = [:],
        _ app: [String]
    ) throws -> LabProcess {
        try lab.spawn(
            .function(index),
            [Self.binary, "node", "--broker", Self.brokerHost, "--name", name, "--secret-file", secretFile ?? self.secretFile]
                + options + ["--"] + app,
            environment: environment)
    }

    /// Starts unmodified redis-server on port 6379 as node `cache` in function `index` and waits until it is ready
    /// (the caller stops it).
    func redisServer(_ index: Int, options: [String] = []) throws -> LabProcess {
        let server = try node(
            index, name: "cache", options: options,
            ["redis-server", "--protected-mode", "no", "--port", "6379", "--save", "", "--appendonly", "no"])
        guard server.waitForOutput(containing: "Ready to accept connections", timeout: .seconds(15)) else {
            server.kill(SIGTERM)
            throw FixtureError("redis-server did not start: \(server.standardOutput)\n\(server.standardError)")
        }
        return server
    }

    /// Runs unmodified `redis-benchmark` (SET and GET, `requests` requests over `clients` connections) as node `bench`
    /// in function `index` against `cache` (``redisServer(_:options:)``), expects it to complete both, and returns the
    /// process once it exited, with its output one line per report. `benchmarkArguments` go to redis-benchmark
    /// (`-k 0`: a new connection per request), `options` to the node.
    func redisBenchmark(
        from index: Int, requests: Int = 2000, clients: Int = 4, options: [String] = [], benchmarkArguments: [String] = [],
        timeout: Duration = .seconds(60)
    ) throws -> (process: LabProcess, output: String) {
        let bench = try node(
            index, name: "bench", options: options,
            ["redis-benchmark", "-h", "cache", "-p", "6379", "-t", "set,get", "-n", "\(requests)", "-c", "\(clients)", "-q"]
                + benchmarkArguments)
        #expect(bench.waitUntilExit(timeout: timeout) == 0, "\(bench.standardOutput)\n\(bench.standardError)")
        let output = bench.standardOutput.replacingOccurrences(of: "\r", with: "\n")
        #expect(output.contains("SET: ") && output.contains("GET: ") && output.contains("requests per second"), "\(output)")
        return (bench, output)
    }

    /// Runs iperf3 for 2 s from function `index` to the node `server` (iperf3 -s on port 5201), then with -R;
    /// returns both clients once they exited (named client and client-r).
    func iperfBothWays(from index: Int, to server: String) throws -> [LabProcess] {
        try [false, true].map { reverse in
            let client = try node(
                index, name: reverse ? "client-r" : "client",
                ["iperf3", "-c", server, "-p", "5201", "-t", "2", "-f", "m"] + (reverse ? ["-R"] : []))
            client.waitUntilExit(timeout: .seconds(60))
            return client
        }
    }

    /// Runs a boxer-mesh tool (resolve, …) in function `index` and waits for it.
    func tool(_ index: Int, _ arguments: [String]) throws -> CommandResult {
        try lab.run(
            .function(index),
            [Self.binary] + arguments + ["--broker", Self.brokerHost, "--secret-file", secretFile],
            timeout: .seconds(20))
    }
}

/// Shared by the fixture's copies: a restart is seen by all of them.
private final class BrokerProcesses: Sendable {
    let list = Mutex<[LabProcess]>([])
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension LabProcess {
    /// Waits until the program's log (standard error) contains `text`.
    func waitForLog(containing text: String, timeout: Duration = .seconds(10)) async -> Bool {
        await eventually(timeout: timeout) { standardError.contains(text) }
    }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
func eventually(timeout: Duration, _ condition: () throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}
