import ArgumentParser
import FoundationEssentials
import Glibc
import LambdaRuntime
import MeshNode
import WireFormat

extension BoxerMesh {
    struct Lambda: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lambda",
            abstract: "Run as an AWS Lambda custom runtime: one node and its app per invocation.",
            discussion: """
                The runtime the Lambda package's `bootstrap` (boxer-mesh-lambda) runs, in the full binary. \
                Needs \(RuntimeAPI.environmentVariable) (the platform sets it). Each invocation event is JSON: \
                {"broker": "HOST[:PORT]", "mesh": "M", "name": "N" or "namePrefix": "P", "waitFor": K, \
                "command": ["PROGRAM", "ARG", ...], "graceSeconds": S, "relayPort": PORT, "relaySplice": true}; the node joins, runs the \
                command, and the response gives its exit status, last 50 lines (4 KiB) of output and the node's \
                direct and relayed links. The secret comes from \(MeshSecret.environmentVariable), never from an \
                event; \(BrokerAddress.environmentVariable) and BOXER_MESH are defaults for events that name none. \
                The command gets SIGTERM the grace (the event's graceSeconds, else \
                \(RuntimeSettings.graceVariable), else 10 s) before the invocation's deadline and SIGKILL if it \
                lingers; the node leaves the mesh saying why and the response is posted before the deadline.
                """)

        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            let status = await LambdaRuntime.run(
                environment: ProcessInfo.processInfo.environment, logger: logging.makeLogger("boxer-mesh.lambda"))
            throw ExitCode(status)
        }
    }
}
