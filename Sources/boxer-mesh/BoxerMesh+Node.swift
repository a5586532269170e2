import ArgumentParser
import FoundationEssentials
import Glibc
import MeshNode

extension BoxerMesh {
    struct Node: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "node",
            abstract: "Join the mesh and run an app in it (the function wrapper).",
            usage: "boxer-mesh node --broker HOST[:PORT] --name NAME [options] -- COMMAND [ARGS...]",
            discussion: """
                The app runs with BOXER_MESH, BOXER_MESH_NAME and BOXER_MESH_IP in its environment. SIGINT, \
                SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to it. The node leaves the mesh when \
                the app ends and exits with the app's status (128+N if a signal N ended it).
                """)

        @Option(help: "This node's name in the mesh (a DNS label: letters, digits, '-').")
        var name: String

        @Option(help: ArgumentHelp("Hold the app until the mesh has this many members.", valueName: "n"))
        var waitFor: Int?

        @Option(help: ArgumentHelp("The preload shim to give the app (default: \(MeshNode.Node.shimFileName) beside this executable or in \(MeshNode.Node.shimBuildFolder) there).", valueName: "path"))
        var shim: String?

        @Flag(help: "Run the app without the preload shim (it then cannot reach mesh names and addresses by itself).")
        var noShim = false

        @Option(help: ArgumentHelp(
            "How the app's sockets are reached: auto (the seccomp supervisor for a static or Go program, else the preload shim), preload, seccomp (Linux 5.9+). Default: auto; preload with --no-shim.",
            valueName: "auto|preload|seccomp"))
        var interpose: String?

        @Option(help: ArgumentHelp(
            "Connection paths: auto (punch, relay through the broker if no direct link is up in time), direct (never relay), relay (always relay).",
            valueName: "auto|direct|relay"))
        var path = "auto"

        @Option(help: ArgumentHelp(
            "Seconds a connect punches before it relays (auto) or fails (direct). Default: max(1, 4 x the broker round trip); 5 with --path direct.",
            valueName: "seconds"))
        var punchTimeout: Double?

        @Option(help: ArgumentHelp(
            "Spare direct links kept ready towards each peer the app connects to again and again (from its third connect within 10 s), at most (0: none). A connect that takes one needs no broker and no punch.",
            valueName: "count"))
        var spareLinks = 8

        @Option(help: "The broker's relay port.")
        var relayPort: UInt16 = 7702

        @Option(help: ArgumentHelp("While a connection is relayed, retries to punch back off up to this many seconds.", valueName: "seconds"))
        var upgradeMaxInterval: Double = 30

        @Flag(help: """
            Move relayed connections onto TCP connections to the broker's splice port, which the broker joins in the \
            kernel: neither node copies their bytes, and the app may hold the socket. With --path auto, after two failed \
            punches. Such a connection does not survive a broker restart (the app sees a reset); the relay's do. \
            Both nodes of a connection need it.
            """)
        var relaySplice = false

        @Option(help: ArgumentHelp("Seconds between samples of open connections' bytes, rates and RTT (the tap's flow events).", valueName: "seconds"))
        var flowInterval: Double = 5

        @OptionGroup var mesh: MeshOptions
        @OptionGroup var logging: LoggingOptions

        @Argument(parsing: .postTerminator, help: "The app to run, after '--'.")
        var command: [String] = []

        func validate() throws {
            guard !command.isEmpty else {
                throw ValidationError("give the app to run after '--', e.g. boxer-mesh node --name db -- redis-server")
            }
            if let waitFor, waitFor < 1 { throw ValidationError("--wait-for must be at least 1") }
            if let interpose, InterposeMode(rawValue: interpose) == nil {
                throw ValidationError("--interpose must be auto, preload or seccomp")
            }
            guard PathPolicy(rawValue: path) != nil else { throw ValidationError("--path must be auto, direct or relay") }
            if let punchTimeout, !(punchTimeout > 0 && punchTimeout <= 600) { throw ValidationError("--punch-timeout must be 0...600 seconds") }
            guard (0...64).contains(spareLinks) else { throw ValidationError("--spare-links must be 0...64") }
            guard upgradeMaxInterval >= 0.1 else { throw ValidationError("--upgrade-max-interval must be at least 0.1 seconds") }
            guard flowInterval >= 0.1 && flowInterval <= 3600 else { throw ValidationError("--flow-interval must be 0.1...3600 seconds") }
            if let shim {
                guard shim.hasPrefix("/") else { throw ValidationError("--shim needs an absolute path (the app may change directory)") }
                guard FileManager.default.isReadableFile(atPath: shim) else { throw ValidationError("--shim \(shim): no such readable file") }
                guard !noShim else { throw ValidationError("--shim and --no-shim contradict each other") }
            }
        }

        func run() async throws {
            let logger = logging.makeLogger("boxer-mesh.node")
            var configuration = NodeConfiguration(
                broker: try mesh.brokerAddress(), join: try mesh.joinRequest(nodeName: name), waitFor: waitFor,
                connectTimeout: mesh.connectTimeoutDuration, command: command,
                shim: noShim ? nil : shim ?? MeshNode.Node.bundledShim)
            configuration.links = LinkPolicy(
                path: PathPolicy(rawValue: path) ?? .auto, punchTimeout: punchTimeout.map { .milliseconds(Int64($0 * 1000)) },
                sparesPerPeer: spareLinks)
            configuration.interpose = interpose.flatMap(InterposeMode.init(rawValue:)) ?? (noShim ? .preload : .auto)
            configuration.relayPort = relayPort
            configuration.upgradeMaxInterval = .milliseconds(Int64(upgradeMaxInterval * 1000))
            configuration.relaySplice = relaySplice
            configuration.flowInterval = .milliseconds(Int64(flowInterval * 1000))
            let status = try await MeshNode.Node.run(configuration, logger: logger)
            throw ExitCode(status)
        }
    }
}
