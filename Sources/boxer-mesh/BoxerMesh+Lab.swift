import ArgumentParser
import MeshLab

extension BoxerMesh {
    /// `boxer-mesh lab`: a NAT lab of network namespaces for trying and testing the mesh on one machine.
    struct Lab: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "lab",
            abstract: "Build a NAT lab of network namespaces: a broker host and functions behind NATs (needs root).",
            discussion: """
                Namespaces are PREFIX-inet (the internet bridge, 203.0.113.0/24), PREFIX-broker (203.0.113.10), \
                PREFIX-natI (public 203.0.113.(100+I), LAN 10.1.I.1) and PREFIX-fnI (10.1.I.2, behind natI). \
                Several labs can coexist with different --prefix values.
                """,
            subcommands: [Up.self, Exec.self, Status.self, Down.self]
        )
    }
}

/// Options every `lab` subcommand takes.
struct LabOptions: ParsableArguments {
    @Option(help: "Namespace prefix of the lab: 1-6 characters of [a-z0-9]; namespaces are PREFIX-NAME.")
    var prefix: String = "bm"

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        do {
            try NATLab.validate(prefix: prefix)
        } catch let error as LabError {
            throw ValidationError(error.message)
        }
    }

    func makeLab() -> NATLab {
        NATLab(prefix: prefix, logger: logging.makeLogger("boxer-mesh.lab"))
    }
}

extension NATKind: ExpressibleByArgument {}

extension BoxerMesh.Lab {
    struct Up: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "up",
            abstract: "Build the lab (removing a stale one with the same prefix first).",
            discussion: """
                easy NAT: port-preserving, endpoint-independent mapping (MASQUERADE) that drops unsolicited \
                inbound, like AWS Lambda; TCP hole punching works. hard NAT: a new random public port per \
                destination (MASQUERADE --random-fully); punching fails and traffic must be relayed.
                """
        )

        @OptionGroup var lab: LabOptions

        @Option(help: "Number of function hosts, each behind its own NAT (1-150).")
        var functions: Int = 2

        @Option(help: "NAT kind: easy (port-preserving, Lambda-like) or hard (symmetric, random port per destination).")
        var nat: NATKind = .easy

        @Option(
            name: .customLong("delay"),
            help: """
                One-way delay in ms on everything that arrives over each NAT's WAN link (wan0) and the \
                broker's link (eth0), so a function's RTT to the broker or to another function grows by 2 x MS. \
                As on a wire, a sender's NAT maps a packet as it leaves; the delay is at the far end. \
                A userspace netfilter-queue delayer (python3) holds the packets (this kernel has no netem): \
                measure throughput without it.
                """
        )
        var delayMs: Int = 0

        @Option(
            name: .customLong("loss"),
            help: "Packet loss in percent, on the same links and by the same delayer as --delay."
        )
        var lossPercent: Double = 0

        @Option(
            name: .customLong("nat-tcp-timeout"),
            help: """
                Seconds each NAT keeps an idle established TCP mapping (conntrack's \
                nf_conntrack_tcp_timeout_established in the NAT's namespace; default: the kernel's 5 days). \
                Real NATs forget sooner (cloud NAT gateways after about 350 s).
                """
        )
        var natTCPTimeout: Int?

        @Option(
            name: .customLong("function-memory"),
            help: ArgumentHelp(
                """
                Make every function host an AWS Lambda function of MB megabytes (128-10240): its programs (lab \
                exec, and what tests spawn) run as uid 65534 without capabilities, in cgroups with the CPU \
                quota MB/1769 of one CPU and the hard memory limit MB, with the root file system read-only, \
                a private 512 MB /tmp (TMPDIR=/tmp), and its link shaped to --function-bandwidth. Without it \
                function hosts are plain root shells.
                """,
                valueName: "MB"
            )
        )
        var functionMemory: Int?

        @Option(
            name: .customLong("function-bandwidth"),
            help: ArgumentHelp(
                """
                With --function-memory: each function's link rate in Mbit/s, each way (tbf on its eth0 and its \
                NAT's lan0). Default 600, about what a Lambda function gets.
                """,
                valueName: "MBIT"
            )
        )
        var functionBandwidth: Int?

        var config: LabConfig {
            LabConfig(
                functions: functions, nat: nat, delayMs: delayMs, lossPercent: lossPercent, natTCPTimeout: natTCPTimeout,
                functionLimits: functionMemory.map {
                    FunctionLimits(memoryMB: $0, bandwidthMbit: functionBandwidth ?? FunctionLimits.defaultBandwidthMbit)
                }
            )
        }

        func validate() throws {
            if functionBandwidth != nil && functionMemory == nil {
                throw ValidationError("--function-bandwidth shapes function hosts: give --function-memory too")
            }
            do {
                try config.validate()
            } catch let error as LabError {
                throw ValidationError(error.message)
            }
        }

        func run() async throws {
            let natLab = lab.makeLab()
            try natLab.up(config)
            print(try natLab.status().report)
        }
    }

    struct Exec: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "exec",
            abstract: """
                Run a command inside one lab host (as the function, in a lab with --function-memory); exits with \
                the command's status.
                """,
            usage: "boxer-mesh lab exec [--prefix <prefix>] <host> -- <command> [<argument> ...]"
        )

        @OptionGroup var lab: LabOptions

        @Argument(help: "The host: inet, broker, fn1...fnN or nat1...natN.")
        var host: String

        @Argument(parsing: .postTerminator, help: "The command and its arguments, after `--`.")
        var command: [String] = []

        func validate() throws {
            guard LabHost(name: host) != nil else {
                throw ValidationError("unknown host '\(host)': use inet, broker, fnN or natN")
            }
            guard !command.isEmpty else { throw ValidationError("give the command after `--`") }
        }

        func run() async throws {
            try lab.makeLab().exec(LabHost(name: host)!, command)
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "status",
            abstract: "Show the lab's hosts, namespaces, addresses, NAT kind, delay and function limits."
        )

        @OptionGroup var lab: LabOptions

        func run() async throws {
            let status = try lab.makeLab().status()
            print(status.report)
            let others = NATLab.labsWithState().filter { $0 != lab.prefix }
            if !others.isEmpty {
                print("other labs: \(others.joined(separator: " ")) (see `boxer-mesh lab status --prefix P`)")
            }
        }
    }

    struct Down: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "down",
            abstract: """
                Remove every namespace named PREFIX-*, the function hosts' cgroups and /tmp, and the state file, \
                even of a half-built lab.
                """
        )

        @OptionGroup var lab: LabOptions

        func run() async throws {
            let removed = try lab.makeLab().down()
            print(
                removed.isEmpty
                    ? "nothing to remove for lab '\(lab.prefix)'" : "removed \(removed.joined(separator: " "))"
            )
        }
    }
}
