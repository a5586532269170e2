/// Absolute paths of the programs that build a lab.
struct LabTools: Sendable {
    var ip: String
    var iptables: String
    var sysctl: String
    /// Runs the delayer; needed only for a delay or loss.
    var python: String?
    /// Shapes function links (iproute2, like `ip`).
    var tc: String
    /// What function hosts are entered through (util-linux and the POSIX shell, on every Linux): `mount` for their
    /// private `/tmp` and read-only root, `unshare` for their mount namespace, `setpriv` to drop to their user.
    var mount: String
    var unshare: String
    var setpriv: String
    var sh: String

    /// Finds every tool, or throws ``LabError/Code/toolMissing`` naming the Debian package to install.
    static func find() throws -> LabTools {
        try LabTools(
            ip: LabShell.tool("ip"),
            iptables: LabShell.tool("iptables"),
            sysctl: LabShell.tool("sysctl"),
            python: try? LabShell.tool("python3"),
            tc: LabShell.tool("tc"),
            mount: LabShell.tool("mount"),
            unshare: LabShell.tool("unshare"),
            setpriv: LabShell.tool("setpriv"),
            sh: LabShell.tool("sh")
        )
    }
}

extension NATLab {
    /// Interface names inside the namespaces (each namespace has its own, so they never collide across labs).
    public enum Interface {
        /// The bridge in `P-inet`.
        public static let bridge = "br0"
        /// A NAT's internet side.
        public static let wan = "wan0"
        /// A NAT's LAN side.
        public static let lan = "lan0"
        /// The one interface of the broker and of each function.
        public static let host = "eth0"
    }

    /// Every command `up` runs, in order, for `config`. Each is an argv with an absolute program path.
    ///
    /// Links are created straight inside the namespaces (`ip -n NS link add … peer … netns OTHER`),
    /// so nothing is ever made in the caller's namespace and nothing can clash with another lab.
    func plan(for config: LabConfig, tools: LabTools) -> [[String]] {
        let ip = tools.ip
        let inet = namespace(of: .internet)
        let broker = namespace(of: .broker)
        var plan: [[String]] = []

        for host in config.hosts { plan.append([ip, "netns", "add", namespace(of: host)]) }
        for host in config.hosts { plan.append([ip, "-n", namespace(of: host), "link", "set", "lo", "up"]) }

        // The internet: a bridge, and the broker plugged into it.
        plan += [
            [ip, "-n", inet, "link", "add", Interface.bridge, "type", "bridge"],
            [ip, "-n", inet, "link", "set", Interface.bridge, "up"],
        ]
        plan += plugIntoInternet(inetPort: "broker", namespace: broker, interface: Interface.host, tools: tools)
        plan += [
            [ip, "-n", broker, "addr", "add", "\(Self.brokerAddress)/24", "dev", Interface.host],
            [ip, "-n", broker, "link", "set", Interface.host, "up"],
        ]

        for i in 1...config.functions {
            let nat = namespace(of: .nat(i))
            let function = namespace(of: .function(i))
            plan += plugIntoInternet(inetPort: "nat\(i)", namespace: nat, interface: Interface.wan, tools: tools)
            plan += [
                [ip, "-n", nat, "addr", "add", "\(Self.publicAddress(ofNAT: i))/24", "dev", Interface.wan],
                [ip, "-n", nat, "link", "set", Interface.wan, "up"],
                [
                    ip, "-n", nat, "link", "add", Interface.lan, "type", "veth", "peer", "name", Interface.host,
                    "netns", function,
                ],
                [ip, "-n", nat, "addr", "add", "\(Self.gatewayAddress(ofFunction: i))/24", "dev", Interface.lan],
                [ip, "-n", nat, "link", "set", Interface.lan, "up"],
                [ip, "-n", function, "addr", "add", "\(Self.privateAddress(ofFunction: i))/24", "dev", Interface.host],
                [ip, "-n", function, "link", "set", Interface.host, "up"],
                [ip, "-n", function, "route", "add", "default", "via", Self.gatewayAddress(ofFunction: i)],
                [ip, "netns", "exec", nat, tools.sysctl, "-qw", "net.ipv4.ip_forward=1"],
            ]
            plan += natRules(config.nat).map { [ip, "netns", "exec", nat, tools.iptables] + $0 }
            // After the rules: conntrack's settings exist in a namespace once its rules use conntrack.
            if let timeout = config.natTCPTimeout {
                plan.append([ip, "netns", "exec", nat, tools.sysctl, "-qw", "net.netfilter.nf_conntrack_tcp_timeout_established=\(timeout)"])
            }
            if let limits = config.functionLimits {
                plan += functionPlan(i, limits, tools: tools)
            }
        }

        return plan
    }

    /// A veth pair from the bridge (port `inetPort` in `P-inet`) to `interface` in `namespace`.
    private func plugIntoInternet(
        inetPort: String,
        namespace other: String,
        interface: String,
        tools: LabTools
    )
        -> [[String]]
    {
        let inet = namespace(of: .internet)
        return [
            [tools.ip, "-n", inet, "link", "add", inetPort, "type", "veth", "peer", "name", interface, "netns", other],
            [tools.ip, "-n", inet, "link", "set", inetPort, "master", Interface.bridge],
            [tools.ip, "-n", inet, "link", "set", inetPort, "up"],
        ]
    }

    /// The iptables arguments of one NAT.
    ///
    /// Both kinds drop unsolicited inbound, forwarded or to the NAT itself. The INPUT rule matters for punching:
    /// without it the NAT answers a peer's early probe itself, and the conntrack entry that leaves makes
    /// MASQUERADE pick a random port for the inside host's own punch.
    func natRules(_ kind: NATKind) -> [[String]] {
        let wan = Interface.wan
        let masquerade = ["-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"]
        return [
            kind == .hard ? masquerade + ["--random-fully"] : masquerade,
            ["-A", "FORWARD", "-i", wan, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-A", "FORWARD", "-i", wan, "-j", "DROP"],
            ["-A", "INPUT", "-i", wan, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
        ]
    }

    /// Where the delayer of `config` works: for each namespace, the iptables rules that send its packets to
    /// netfilter queue 0 (in the raw table, so before conntrack and NAT see them). Empty without delay and loss.
    ///
    /// Everything arriving from the internet, at a NAT's `wan0` or the broker's `eth0`, is held `delayMs` and
    /// dropped with `lossPercent`: a function's round trip to the broker or to another function grows by
    /// 2 × `delayMs`. Traffic between a function and its own NAT is not delayed. The delay sits at the receiving
    /// end, as a wire's would: the sender's NAT maps a packet the moment it leaves, so two punches' SYNs that
    /// cross in flight both find the other NAT open. (Held at the sending NAT, before its conntrack, a SYN opened
    /// its own NAT only `delayMs` after it was sent, and the peer's SYN, crossing it, was dropped.)
    func delayRules(for config: LabConfig) -> [(host: LabHost, rules: [[String]])] {
        guard config.delayMs > 0 || config.lossPercent > 0 else { return [] }
        let queue = ["-j", "NFQUEUE", "--queue-num", "\(LabDelayer.queue)"]
        func arriving(on interface: String) -> [[String]] {
            [["-t", "raw", "-A", "PREROUTING", "-i", interface] + queue]
        }
        var rules: [(host: LabHost, rules: [[String]])] = [(.broker, arriving(on: Interface.host))]
        for i in 1...config.functions {
            rules.append((.nat(i), arriving(on: Interface.wan)))
        }
        return rules
    }
}
