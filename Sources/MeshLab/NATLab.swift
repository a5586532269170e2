import FoundationEssentials
import Glibc
import Logging
import PlainText

/// A lab of network namespaces that puts functions behind NATs and a broker on a shared "internet".
///
/// Topology, with prefix `P` (namespaces are `P-NAME`):
/// - `P-inet` holds bridge `br0`, the internet 203.0.113.0/24. Every public host is plugged into it.
/// - `P-broker`: `eth0` 203.0.113.10.
/// - `P-natI`: `wan0` 203.0.113.(100+I) on the bridge, `lan0` 10.1.I.1; NATs the LAN (see ``NATKind``), forwards,
///   and drops unsolicited inbound, to the LAN and to itself.
/// - `P-fnI`: `eth0` 10.1.I.2, default route via 10.1.I.1. Nothing routes out of the lab.
///
/// Every lab operation except ``status()`` needs root. Several labs with different prefixes can run at once.
public struct NATLab: Sendable {
    /// Where `up` writes each lab's state, as `lab-PREFIX.json`.
    public static let stateDirectory = "/run/boxer-mesh"
    /// Where iproute2 keeps named network namespaces.
    static let netnsDirectory = "/run/netns"

    /// The namespace prefix of this lab.
    public let prefix: String
    let logger: Logger

    /// A handle on the lab with namespace prefix `prefix` (1–6 characters of `[a-z0-9]`; checked by every operation).
    /// Creating it changes nothing; ``up(_:)`` builds the lab.
    public init(prefix: String = "bm", logger: Logger = Logger(label: "boxer-mesh.lab")) {
        self.prefix = prefix
        self.logger = logger
    }

    /// True when this process runs as root, which building and entering a lab needs.
    public static var isRoot: Bool { geteuid() == 0 }

    /// Throws ``LabError/Code/invalidPrefix`` unless `prefix` is 1–6 characters of `[a-z0-9]`
    /// (so every interface and namespace name stays short and labs never collide by accident).
    public static func validate(prefix: String) throws {
        let allowed = prefix.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) }
        guard (1...6).contains(prefix.count), allowed else {
            throw LabError(.invalidPrefix, "lab prefix must be 1-6 characters of [a-z0-9], got '\(prefix)'")
        }
    }

    /// The network namespace of `host`: `PREFIX-NAME`, such as `bm-fn1`.
    public func namespace(of host: LabHost) -> String { "\(prefix)-\(host.name)" }

    /// The path of this lab's state file: `/run/boxer-mesh/lab-PREFIX.json`.
    public var stateFile: String { "\(Self.stateDirectory)/lab-\(prefix).json" }

    /// The folder for the lab's delayer program and logs: `/run/boxer-mesh/lab-PREFIX/`.
    public var runDirectory: String { "\(Self.stateDirectory)/lab-\(prefix)" }

    // MARK: Up and down

    /// Builds the lab: first removes any lab with this prefix (a stale or crashed one), then creates the namespaces,
    /// links, addresses and NAT rules, starts the delayers (for a delay or loss), and writes the state file.
    ///
    /// If a step fails, removes everything it made and throws a ``LabError`` that names the failed command and
    /// what it wrote to standard error.
    public func up(_ config: LabConfig) throws {
        try config.validate()
        let tools = try LabTools.find()
        try build(plan(for: config, tools: tools), config: config, tools: tools)
    }

    /// Runs `plan` as `up` does: remove a stale lab, run each command, start the delayers, write state;
    /// clean up on failure.
    func build(_ plan: [[String]], config: LabConfig, tools: LabTools) throws {
        try checkReady()
        let stale = try down()
        if !stale.isEmpty {
            logger.notice("removed a stale lab first", metadata: ["prefix": "\(prefix)", "namespaces": "\(stale)"])
        }
        do {
            for command in plan {
                logger.debug("lab", metadata: ["command": "\(LabShell.quoted(command))"])
                try LabShell.check(command, timeout: .seconds(30))
            }
            try makeFunctionCgroups(config)
            var delayers: [String: Int32] = [:]
            for (host, rules) in delayRules(for: config) {
                guard let python = tools.python else {
                    throw LabError(.toolMissing, "--delay and --loss need python3 (Debian package python3)")
                }
                try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
                let name = namespace(of: host)
                delayers[name] = try LabDelayer.start(
                    namespace: name,
                    ip: tools.ip,
                    python: python,
                    scriptPath: "\(runDirectory)/delayer.py",
                    logPath: "\(runDirectory)/delayer-\(host.name).log",
                    delayMs: config.delayMs,
                    lossPercent: config.lossPercent
                )
                for rule in rules {
                    try LabShell.check([tools.ip, "netns", "exec", name, tools.iptables] + rule, timeout: .seconds(30))
                }
            }
            var state = LabState(prefix: prefix, config: config, createdAt: Date(), lab: self)
            state.delayers = delayers.isEmpty ? nil : delayers
            try writeState(state)
            logger.info(
                "lab up",
                metadata: ["prefix": "\(prefix)", "functions": "\(config.functions)", "nat": "\(config.nat)"]
            )
        } catch {
            let error = error as? LabError ?? LabError(.launchFailed, "\(error)")
            let cleanup: String
            do {
                let removed = try down()
                cleanup = "removed the \(removed.count) namespaces it had made"
            } catch let cleanupError {
                cleanup = "cleanup failed too (\(cleanupError)); run `boxer-mesh lab down --prefix \(prefix)`"
            }
            throw error.adding(context: "lab '\(prefix)' up failed, \(cleanup)")
        }
    }

    /// Removes every network namespace whose name starts with `PREFIX-` (killing the processes in them first, the
    /// delayers among them), the function hosts' cgroups and private /tmp folders, the state file and the run folder.
    /// Works on a half-built lab and without a state file.
    /// Returns the namespaces it removed.
    @discardableResult
    public func down() throws -> [String] {
        try checkReady()
        let ip = try LabShell.ip()
        let names = try existingNamespaces()
        for name in names {
            // A process left in a namespace keeps it (and its links) alive after the name is gone: end them all.
            let pids = (try? LabShell.run([ip, "netns", "pids", name], timeout: .seconds(10)))?.standardOutput ?? ""
            for pid in pids.split(whereSeparator: \.isWhitespace).compactMap({ Int32($0) })
            where pid > 1 && pid != getpid() {
                posixKill(pid, SIGKILL)
            }
        }
        var failures: [String] = []
        for name in names {
            let result = try LabShell.run([ip, "netns", "del", name], timeout: .seconds(30))
            if !result.succeeded {
                failures.append("\(name): \(result.standardError.trimmingWhitespace())")
            }
        }
        // After the namespaces: what still runs in a cgroup then is a stray, and the tmpfs are no longer in use.
        failures += removeFunctionLeftovers()
        for path in [stateFile, runDirectory] where FileManager.default.fileExists(atPath: path) {
            do {
                try FileManager.default.removeItem(atPath: path)
            } catch {
                failures.append("\(path): \(error)")
            }
        }
        guard failures.isEmpty else {
            throw LabError(.commandFailed, "lab '\(prefix)' down could not remove: \(failures.joined(separator: "; "))")
        }
        if !names.isEmpty {
            logger.info("lab down", metadata: ["prefix": "\(prefix)", "namespaces": "\(names.count)"])
        }
        return names
    }

    /// The namespaces that exist now and belong to this lab (name starts with `PREFIX-`), sorted.
    public func existingNamespaces() throws -> [String] {
        try Self.validate(prefix: prefix)
        guard FileManager.default.fileExists(atPath: Self.netnsDirectory) else { return [] }
        let all = try FileManager.default.contentsOfDirectory(atPath: Self.netnsDirectory)
        return all.filter { $0.hasPrefix(prefix + "-") }.sorted()
    }

    // MARK: Running programs in the lab

    /// Runs `args` (program first, found through PATH) in `host`'s namespace (as the function, in a function host of
    /// a lab with function limits), waits, and returns how it ended and what it printed. Throws only if the host does not exist or the program cannot be started; check
    /// ``CommandResult/status`` or call ``CommandResult/check()`` for the outcome. With `timeout`, a program still
    /// running then is killed and the result says ``CommandResult/timedOut``.
    public func run(_ host: LabHost, _ args: [String], timeout: Duration? = nil) throws -> CommandResult {
        let command = try netnsExec(host, args)
        var result = try LabShell.run(command, timeout: timeout)
        result.command = args
        return result
    }

    /// Starts `args` (program first, found through PATH) in `host`'s namespace (as the function, in a function host
    /// of a lab with function limits) and returns at once.
    /// `environment` is added to this process's environment.
    public func spawn(_ host: LabHost, _ args: [String], environment: [String: String] = [:]) throws -> LabProcess {
        try LabProcess(
            host: host, namespace: namespace(of: host), command: netnsExec(host, args), arguments: args,
            environment: environment
        )
    }

    /// Replaces this process with `args` run in `host`'s namespace (`ip netns exec`), with standard input, output
    /// and error inherited: the caller's exit status becomes the program's. Returns only by throwing.
    public func exec(_ host: LabHost, _ args: [String]) throws -> Never {
        let command = try netnsExec(host, args)
        fflush(nil)  // every C stream, so nothing printed before is lost
        var argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) }
        argv.append(nil)
        execv(command[0], &argv)
        let reason = String(cString: strerror(errno))
        for pointer in argv { free(pointer) }
        throw LabError(.launchFailed, "cannot exec `\(LabShell.quoted(command))`: \(reason)", command: command)
    }

    /// `ip netns exec NS args…`, after checking root, the prefix, and that the namespace exists; in a function host
    /// of a lab with function limits, the launcher that runs `args` as the function (see `NATLab+Function.swift`).
    func netnsExec(_ host: LabHost, _ args: [String]) throws -> [String] {
        try checkReady()
        guard !args.isEmpty else { throw LabError(.launchFailed, "no command given to run in \(host)") }
        let name = namespace(of: host)
        guard FileManager.default.fileExists(atPath: "\(Self.netnsDirectory)/\(name)") else {
            throw LabError(
                .noSuchNamespace,
                "no namespace \(name) for host \(host) (is the lab up? see `boxer-mesh lab status --prefix \(prefix)`)"
            )
        }
        if case .function(let i) = host, isLimited(function: i) {
            return functionLauncher(i, tools: try LabTools.find()) + args
        }
        return [try LabShell.ip(), "netns", "exec", name] + args
    }

    private func checkReady() throws {
        try Self.validate(prefix: prefix)
        guard Self.isRoot else { throw LabError.notRootError }
    }
}
