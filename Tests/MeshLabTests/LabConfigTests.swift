import Foundation
import Testing

@testable import MeshLab

/// Tests of the lab's plain logic: names, addresses, the build plan, commands. They need no root.
@Suite struct LabConfigTests {
    @Test(arguments: ["bm", "lt1", "a", "abc123"])
    func goodPrefixes(_ prefix: String) throws {
        try NATLab.validate(prefix: prefix)
    }

    @Test(arguments: ["", "toolong", "BM", "b-m", "b m", "bé"])
    func badPrefixes(_ prefix: String) {
        #expect(throws: LabError.self) { try NATLab.validate(prefix: prefix) }
    }

    @Test func hostNamesRoundTrip() {
        let hosts: [LabHost] = [.broker, .internet, .function(1), .function(150), .nat(3)]
        for host in hosts {
            #expect(LabHost(name: host.name) == host)
        }
        #expect(LabHost(name: "internet") == .internet)
        for bad in ["fn0", "fn", "fn01", "natx", "nat-1", "foo", "FN1", ""] {
            #expect(LabHost(name: bad) == nil, "\(bad) should not parse")
        }
    }

    @Test func namespacesAndAddresses() {
        let lab = NATLab(prefix: "lt1")
        #expect(lab.namespace(of: .function(2)) == "lt1-fn2")
        #expect(lab.namespace(of: .nat(2)) == "lt1-nat2")
        #expect(lab.namespace(of: .broker) == "lt1-broker")
        #expect(lab.namespace(of: .internet) == "lt1-inet")
        #expect(lab.stateFile == "/run/boxer-mesh/lab-lt1.json")
        #expect(NATLab.brokerAddress == "203.0.113.10")
        #expect(NATLab.publicAddress(ofNAT: 1) == "203.0.113.101")
        #expect(NATLab.publicAddress(ofNAT: 150) == "203.0.113.250")
        #expect(NATLab.privateAddress(ofFunction: 7) == "10.1.7.2")
        #expect(NATLab.gatewayAddress(ofFunction: 7) == "10.1.7.1")
        #expect(LabHost.nat(2).address == "203.0.113.102")
        #expect(LabHost.internet.address == nil)
    }

    @Test func configRanges() throws {
        try LabConfig(functions: 1).validate()
        try LabConfig(functions: 150, nat: .hard, delayMs: 20, lossPercent: 1).validate()
        for bad in [
            LabConfig(functions: 0), LabConfig(functions: 151), LabConfig(functions: 1, delayMs: -1),
            LabConfig(functions: 1, lossPercent: 101), LabConfig(functions: 1, natTCPTimeout: 0),
        ] {
            #expect(throws: LabError.self) { try bad.validate() }
        }
    }

    static let tools = LabTools(
        ip: "/ip", iptables: "/iptables", sysctl: "/sysctl", python: "/python3", tc: "/tc", mount: "/mount",
        unshare: "/unshare", setpriv: "/setpriv", sh: "/sh"
    )

    @Test func planNATRules() {
        let lab = NATLab(prefix: "lt1")
        for kind in NATKind.allCases {
            let plan = lab.plan(for: LabConfig(functions: 2, nat: kind), tools: Self.tools)
            let rules = plan.filter { $0.contains("/iptables") }
            #expect(rules.count == 8)
            for i in 1...2 {
                let mine = rules.filter { $0.contains("lt1-nat\(i)") }.map { $0.joined(separator: " ") }
                #expect(
                    mine.contains {
                        $0.hasSuffix(
                            "-t nat -A POSTROUTING -o wan0 -j MASQUERADE" + (kind == .hard ? " --random-fully" : "")
                        )
                    }
                )
                #expect(mine.contains { $0.hasSuffix("-A INPUT -i wan0 -m conntrack --ctstate NEW -j DROP") })
                #expect(mine.contains { $0.hasSuffix("-A FORWARD -i wan0 -j DROP") })
            }
            #expect(
                plan.contains {
                    $0.joined(separator: " ") == "/ip netns exec lt1-nat2 /sysctl -qw net.ipv4.ip_forward=1"
                }
            )
        }
    }

    @Test func planNATTCPTimeout() {
        let lab = NATLab(prefix: "lt1")
        let setting = "net.netfilter.nf_conntrack_tcp_timeout_established"
        #expect(!lab.plan(for: LabConfig(functions: 2), tools: Self.tools).contains { $0.last?.hasPrefix(setting) == true })
        let plan = lab.plan(for: LabConfig(functions: 2, natTCPTimeout: 20), tools: Self.tools).map { $0.joined(separator: " ") }
        for i in 1...2 {
            // In each NAT's namespace (conntrack's settings are per namespace), after its rules loaded conntrack.
            let index = plan.firstIndex(of: "/ip netns exec lt1-nat\(i) /sysctl -qw \(setting)=20")
            let lastRule = plan.lastIndex { $0.hasPrefix("/ip netns exec lt1-nat\(i) /iptables") }
            #expect(index != nil && lastRule != nil && index! > lastRule!, "\(plan)")
        }
    }

    @Test func planMakesNothingOutsideItsNamespaces() {
        let lab = NATLab(prefix: "lt1")
        let plan = lab.plan(for: LabConfig(functions: 3, delayMs: 5), tools: Self.tools)
        for command in plan where command[0] == "/ip" {
            // Every ip/tc command names a namespace of this lab, either to add it or to act inside it.
            let namespaced = command[1] == "-n" || (command[1] == "netns" && ["add", "exec"].contains(command[2]))
            #expect(namespaced, "\(command)")
            let namespace = command[1] == "-n" ? command[2] : command[3]
            #expect(namespace.hasPrefix("lt1-"), "\(command)")
        }
        // Namespaces are added before anything uses them.
        let firstUse = plan.firstIndex { $0[1] == "-n" }!
        #expect(plan[..<firstUse].count == 2 + 2 * 3)
    }

    @Test func delayRules() {
        let lab = NATLab(prefix: "lt1")
        #expect(lab.delayRules(for: LabConfig(functions: 2)).isEmpty)
        let rules = lab.delayRules(for: LabConfig(functions: 2, delayMs: 20))
        #expect(rules.map(\.host) == [.broker, .nat(1), .nat(2)])
        #expect(
            rules.map { $0.rules.map { $0.joined(separator: " ") } } == [
                ["-t raw -A PREROUTING -i eth0 -j NFQUEUE --queue-num 0"],
                ["-t raw -A PREROUTING -i wan0 -j NFQUEUE --queue-num 0"],
                ["-t raw -A PREROUTING -i wan0 -j NFQUEUE --queue-num 0"],
            ]
        )
        #expect(lab.delayRules(for: LabConfig(functions: 1, lossPercent: 1)).count == 2)
        // Nothing of the delay goes into the network plan itself.
        #expect(
            !lab.plan(for: LabConfig(functions: 2, delayMs: 20), tools: Self.tools).contains { $0.contains("NFQUEUE") }
        )
    }

    // MARK: Function limits

    @Test func functionCPUShareFollowsLambda() {
        // Lambda: one vCPU per 1,769 MB; quota per 100 ms period.
        let expected = [(128, 7_236), (512, 28_943), (1_769, 100_000), (3_538, 200_000), (10_240, 578_858)]
        for (memory, quota) in expected {
            let limits = FunctionLimits(memoryMB: memory)
            #expect(limits.cpuQuotaMicroseconds == quota, "\(memory) MB")
            #expect(limits.memoryBytes == memory << 20)
            #expect(limits.bandwidthMbit == 600)
        }
        #expect(abs(FunctionLimits(memoryMB: 128).cpus - 0.072) < 0.001)
        #expect(abs(FunctionLimits(memoryMB: 512).cpus - 0.289) < 0.001)
        #expect(FunctionLimits(memoryMB: 128, bandwidthMbit: 100).summary == "128 MB, 0.072 CPU, 100 Mbit/s")
    }

    @Test func functionLimitsValidation() throws {
        try LabConfig(functions: 2, functionLimits: FunctionLimits(memoryMB: 128)).validate()
        try LabConfig(functions: 2, functionLimits: FunctionLimits(memoryMB: 10_240, bandwidthMbit: 1)).validate()
        let bad: [(FunctionLimits, String)] = [
            (FunctionLimits(memoryMB: 127), "function memory must be 128...10240 MB (AWS Lambda's sizes), got 127"),
            (FunctionLimits(memoryMB: 10_241), "function memory must be 128...10240 MB (AWS Lambda's sizes), got 10241"),
            (FunctionLimits(memoryMB: 512, bandwidthMbit: 0), "function bandwidth must be 1...100000 Mbit/s, got 0"),
        ]
        for (limits, message) in bad {
            #expect {
                try LabConfig(functions: 1, functionLimits: limits).validate()
            } throws: { error in
                (error as? LabError)?.code == .invalidConfig && (error as? LabError)?.message == message
            }
        }
    }

    @Test func functionPlanShapesBothWaysAndMountsATmp() {
        let lab = NATLab(prefix: "lt1")
        let plain = lab.plan(for: LabConfig(functions: 2), tools: Self.tools)
        #expect(!plain.contains { ["/tc", "/mount"].contains($0[0]) }, "a lab without limits stays as it was")

        let config = LabConfig(functions: 2, functionLimits: FunctionLimits(memoryMB: 128, bandwidthMbit: 600))
        let plan = lab.plan(for: config, tools: Self.tools).map { $0.joined(separator: " ") }
        for i in 1...2 {
            let tbf = "root tbf rate 600mbit burst 75000 latency 20ms"
            #expect(plan.contains("/tc -n lt1-nat\(i) qdisc add dev lan0 \(tbf)"), "\(plan)")
            #expect(plan.contains("/tc -n lt1-fn\(i) qdisc add dev eth0 \(tbf)"), "\(plan)")
            #expect(
                plan.contains(
                    "/mount --mkdir -t tmpfs -o size=512m,mode=1777,nosuid,nodev boxer-mesh-tmp /run/boxer-mesh/lab-lt1/fn\(i)-tmp"
                )
            )
        }
        // A slow link still gets a bucket that holds a whole GSO packet.
        let slow = lab.functionPlan(1, FunctionLimits(memoryMB: 128, bandwidthMbit: 10), tools: Self.tools)
        #expect(slow[1].joined(separator: " ").contains("rate 10mbit burst 65536 "))
    }

    @Test func functionCgroupsAndLauncher() {
        let lab = NATLab(prefix: "lt1")
        #expect(lab.cgroup(ofFunction: 2, hierarchy: "cpu") == "/sys/fs/cgroup/cpu/boxer-mesh/lt1-fn2")
        let settings = lab.cgroupSettings(ofFunction: 2, FunctionLimits(memoryMB: 512))
        #expect(settings.map { "\($0.file)=\($0.value)" } == [
            "/sys/fs/cgroup/cpu/boxer-mesh/lt1-fn2/cpu.cfs_period_us=100000",
            "/sys/fs/cgroup/cpu/boxer-mesh/lt1-fn2/cpu.cfs_quota_us=28943",
            "/sys/fs/cgroup/memory/boxer-mesh/lt1-fn2/memory.limit_in_bytes=536870912",
            "/sys/fs/cgroup/memory/boxer-mesh/lt1-fn2/memory.memsw.limit_in_bytes=536870912",
        ])
        #expect(settings.map(\.ifPresent) == [false, false, false, true])

        let launcher = lab.functionLauncher(2, tools: Self.tools)
        #expect(launcher.prefix(2) == ["/sh", "-c"])
        let after = Array(launcher.dropFirst(3))
        #expect(
            after == [
                "boxer-mesh-lab",
                "/sys/fs/cgroup/cpu/boxer-mesh/lt1-fn2/cgroup.procs", "/sys/fs/cgroup/memory/boxer-mesh/lt1-fn2/cgroup.procs",
                "/ip", "netns", "exec", "lt1-fn2", "/unshare", "--mount", "--propagation", "private",
                "/sh", "-c", NATLab.enterFunction, "boxer-mesh-lab", "/mount", "/run/boxer-mesh/lab-lt1/fn2-tmp",
                "/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                "--no-new-privs", "--",
            ]
        )
    }

    @Test func stateWithFunctionLimits() throws {
        let lab = NATLab(prefix: "lt1")
        let state = LabState(
            prefix: "lt1",
            config: LabConfig(functions: 1, functionLimits: FunctionLimits(memoryMB: 128)),
            createdAt: Date(timeIntervalSince1970: 1_700_000_000),
            lab: lab
        )
        #expect(try LabState.decoder().decode(LabState.self, from: LabState.encoder().encode(state)) == state)
        let report = LabStatus(prefix: "lt1", state: state, namespaces: state.hosts.map(\.namespace)).report
        #expect(report.contains("functions of 128 MB, 0.072 CPU, 600 Mbit/s"), "\(report)")
        #expect(report.contains("CPU quota 7236/100000 us, memory 128 MiB"), "\(report)")
        #expect(report.contains("as a 128 MB Lambda: cgroups lt1-fn1"), "\(report)")
        // No lab lt1 made that cgroup here: the report says so.
        #expect(report.contains("[cgroup MISSING: runs unlimited]"), "\(report)")

        // A state file written before function limits existed still reads.
        let old = #"{"functions":2,"nat":"easy","delayMs":0,"lossPercent":0}"#
        #expect(try JSONDecoder().decode(LabConfig.self, from: Data(old.utf8)) == LabConfig(functions: 2))
    }

    @Test func stateRoundTripAndReport() throws {
        let lab = NATLab(prefix: "lt1")
        let state = LabState(
            prefix: "lt1",
            config: LabConfig(functions: 2, nat: .hard, delayMs: 10),
            createdAt: Date(timeIntervalSince1970: 1_700_000_000),
            lab: lab
        )
        let data = try LabState.encoder().encode(state)
        #expect(try LabState.decoder().decode(LabState.self, from: data) == state)
        #expect(state.hosts.map(\.name) == ["inet", "broker", "nat1", "fn1", "nat2", "fn2"])

        let up = LabStatus(prefix: "lt1", state: state, namespaces: state.hosts.map(\.namespace))
        #expect(up.isUp)
        #expect(up.report.contains("lab 'lt1' is up"))
        #expect(up.report.contains("NAT hard, delay 10 ms"))
        #expect(up.report.contains("wan0 203.0.113.102/24"))

        let broken = LabStatus(prefix: "lt1", state: state, namespaces: ["lt1-inet", "lt1-extra"])
        #expect(!broken.isUp)
        #expect(broken.missingNamespaces.contains("lt1-fn2"))
        #expect(broken.strayNamespaces == ["lt1-extra"])
        #expect(broken.report.contains("boxer-mesh lab down --prefix lt1"))

        let none = LabStatus(prefix: "lt1", state: nil, namespaces: [])
        #expect(none.report.hasPrefix("no lab 'lt1' is up"))
        let halfBuilt = LabStatus(prefix: "lt1", state: nil, namespaces: ["lt1-inet"])
        #expect(halfBuilt.report.contains("half-built"))
    }

    @Test(.enabled(if: !NATLab.isRoot, "runs only without root"))
    func withoutRootTheLabSaysSo() {
        #expect {
            try NATLab(prefix: "lt1").up(LabConfig(functions: 1))
        } throws: { error in
            (error as? LabError)?.message == "the lab needs root (network namespaces, iptables)"
        }
    }
}

/// The command helper: it must say which command failed, how, and what it printed.
@Suite struct LabShellTests {
    @Test func failureNamesCommandStatusAndStderr() throws {
        let result = try LabShell.run(["/bin/sh", "-c", "echo out; echo 'it broke' >&2; exit 3"])
        #expect(result.status == 3)
        #expect(result.standardOutput == "out\n")
        #expect(result.standardError == "it broke\n")
        #expect(!result.succeeded)
        #expect {
            try result.check()
        } throws: { error in
            guard let error = error as? LabError else { return false }
            let command = #"/bin/sh -c 'echo out; echo '\''it broke'\'' >&2; exit 3'"#
            return error.code == .commandFailed && error.status == 3
                && error.message == "command `\(command)` exited with status 3: it broke"
        }
    }

    @Test func timeoutKills() throws {
        let start = ContinuousClock.now
        let result = try LabShell.run(["/bin/sleep", "10"], timeout: .milliseconds(200))
        #expect(result.timedOut)
        #expect(result.status == 128 + SIGKILL)
        #expect(ContinuousClock.now - start < .seconds(5))
    }

    @Test func missingProgram() {
        #expect(throws: LabError.self) { try LabShell.run(["/nonexistent/program"]) }
    }

    @Test func input() throws {
        let result = try LabShell.run(["/bin/cat"], input: "hello\n").check()
        #expect(result.standardOutput == "hello\n")
    }
}
