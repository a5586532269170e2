import ArgumentParser
import MeshNode

/// `boxer-mesh`: run unmodified programs inside serverless functions as if they shared one LAN.
struct BoxerMesh: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boxer-mesh",
        abstract: "Make short-lived functions behave like one small datacenter LAN.",
        version: "0.1.0",
        subcommands: [Broker.self, Node.self, Resolve.self, Tap.self, Stun.self, Lab.self, Lambda.self]
    )
}

@main
enum Main {
    static func main() {
        MainThread.run {
            await BoxerMesh.main()  // exits itself with the command's status on failure
            return 0
        }
    }
}
