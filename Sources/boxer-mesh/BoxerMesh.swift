import ArgumentParser

/// `boxer-mesh`: run unmodified programs inside serverless functions as if they shared one LAN.
@main
struct BoxerMesh: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boxer-mesh",
        abstract: "Make short-lived functions behave like one small datacenter LAN.",
        version: "0.1.0",
        subcommands: [Broker.self, Node.self, Resolve.self, Tap.self, Stun.self, Lab.self, Lambda.self]
    )
}
