import Foundation
import Testing

@testable import MeshLab

/// Tests that build real labs: namespaces, veth pairs, iptables, processes. They need root and skip without it.
/// Serialized, so timing-sensitive ones never share the two cores with another lab being built; each test
/// still has its own prefix, so a crash in one cannot confuse another.
@Suite(.serialized, .enabled(if: NATLab.isRoot, "needs root: network namespaces + iptables"))
struct NATLabTests {}

// MARK: - Lifecycle

extension NATLabTests {
    @Suite struct Lifecycle {
        @Test func upThenDownLeavesNothing() throws {
            let lab = NATLab(prefix: "lt1")
            try lab.up(LabConfig(functions: 2))
            let status = try lab.status()
            #expect(status.isUp)
            #expect(status.namespaces == ["lt1-broker", "lt1-fn1", "lt1-fn2", "lt1-inet", "lt1-nat1", "lt1-nat2"])
            #expect(FileManager.default.fileExists(atPath: lab.stateFile))

            let address = try lab.run(.function(1), ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).check()
            #expect(address.standardOutput.contains("10.1.1.2/24"))
            let route = try lab.run(.function(1), ["ip", "route", "show", "default"]).check()
            #expect(route.standardOutput.contains("via 10.1.1.1"))
            let wan = try lab.run(.nat(2), ["ip", "-4", "-o", "addr", "show", "dev", "wan0"]).check()
            #expect(wan.standardOutput.contains("203.0.113.102/24"))

            let failed = try lab.run(.broker, ["sh", "-c", "echo nope >&2; exit 4"])
            #expect(failed.status == 4 && failed.standardError == "nope\n")
            let slow = try lab.run(.broker, ["sleep", "10"], timeout: .milliseconds(300))
            #expect(slow.timedOut)

            // A process left running in the lab dies with it.
            let sleeper = try lab.spawn(.function(2), ["sleep", "60"])
            #expect(sleeper.isRunning)

            let removed = try lab.down()
            #expect(removed.count == 6)
            #expect(try lab.existingNamespaces().isEmpty)
            #expect(!FileManager.default.fileExists(atPath: lab.stateFile))
            #expect(sleeper.waitUntilExit(timeout: .seconds(5)) == 128 + SIGKILL)
            #expect(try !lab.status().isUp)
            #expect(throws: LabError.self) { try lab.run(.function(1), ["true"]) }
        }

        @Test func downAfterCrashRemovesEverything() throws {
            let lab = NATLab(prefix: "lt2")
            try lab.up(LabConfig(functions: 2))
            // Simulate a crash mid-way: the state file is gone, one host is missing, a stray namespace exists.
            try FileManager.default.removeItem(atPath: lab.stateFile)
            try LabShell.check(["/usr/sbin/ip", "netns", "del", "lt2-fn2"])
            try LabShell.check(["/usr/sbin/ip", "netns", "add", "lt2-stray"])
            let status = try lab.status()
            #expect(!status.isUp)
            #expect(status.report.contains("half-built"))
            #expect(status.namespaces.contains("lt2-stray"))

            try lab.down()
            #expect(try lab.existingNamespaces().isEmpty)
            #expect(try lab.down().isEmpty)  // down twice is fine
        }

        @Test func upReplacesAStaleLab() throws {
            let lab = NATLab(prefix: "lt3")
            try lab.up(LabConfig(functions: 3))
            try lab.up(LabConfig(functions: 1, nat: .hard))  // no down in between
            let status = try lab.status()
            #expect(status.isUp)
            #expect(status.namespaces == ["lt3-broker", "lt3-fn1", "lt3-inet", "lt3-nat1"])
            #expect(status.state?.config.nat == .hard)
            let rules = try lab.run(.nat(1), ["/usr/sbin/iptables", "-t", "nat", "-S", "POSTROUTING"]).check()
            #expect(rules.standardOutput.contains("--random-fully"))
            try lab.down()
            #expect(try lab.existingNamespaces().isEmpty)
        }

        @Test func failedUpCleansUpAndNamesTheCommand() throws {
            let lab = NATLab(prefix: "lt4")
            let config = LabConfig(functions: 1)
            let tools = try LabTools.find()
            let plan = lab.plan(for: config, tools: tools)
            let bad = ["/usr/sbin/ip", "-n", "lt4-fn1", "link", "set", "nosuchdev", "up"]
            #expect {
                try lab.build(plan + [bad], config: config, tools: tools)
            } throws: { error in
                guard let error = error as? LabError else { return false }
                return error.code == .commandFailed
                    && error.message.contains("lab 'lt4' up failed, removed the 4 namespaces it had made")
                    && error.message.contains("`/usr/sbin/ip -n lt4-fn1 link set nosuchdev up` exited with status 1")
                    && (error.standardError ?? "").contains("nosuchdev")
            }
            #expect(try lab.existingNamespaces().isEmpty)
            #expect(!FileManager.default.fileExists(atPath: lab.stateFile))
        }
    }
}

// MARK: - Traffic

extension NATLabTests {
    @Suite struct Traffic {
        /// Both NAT kinds show the function as the NAT's public address; easy keeps the bound source port for
        /// every destination, hard picks a new one per destination.
        @Test(arguments: [(NATKind.easy, "lt5"), (.hard, "lt6")])
        func brokerSeesTheNATsPublicAddress(kind: NATKind, prefix: String) throws {
            try withLab(prefix, LabConfig(functions: 1, nat: kind)) { lab in
                let reflector = try lab.startReflector(in: .broker, ports: [3478, 3479])
                defer { reflector.kill() }
                let any = try lab.mapping(ofFunction: 1, localPort: 0, reflectorPort: 3478)
                #expect(any.ip == "203.0.113.101")

                let first = try lab.mapping(ofFunction: 1, localPort: 40001, reflectorPort: 3478)
                let second = try lab.mapping(ofFunction: 1, localPort: 40001, reflectorPort: 3479)
                #expect(first.ip == "203.0.113.101" && second.ip == "203.0.113.101")
                switch kind {
                case .easy:
                    #expect(first.port == 40001 && second.port == 40001)
                case .hard:
                    #expect(first.port != second.port, "symmetric NAT: a new port per destination")
                    #expect(first.port != 40001 || second.port != 40001)
                }
            }
        }

        @Test func unsolicitedInboundIsDropped() throws {
            try withLab("lt7", LabConfig(functions: 1)) { lab in
                // Listeners on the function and on the NAT itself (all addresses, so also its public one).
                let inFunction = try lab.startReflector(in: .function(1), ports: [7000])
                let onNAT = try lab.startReflector(in: .nat(1), ports: [7000])
                let onBroker = try lab.startReflector(in: .broker, ports: [7000])
                defer { [inFunction, onNAT, onBroker].forEach { $0.kill() } }

                // Controls: the listeners work, and outbound passes.
                #expect(try lab.probe(from: .nat(1), to: "10.1.1.2", port: 7000) == "connected")
                #expect(try lab.probe(from: .function(1), to: "10.1.1.1", port: 7000) == "connected")
                #expect(try lab.probe(from: .function(1), to: NATLab.brokerAddress, port: 7000) == "connected")

                // Unsolicited: to the NAT's public address, and straight to the private address through the NAT.
                #expect(try lab.probe(from: .broker, to: "203.0.113.101", port: 7000) == "timeout")
                try lab.run(.broker, ["ip", "route", "add", "10.1.1.0/24", "via", "203.0.113.101"]).check()
                #expect(try lab.probe(from: .broker, to: "10.1.1.2", port: 7000) == "timeout")
            }
        }

        /// The product's core: both functions learn their public ip:port from a reflector on the broker, then
        /// connect() to each other's at the same time from the same port. Works through easy NATs; through hard
        /// NATs the reflected port is useless and it fails.
        @Test(arguments: [(NATKind.easy, "lt8"), (.hard, "lt9")])
        func simultaneousOpen(kind: NATKind, prefix: String) throws {
            try withLab(prefix, LabConfig(functions: 2, nat: kind)) { lab in
                let reflector = try lab.startReflector(in: .broker, ports: [3478])
                defer { reflector.kill() }
                let one = try lab.mapping(ofFunction: 1, localPort: 40001, reflectorPort: 3478)
                let two = try lab.mapping(ofFunction: 2, localPort: 40002, reflectorPort: 3478)

                let seconds = 5
                let punch1 = try lab.spawn(
                    .function(1),
                    LabScripts.command(LabScripts.punch, [40001, two.ip, two.port, seconds, "fn1"])
                )
                let punch2 = try lab.spawn(
                    .function(2),
                    LabScripts.command(LabScripts.punch, [40002, one.ip, one.port, seconds, "fn2"])
                )
                defer { [punch1, punch2].forEach { $0.kill() } }
                let status1 = punch1.waitUntilExit(timeout: .seconds(seconds + 5))
                let status2 = punch2.waitUntilExit(timeout: .seconds(seconds + 5))
                let log =
                    "fn1: \(punch1.standardOutput)\(punch1.standardError)\n"
                    + "fn2: \(punch2.standardOutput)\(punch2.standardError)"
                print("simultaneous open through \(kind) NATs (mapped \(one), \(two)):\n\(log)")

                switch kind {
                case .easy:
                    #expect(one.ip == "203.0.113.101" && one.port == 40001)
                    #expect(two.ip == "203.0.113.102" && two.port == 40002)
                    #expect(status1 == 0 && status2 == 0, "\(log)")
                    #expect(punch1.standardOutput.contains("203.0.113.102:40002 hello from fn2"), "\(log)")
                    #expect(punch2.standardOutput.contains("203.0.113.101:40001 hello from fn1"), "\(log)")
                case .hard:
                    #expect(status1 == 1 && status2 == 1, "\(log)")
                    #expect(punch1.standardOutput.contains("gave up") && punch2.standardOutput.contains("gave up"))
                }
            }
        }

        @Test func delayAddsRoundTripTime() throws {
            let delay = 25
            try withLab("lt10", LabConfig(functions: 1, delayMs: delay)) { lab in
                let broker = try lab.startReflector(in: .broker, ports: [7000])
                let gateway = try lab.startReflector(in: .nat(1), ports: [7000])
                defer { [broker, gateway].forEach { $0.kill() } }

                func rtt(to address: String) throws -> Double {
                    let out = try lab.run(
                        .function(1),
                        LabScripts.command(LabScripts.rtt, [address, 7000, 5]),
                        timeout: .seconds(20)
                    ).check().standardOutput
                    let minimum = out.split(separator: " ").first.flatMap { Double($0) }
                    return try #require(minimum, "rtt script printed '\(out)'")
                }
                let base = try rtt(to: "10.1.1.1")  // LAN side of the NAT: no netem on the way
                let delayed = try rtt(to: NATLab.brokerAddress)  // nat1's wan0 out, broker's eth0 back
                print("delay \(delay) ms: RTT fn1 to its NAT \(base) ms, to the broker \(delayed) ms")
                #expect(base < Double(delay), "baseline RTT \(base) ms")
                #expect(delayed >= Double(2 * delay), "RTT to the broker \(delayed) ms, baseline \(base) ms")
                #expect(delayed < Double(2 * delay) + 500, "RTT to the broker \(delayed) ms")
            }
        }

        /// The delay is on the wire, not in front of the sender's NAT: a packet opens its own NAT as it leaves.
        /// fn2 sends 100 ms after fn1, so fn1's packet reaches NAT 2 while fn2's is still in flight, 200 ms after
        /// fn2's left. Had NAT 2 mapped fn2's packet only once its delay had passed, fn1's would be dropped there.
        @Test func packetsThatCrossInFlightBothPass() throws {
            try withLab("lt11", LabConfig(functions: 2, delayMs: 300)) { lab in
                let start = Date().timeIntervalSince1970 + 1
                let one = try lab.spawn(
                    .function(1),
                    LabScripts.command(LabScripts.crossing, [40001, "203.0.113.102", 40002, start, "fn1"])
                )
                let two = try lab.spawn(
                    .function(2),
                    LabScripts.command(LabScripts.crossing, [40002, "203.0.113.101", 40001, start + 0.1, "fn2"])
                )
                defer { [one, two].forEach { $0.kill() } }
                #expect(one.waitUntilExit(timeout: .seconds(10)) == 0 && two.waitUntilExit(timeout: .seconds(10)) == 0)
                print("crossing packets, 300 ms per link: fn1 \(one.standardOutput)fn2 \(two.standardOutput)")
                #expect(one.standardOutput == "got hello from fn2\n", "\(one.standardError)")
                #expect(two.standardOutput == "got hello from fn1\n", "\(two.standardError)")
            }
        }
    }
}
