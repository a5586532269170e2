import ArgumentParser
import Logging
import MeshNode
import WireFormat

extension BoxerMesh {
    struct Resolve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "resolve",
            abstract: "Print the mesh address of a node name, or the name holding a mesh address.",
            discussion: "Exits 1 with a message on standard error when the mesh has no such node.")

        @Argument(help: "A node name (prints its address) or a mesh address (prints its name).")
        var query: String

        @OptionGroup var mesh: MeshOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            let logger = logging.makeLogger("boxer-mesh.resolve")
            let join = try mesh.joinRequest(nodeName: nil)
            let broker = try mesh.brokerAddress()
            let query = query
            let answer = try await MeshSession.withSession(
                join, broker: broker, connectTimeout: mesh.connectTimeoutDuration, logger: logger
            ) { session in
                if let address = IPv4Address(query) {
                    return try await session.resolve(address: address).name
                }
                return try await session.resolve(name: query).ipv4.description
            }
            print(answer)
        }
    }
}
