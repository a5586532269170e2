import ArgumentParser
import FoundationEssentials
import Glibc
import MeshNode
import WireFormat

/// `--secret-file`, shared by broker, node, resolve and tap.
struct SecretOptions: ParsableArguments {
    @Option(help: ArgumentHelp("File holding the mesh secret (default: env \(MeshSecret.environmentVariable)).", valueName: "path"))
    var secretFile: String?

    /// The configured secret, or nil when neither the file nor the environment variable is set.
    func load() throws -> MeshSecret? {
        try MeshSecret.load(file: secretFile, environment: ProcessInfo.processInfo.environment)
    }
}

/// Where the broker is and which mesh to use: shared by node, resolve and tap.
struct MeshOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Broker as HOST[:PORT] (default: env \(BrokerAddress.environmentVariable), port \(BrokerAddress.defaultControlPort)).", valueName: "host[:port]"))
    var broker: String?

    @Option(help: "Mesh name (default: env BOXER_MESH, as a node sets it for its app, else 'default').")
    var mesh = ProcessInfo.processInfo.environment["BOXER_MESH"] ?? "default"

    @Option(help: ArgumentHelp("Seconds to keep trying to reach the broker.", valueName: "seconds"))
    var connectTimeout: Double = 10

    @OptionGroup var secret: SecretOptions

    func brokerAddress() throws -> BrokerAddress {
        guard let text = broker ?? ProcessInfo.processInfo.environment[BrokerAddress.environmentVariable] else {
            throw ValidationError("no broker given: use --broker HOST[:PORT] or set \(BrokerAddress.environmentVariable)")
        }
        return try BrokerAddress(parsing: text)
    }

    /// A join request for `nodeName` (nil: a client tool). Without a configured secret this is the insecure
    /// mesh a broker started with `--insecure` serves.
    func joinRequest(nodeName: String?) throws -> JoinRequest {
        let mesh = try MeshName.validated(self.mesh, role: "mesh name")
        let name = try nodeName.map { try MeshName.validated($0, role: "node name") }
        return JoinRequest(mesh: mesh, nodeName: name, secret: try secret.load() ?? .insecure)
    }

    var connectTimeoutDuration: Duration { .milliseconds(Int64(connectTimeout * 1000)) }

    func validate() throws {
        guard connectTimeout > 0 else { throw ValidationError("--connect-timeout must be more than 0 seconds") }
    }
}
