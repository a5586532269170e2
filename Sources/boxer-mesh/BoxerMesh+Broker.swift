import ArgumentParser
import Logging
import MeshBroker
import ServiceLifecycle
import WireFormat

extension BoxerMesh {
    struct Broker: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "broker",
            abstract: "Run the broker: membership, names, addresses, hole-punch signalling, STUN reflector, relay and tap.",
            discussion: """
                Run it on a host the functions can reach. Nodes prove they know the mesh secret; with no secret \
                the broker refuses to start unless --insecure is given. Stops cleanly on SIGINT or SIGTERM.
                """)

        @Option(help: ArgumentHelp("Control endpoint (ZeroMQ ROUTER), HOST:PORT or tcp://HOST:PORT.", valueName: "endpoint"))
        var listen = "tcp://0.0.0.0:7700"

        @Option(help: ArgumentHelp("Tap endpoint (ZeroMQ PUB). Default: the --listen host, port 7701.", valueName: "endpoint"))
        var tapListen: String?

        @Option(help: "STUN reflector port (UDP and TCP) on the --listen host.")
        var stunPort: UInt16 = 3478

        @Option(help: "Relay port (ZeroMQ ROUTER) on the --listen host: carries connections no direct link could be punched for.")
        var relayPort: UInt16 = 7702

        @Option(help: """
            Splice port (TCP) on the --listen host, 0 for none: relayed connections of nodes started with --relay-splice \
            move onto TCP connections to it that the broker joins in the kernel. None with --capture-payloads (spliced \
            bytes would bypass the capture).
            """)
        var splicePort: UInt16 = 7704

        @Option(help: ArgumentHelp("Relayed bytes the broker may hold at once, all connections together (MiB).", valueName: "mib"))
        var relayMemoryMib = 256

        @Option(help: ArgumentHelp("Each relayed connection's window per direction while the budget has room (KiB).", valueName: "kib"))
        var relayWindowKib = 1024

        @Flag(help: """
            Publish every relayed connection's payload (sealed per mesh) for `boxer-mesh tap --pcap`. Off by default: \
            without it no payload is published anywhere. Direct links never cross the broker and are never captured.
            """)
        var capturePayloads = false

        @Option(help: ArgumentHelp(
            "Capture endpoint (ZeroMQ PUB), with --capture-payloads. Default: the --listen host, port 7703.", valueName: "endpoint"))
        var captureListen: String?

        @Option(help: ArgumentHelp("Virtual addresses come from this subnet; every mesh has all of it.", valueName: "cidr"))
        var subnet = "100.64.0.0/16"

        @Option(help: ArgumentHelp("Milliseconds between node heartbeats.", valueName: "ms"))
        var heartbeatMs = 500

        @Option(help: ArgumentHelp("A node silent this long is expired and its name and address freed.", valueName: "ms"))
        var expiryMs = 2000

        @Flag(help: "Serve without a secret: anyone who reaches the broker may join any mesh.")
        var insecure = false

        @OptionGroup var secret: SecretOptions
        @OptionGroup var logging: LoggingOptions

        func validate() throws {
            guard heartbeatMs >= 50 else { throw ValidationError("--heartbeat-ms must be at least 50") }
            guard expiryMs > heartbeatMs * 2 else {
                throw ValidationError("--expiry-ms must be more than twice --heartbeat-ms, or healthy nodes expire")
            }
            guard (64...65536).contains(relayWindowKib) else { throw ValidationError("--relay-window-kib must be 64...65536") }
            guard capturePayloads || captureListen == nil else {
                throw ValidationError("--capture-listen needs --capture-payloads (payload capture is off without it)")
            }
            guard relayMemoryMib >= 1, relayMemoryMib * 1024 >= 2 * relayWindowKib else {
                throw ValidationError("--relay-memory-mib must hold at least one connection's two windows")
            }
        }

        func run() async throws {
            let logger = logging.makeLogger("boxer-mesh.broker")
            guard let secret = try secret.load() ?? (insecure ? MeshSecret.insecure : nil) else {
                throw ValidationError(
                    "no mesh secret: give --secret-file PATH or set \(MeshSecret.environmentVariable), or pass --insecure")
            }
            if insecure { logger.warning("running with --insecure: anyone who reaches this broker may join") }
            let control = Self.endpoint(listen)
            var configuration = BrokerConfiguration(secret: secret)
            configuration.controlEndpoint = control
            configuration.tapEndpoint = tapListen.map(Self.endpoint) ?? Self.replacingPort(of: control, with: 7701)
            configuration.subnet = try IPv4Subnet(subnet)
            configuration.stunPort = stunPort
            // Spliced bytes never pass the relay's capture: a broker that captures keeps relayed connections there.
            let splices = splicePort != 0 && !capturePayloads
            configuration.splicePort = splices ? splicePort : 0
            if capturePayloads && splicePort != 0 {
                logger.notice("payload capture is on: no splice port, so relayed connections stay on the relay, where they are captured")
            }
            configuration.heartbeatInterval = .milliseconds(heartbeatMs)
            configuration.expiry = .milliseconds(expiryMs)
            if !IPv4Subnet.sharedAddressSpace.contains(configuration.subnet) {
                logger.warning("subnet \(configuration.subnet) is outside 100.64.0.0/10; it may clash with real addresses")
            }
            let reflector = ReflectorConfiguration(host: Self.host(of: control), port: stunPort)
            var relay = RelayConfiguration()
            relay.endpoint = Self.replacingPort(of: control, with: relayPort)
            relay.memoryBudget = relayMemoryMib << 20
            relay.maximumWindow = relayWindowKib << 10
            relay.minimumWindow = min(relay.minimumWindow, relay.maximumWindow)
            if capturePayloads {
                let endpoint = captureListen.map(Self.endpoint) ?? Self.replacingPort(of: control, with: 7703)
                relay.capture = RelayCaptureConfiguration(endpoint: endpoint, secret: secret)
                configuration.capturePort = MeshBroker.port(of: endpoint)
                guard configuration.capturePort != 0 else {
                    throw ValidationError("--capture-listen needs a fixed port (nodes and taps learn it from the broker)")
                }
            }
            let directory = RelayDirectory()
            var services: [any Service] = [
                ControlPlane(configuration: configuration, logger: logger, relay: directory),
                Reflector(configuration: reflector, logger: logger),
                Relay(configuration: relay, directory: directory, logger: logger),
            ]
            if splices {
                var splice = SpliceConfiguration()
                splice.host = reflector.host
                splice.port = splicePort
                services.append(Splicer(configuration: splice, directory: directory, logger: logger))
            }
            let group = ServiceGroup(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger)
            try await group.run()
        }

        /// "HOST:PORT" → "tcp://HOST:PORT"; a full endpoint passes unchanged.
        static func endpoint(_ text: String) -> String { text.contains("://") ? text : "tcp://\(text)" }

        static func host(of endpoint: String) -> String {
            var host = endpoint.split(separator: "://").last.map(String.init) ?? endpoint
            if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            return host == "*" ? "0.0.0.0" : host
        }

        static func replacingPort(of endpoint: String, with port: UInt16) -> String {
            guard let colon = endpoint.lastIndex(of: ":") else { return "\(endpoint):\(port)" }
            return "\(endpoint[..<colon]):\(port)"
        }
    }
}
