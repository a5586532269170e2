/// How the NAT in front of each function maps its connections.
public enum NATKind: String, Codable, Sendable, CaseIterable {
    /// Port-preserving, endpoint-independent mapping that drops unsolicited inbound (like AWS Lambda):
    /// `MASQUERADE` plus a stateful filter. TCP simultaneous open punches through it.
    case easy
    /// Symmetric: a new random public port for every destination (`MASQUERADE --random-fully`), same filter.
    /// What a reflector reports is useless to a peer, so punching fails and the relay must carry the traffic.
    case hard
}

/// What `NATLab.up` builds: how many functions, which NAT, how slow or lossy the internet is, and whether each
/// function host models a Lambda function of some size.
public struct LabConfig: Codable, Sendable, Equatable {
    /// The most functions one lab holds: NAT i's public address is 203.0.113.(100 + i).
    public static let maxFunctions = 150

    /// Number of function hosts, each behind its own NAT (1...150).
    public var functions: Int
    /// The kind of NAT in front of every function.
    public var nat: NATKind
    /// One-way delay in milliseconds added to everything that arrives over each NAT's WAN link and the broker's
    /// link (by a netfilter-queue delayer; see `LabDelayer` and ``NATLab/delayRules(for:)``), so a function's round
    /// trip to the broker or to another function grows by 2 × `delayMs`.
    public var delayMs: Int
    /// Packet loss in percent added on the same links as the delay (0 for none).
    public var lossPercent: Double
    /// How long each NAT keeps an idle established TCP connection's mapping, in seconds (its namespace's
    /// `net.netfilter.nf_conntrack_tcp_timeout_established`); nil keeps the kernel's 5 days. Real NATs forget
    /// sooner (cloud NAT gateways after about 350 s): a short one shows whether idle links survive.
    public var natTCPTimeout: Int?
    /// The Lambda function every function host models (unprivileged user, cgroup, read-only root, private /tmp,
    /// shaped link); nil leaves function hosts as plain root shells in their namespaces.
    public var functionLimits: FunctionLimits?

    public init(
        functions: Int, nat: NATKind = .easy, delayMs: Int = 0, lossPercent: Double = 0, natTCPTimeout: Int? = nil,
        functionLimits: FunctionLimits? = nil
    ) {
        self.functions = functions
        self.nat = nat
        self.delayMs = delayMs
        self.lossPercent = lossPercent
        self.natTCPTimeout = natTCPTimeout
        self.functionLimits = functionLimits
    }

    /// Throws ``LabError/Code/invalidConfig`` when a value is out of range.
    public func validate() throws {
        guard (1...Self.maxFunctions).contains(functions) else {
            throw LabError(.invalidConfig, "functions must be 1...\(Self.maxFunctions), got \(functions)")
        }
        guard (0...60_000).contains(delayMs) else {
            throw LabError(.invalidConfig, "delay must be 0...60000 ms, got \(delayMs)")
        }
        guard lossPercent >= 0, lossPercent <= 100 else {
            throw LabError(.invalidConfig, "loss must be 0...100 %, got \(lossPercent)")
        }
        if let natTCPTimeout, !(1...432_000).contains(natTCPTimeout) {
            throw LabError(.invalidConfig, "the NAT TCP timeout must be 1...432000 s, got \(natTCPTimeout)")
        }
        try functionLimits?.validate()
    }

    /// Every host of a lab with this config, in the order `status` lists them.
    public var hosts: [LabHost] {
        [.internet, .broker] + (1...max(functions, 1)).flatMap { [LabHost.nat($0), .function($0)] }
    }
}

/// One host of the lab; each lives in its own network namespace named `PREFIX-NAME`.
public enum LabHost: Hashable, Sendable, CustomStringConvertible {
    /// The broker's public host, 203.0.113.10.
    case broker
    /// Function `i` (from 1), 10.1.i.2 on its private LAN, behind NAT `i`.
    case function(Int)
    /// The NAT in front of function `i`: 203.0.113.(100 + i) on the internet, 10.1.i.1 on the LAN.
    case nat(Int)
    /// "The internet": the namespace that holds the bridge every public host is plugged into.
    case internet

    /// The host's short name: `broker`, `fn1`, `nat1`, `inet`; also the namespace suffix.
    public var name: String {
        switch self {
        case .broker: "broker"
        case .function(let i): "fn\(i)"
        case .nat(let i): "nat\(i)"
        case .internet: "inet"
        }
    }

    public var description: String { name }

    /// Parses `broker`, `inet` (or `internet`), `fnN` and `natN`; nil for anything else.
    public init?(name: String) {
        switch name {
        case "broker": self = .broker
        case "inet", "internet": self = .internet
        default:
            for (tag, make) in [("fn", LabHost.function), ("nat", LabHost.nat)] where name.hasPrefix(tag) {
                let digits = name.dropFirst(tag.count)
                if let i = Int(digits), i >= 1, String(i) == digits {
                    self = make(i)
                    return
                }
            }
            return nil
        }
    }

    /// The address other hosts reach it at: the broker's or a NAT's public address, a function's private one;
    /// nil for the internet bridge, which has none.
    public var address: String? {
        switch self {
        case .broker: NATLab.brokerAddress
        case .function(let i): NATLab.privateAddress(ofFunction: i)
        case .nat(let i): NATLab.publicAddress(ofNAT: i)
        case .internet: nil
        }
    }
}

extension NATLab {
    /// The broker host's public address.
    public static let brokerAddress = "203.0.113.10"
    /// The "internet" every public host shares.
    public static let internetSubnet = "203.0.113.0/24"

    /// NAT `i`'s public (WAN) address: 203.0.113.(100 + i).
    public static func publicAddress(ofNAT i: Int) -> String { "203.0.113.\(100 + i)" }
    /// Function `i`'s private address: 10.1.i.2.
    public static func privateAddress(ofFunction i: Int) -> String { "10.1.\(i).2" }
    /// NAT `i`'s LAN-side address, function `i`'s default gateway: 10.1.i.1.
    public static func gatewayAddress(ofFunction i: Int) -> String { "10.1.\(i).1" }

    /// ``NATLab/brokerAddress``, for code that holds a lab.
    public var brokerAddress: String { Self.brokerAddress }
    /// ``NATLab/publicAddress(ofNAT:)``, for code that holds a lab.
    public func publicAddress(ofNAT i: Int) -> String { Self.publicAddress(ofNAT: i) }
    /// ``NATLab/privateAddress(ofFunction:)``, for code that holds a lab.
    public func privateAddress(ofFunction i: Int) -> String { Self.privateAddress(ofFunction: i) }
    /// ``NATLab/gatewayAddress(ofFunction:)``, for code that holds a lab.
    public func gatewayAddress(ofFunction i: Int) -> String { Self.gatewayAddress(ofFunction: i) }
}
