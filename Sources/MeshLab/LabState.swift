import FoundationEssentials
import Glibc

/// What `up` wrote about a lab: its config and, for each host, namespace and addresses.
/// Stored as JSON in `/run/boxer-mesh/lab-PREFIX.json`.
public struct LabState: Codable, Sendable, Equatable {
    /// One host of the lab as `status` shows it.
    public struct Host: Codable, Sendable, Equatable {
        /// `inet`, `broker`, `natI`, `fnI`.
        public var name: String
        /// Its network namespace.
        public var namespace: String
        /// Its addresses, each as `interface address/len`.
        public var addresses: [String]
        /// What the host is, in a few words.
        public var role: String
    }

    /// The lab's namespace prefix.
    public var prefix: String
    /// What the lab was built with.
    public var config: LabConfig
    /// When `up` finished.
    public var createdAt: Date
    /// Every host, internet first.
    public var hosts: [Host]
    /// The pid of the delayer in each delayed namespace; nil without delay and loss.
    public var delayers: [String: Int32]? = nil

    init(prefix: String, config: LabConfig, createdAt: Date, lab: NATLab) {
        self.prefix = prefix
        self.config = config
        self.createdAt = createdAt
        let I = NATLab.Interface.self
        hosts = config.hosts.map { host in
            let addresses: [String]
            var role: String
            switch host {
            case .internet:
                addresses = ["\(I.bridge) (no address) \(NATLab.internetSubnet)"]
                role = "the internet: a bridge"
            case .broker:
                addresses = ["\(I.host) \(NATLab.brokerAddress)/24"]
                role = "public host for the broker"
            case .nat(let i):
                addresses = [
                    "\(I.wan) \(NATLab.publicAddress(ofNAT: i))/24",
                    "\(I.lan) \(NATLab.gatewayAddress(ofFunction: i))/24",
                ]
                role = "\(config.nat) NAT for fn\(i)"
            case .function(let i):
                addresses = ["\(I.host) \(NATLab.privateAddress(ofFunction: i))/24"]
                role = "function behind nat\(i), default via \(NATLab.gatewayAddress(ofFunction: i))"
                if let limits = config.functionLimits {
                    role += "; as a \(limits.memoryMB) MB Lambda: cgroups \(lab.namespace(of: host))"
                }
            }
            return Host(name: host.name, namespace: lab.namespace(of: host), addresses: addresses, role: role)
        }
    }

    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

/// What exists of one lab right now: its state file (if any) and its namespaces.
public struct LabStatus: Sendable {
    /// The lab's prefix.
    public var prefix: String
    /// The state file's content, nil when there is none.
    public var state: LabState?
    /// The namespaces that exist with this prefix.
    public var namespaces: [String]

    /// Namespaces the state file lists that do not exist.
    public var missingNamespaces: [String] {
        let existing = Set(namespaces)
        return (state?.hosts ?? []).map(\.namespace).filter { !existing.contains($0) }
    }

    /// Namespaces with this prefix that the state file does not list (all of them when there is no state file).
    public var strayNamespaces: [String] {
        let listed = Set((state?.hosts ?? []).map(\.namespace))
        return namespaces.filter { !listed.contains($0) }
    }

    /// True when a state file exists and all its namespaces exist.
    public var isUp: Bool { state != nil && missingNamespaces.isEmpty }

    /// A report for people: the hosts and their addresses, or why there is no (whole) lab.
    public var report: String {
        var lines: [String] = []
        if let state {
            let config = state.config
            var summary = "lab '\(prefix)' \(isUp ? "is up" : "is BROKEN")"
            summary += " since \(state.createdAt.formatted(.iso8601)):"
            summary += " \(config.functions) function\(config.functions == 1 ? "" : "s"), NAT \(config.nat)"
            summary += ", delay \(config.delayMs) ms"
            if config.lossPercent > 0 { summary += ", loss \(config.lossPercent) %" }
            if let limits = config.functionLimits { summary += ", functions of \(limits.summary)" }
            lines.append(summary)
            if let limits = config.functionLimits {
                lines.append(
                    "(each fnI runs as uid \(FunctionLimits.user) without capabilities in cgroups boxer-mesh/\(prefix)-fnI:"
                        + " CPU quota \(limits.cpuQuotaMicroseconds)/\(FunctionLimits.cpuPeriodMicroseconds) us,"
                        + " memory \(limits.memoryMB) MiB; root read-only, private /tmp of"
                        + " \(FunctionLimits.tmpMegabytes) MB; tbf \(limits.bandwidthMbit) Mbit/s on its eth0 and its NAT's lan0)"
                )
            }
            if config.delayMs > 0 || config.lossPercent > 0 {
                lines.append(
                    "(held by a netfilter-queue delayer on all that leaves each NAT's wan0 and the broker's eth0)"
                )
                for (namespace, pid) in (state.delayers ?? [:]).sorted(by: { $0.key < $1.key })
                where !FileManager.default.fileExists(atPath: "/proc/\(pid)") {
                    lines.append("delayer \(pid) in \(namespace) is NOT RUNNING: that link drops everything")
                }
            }
            let nameWidth = max(6, state.hosts.map(\.name.count).max() ?? 0)
            let nsWidth = max(9, state.hosts.map(\.namespace.count).max() ?? 0)
            lines.append(Self.pad("HOST", nameWidth) + "  " + Self.pad("NAMESPACE", nsWidth) + "  ADDRESSES / ROLE")
            for host in state.hosts {
                var here = namespaces.contains(host.namespace) ? "" : "  [namespace MISSING]"
                if config.functionLimits != nil, case .function(let i) = LabHost(name: host.name),
                    !NATLab(prefix: prefix).isLimited(function: i)
                {
                    here += "  [cgroup MISSING: runs unlimited]"
                }
                lines.append(
                    Self.pad(host.name, nameWidth) + "  " + Self.pad(host.namespace, nsWidth) + "  "
                        + host.addresses.joined(separator: ", ") + " — " + host.role + here
                )
            }
            if !strayNamespaces.isEmpty {
                lines.append("namespaces not in the state file: \(strayNamespaces.joined(separator: " "))")
            }
        } else if namespaces.isEmpty {
            lines.append("no lab '\(prefix)' is up (no state file \(NATLab(prefix: prefix).stateFile), no namespaces)")
        } else {
            lines.append("no lab '\(prefix)' is up, but namespaces with its prefix exist (half-built or crashed):")
            lines.append("  " + namespaces.joined(separator: " "))
        }
        if state != nil ? !isUp || !strayNamespaces.isEmpty : !namespaces.isEmpty {
            lines.append("remove it with: boxer-mesh lab down --prefix \(prefix)")
        }
        return lines.joined(separator: "\n")
    }

    private static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }
}

extension NATLab {
    /// What exists of this lab now. Needs no root: it reads the state file and `/run/netns`.
    public func status() throws -> LabStatus {
        LabStatus(prefix: prefix, state: try readState(), namespaces: try existingNamespaces())
    }

    /// The state file's content, or nil when there is none.
    public func readState() throws -> LabState? {
        guard let data = FileManager.default.contents(atPath: stateFile) else { return nil }
        do {
            return try LabState.decoder().decode(LabState.self, from: data)
        } catch {
            throw LabError(.stateFile, "cannot read \(stateFile): \(error) (remove it with `boxer-mesh lab down`)")
        }
    }

    /// The prefixes of every lab with a state file.
    public static func labsWithState() -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: stateDirectory)) ?? []
        return files.filter { $0.hasPrefix("lab-") && $0.hasSuffix(".json") }
            .map { String($0.dropFirst(4).dropLast(5)) }.sorted()
    }

    func writeState(_ state: LabState) throws {
        do {
            try FileManager.default.createDirectory(atPath: Self.stateDirectory, withIntermediateDirectories: true)
            let data = try LabState.encoder().encode(state)
            try data.write(to: URL(fileURLWithPath: stateFile), options: .atomic)
        } catch {
            throw LabError(.stateFile, "cannot write \(stateFile): \(error)")
        }
    }
}
