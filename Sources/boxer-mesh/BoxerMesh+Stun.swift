import ArgumentParser
import MeshNode
import WireFormat

extension BoxerMesh {
    struct Stun: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stun",
            abstract: "Ask a STUN reflector (the broker's) which public ip:port this host's NAT maps a local port to.",
            discussion: "Prints the mapped endpoint, e.g. 203.0.113.101:40001. Exits 1 when the reflector does not answer.")

        @Argument(help: ArgumentHelp("The reflector as IP[:PORT] (port 3478 by default).", valueName: "server"))
        var server: String

        @Flag(help: "Ask over TCP (the transport punching uses) instead of UDP.")
        var tcp = false

        @Option(help: ArgumentHelp("Send from this local port (bound with SO_REUSEADDR|SO_REUSEPORT).", valueName: "port"))
        var localPort: UInt16?

        @Option(help: ArgumentHelp("Give up after this many seconds.", valueName: "seconds"))
        var timeout: Double = 5

        func run() throws {
            let endpoint = Endpoint(server) ?? IPAddress(server).map { Endpoint(host: $0, port: 3478) }
            guard let endpoint else {
                throw ValidationError("'\(server)' is not IP[:PORT]; give the reflector's address, like 203.0.113.10:3478")
            }
            let mapped = try STUNClient.mappedEndpoint(
                server: endpoint, transport: tcp ? .tcp : .udp, localPort: localPort,
                timeout: .milliseconds(Int64(timeout * 1000)))
            print(mapped)
        }
    }
}
