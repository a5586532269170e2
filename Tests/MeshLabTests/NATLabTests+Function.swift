import Foundation
import Testing

@testable import MeshLab

// MARK: - Function hosts that model a Lambda function (lab up --function-memory)

extension NATLabTests {
    @Suite struct Function {
        /// Reads `file` of the host's file system (outside the lab).
        static func read(_ file: String) throws -> String {
            try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }

        @Test func runsAsAnUnprivilegedUserWithAReadOnlyRootAndAPrivateTmp() throws {
            try withLab("flm", LabConfig(functions: 2, functionLimits: FunctionLimits(memoryMB: 128))) { lab in
                let me = try lab.run(.function(1), ["sh", "-c", "id -u; id -g; grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; cat /proc/self/cgroup"]).check().standardOutput
                #expect(me.hasPrefix("65534\n65534\n"), "\(me)")
                for line in ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1"] {
                    #expect(me.contains(line), "\(me)")
                }
                #expect(me.contains("cpu:/boxer-mesh/flm-fn1") && me.contains("memory:/boxer-mesh/flm-fn1"), "\(me)")
                // The program joins the cgroups last: it keeps no cgroup file open, and the launcher's set-up (a
                // dozen mount processes, 20-30 ms of CPU) is not charged to the function's quota (7 ms a period).
                let fds = try lab.run(.function(1), ["ls", "-l", "/proc/self/fd"]).check().standardOutput
                #expect(!fds.contains("cgroup"), "\(fds)")
                try lab.run(.function(2), ["true"]).check()
                let cpu = try Self.read("\(lab.cgroup(ofFunction: 2, hierarchy: "cpu"))/cpu.stat")
                #expect(cpu.contains("nr_throttled 0\n"), "\(cpu)")
                // Other hosts are as they were: root, no cgroup of the lab.
                #expect(try lab.run(.broker, ["id", "-u"]).check().standardOutput == "0\n")
                #expect(try lab.run(.nat(1), ["id", "-u"]).check().standardOutput == "0\n")

                // The root is read-only, for root-owned and world-writable places alike.
                for path in ["/flm-probe", "/var/tmp/flm-probe", "/dev/shm/flm-probe"] {
                    let write = try lab.run(.function(1), ["sh", "-c", "echo x > \(path)"])
                    #expect(write.status != 0 && write.standardError.contains("Read-only file system"), "\(path): \(write)")
                }

                // /tmp is writable, TMPDIR points there, every process of the host shares it, nothing else sees it.
                let name = "flm-\(UUID().uuidString)"
                let written = try lab.run(.function(1), ["sh", "-c", "echo $TMPDIR; echo hello > /tmp/\(name) && df -k /tmp | tail -1"]).check().standardOutput
                #expect(written.hasPrefix("/tmp\n") && written.contains(" 524288 "), "\(written)")
                #expect(try lab.run(.function(1), ["cat", "/tmp/\(name)"]).check().standardOutput == "hello\n")
                #expect(try lab.run(.function(2), ["ls", "/tmp"]).check().standardOutput == "")
                #expect(!FileManager.default.fileExists(atPath: "/tmp/\(name)"))
                #expect(FileManager.default.fileExists(atPath: "\(lab.privateTmp(ofFunction: 1))/\(name)"))
            }
            let lab = NATLab(prefix: "flm")
            for i in 1...2 {
                for hierarchy in ["cpu", "memory"] {
                    #expect(!FileManager.default.fileExists(atPath: lab.cgroup(ofFunction: i, hierarchy: hierarchy)))
                }
            }
            #expect(!(try Self.read("/proc/self/mountinfo")).contains(lab.runDirectory))
            #expect(!FileManager.default.fileExists(atPath: lab.runDirectory))
        }

        @Test func memoryLimitKillsWhatAllocatesMore() throws {
            try withLab("flo", LabConfig(functions: 1, functionLimits: FunctionLimits(memoryMB: 128))) { lab in
                let cgroup = lab.cgroup(ofFunction: 1, hierarchy: "memory")
                #expect(try Self.read("\(cgroup)/memory.limit_in_bytes") == "\(128 << 20)")
                #expect(try Self.read("\(cgroup)/memory.memsw.limit_in_bytes") == "\(128 << 20)")
                // Touches MB megabytes, 8 at a time, printing each step; a bounded loop (at most 256 MB).
                let allocate = """
                    import sys
                    chunks = []
                    for i in range(int(sys.argv[1]) // 8):
                        chunks.append(b"x" * (8 << 20))
                        print(8 * len(chunks), flush=True)
                    """
                let fits = try lab.run(.function(1), LabScripts.command(allocate, [64]), timeout: .seconds(30))
                #expect(fits.status == 0 && fits.standardOutput.hasSuffix("64\n"), "\(fits)")

                let tooMuch = try lab.run(.function(1), LabScripts.command(allocate, [256]), timeout: .seconds(30))
                let reached = tooMuch.standardOutput.split(separator: "\n").last.flatMap { Int($0) } ?? 0
                print("a 128 MB function: allocating 256 MB ended with status \(tooMuch.status) after \(reached) MB")
                #expect(tooMuch.status == 128 + SIGKILL, "\(tooMuch)")
                #expect(reached < 128)
                #expect(try Self.read("\(cgroup)/memory.oom_control").contains("oom_kill 1"))
            }
        }

        @Test func cpuShareIsTheLambdaShare() throws {
            try withLab("flc", LabConfig(functions: 1, functionLimits: FunctionLimits(memoryMB: 128))) { lab in
                #expect(try Self.read("\(lab.cgroup(ofFunction: 1, hierarchy: "cpu"))/cpu.cfs_quota_us") == "7236")
                #expect(try Self.read("\(lab.cgroup(ofFunction: 1, hierarchy: "cpu"))/cpu.cfs_period_us") == "100000")
                // Spins for 1 s of wall time; prints the CPU seconds it got.
                let spin = """
                    import time
                    start, cpu = time.monotonic(), time.process_time()
                    while time.monotonic() - start < 1:
                        pass
                    print(time.process_time() - cpu)
                    """
                func cpuSeconds(in host: LabHost) throws -> Double {
                    let out = try lab.run(host, LabScripts.command(spin, []), timeout: .seconds(30)).check().standardOutput
                    return try #require(Double(out.trimmingCharacters(in: .whitespacesAndNewlines)), "\(out)")
                }
                let function = try cpuSeconds(in: .function(1))
                let unlimited = try cpuSeconds(in: .broker)
                print("1 s of busy loop: \(function) CPU s in a 128 MB function, \(unlimited) on the broker host")
                // At most the quota (0.072 CPU) plus a period's slack; the unlimited host gets far more.
                #expect(function > 0.02 && function < 0.12)
                #expect(unlimited > 3 * function)
            }
        }

        /// iperf3 from the function to the broker host, both ways, against the NAT's own unshaped link.
        @Test(arguments: [(600, "flb"), (200, "flr")])
        func linkIsShapedBothWays(mbit: Int, prefix: String) throws {
            // 1,769 MB: a whole CPU, so the link and not the CPU share sets the rate.
            let limits = FunctionLimits(memoryMB: 1_769, bandwidthMbit: mbit)
            try withLab(prefix, LabConfig(functions: 1, functionLimits: limits)) { lab in
                func iperf(from host: LabHost, reverse: Bool) throws -> Double {
                    let server = try lab.spawn(.broker, ["iperf3", "-s", "-1", "-p", "5201", "--forceflush"])
                    defer { server.kill() }
                    guard server.waitForOutput(containing: "Server listening", timeout: .seconds(10)) else {
                        throw TestFailure("iperf3 server did not start: \(server.standardError)")
                    }
                    let client = try lab.run(
                        host, ["iperf3", "-c", NATLab.brokerAddress, "-p", "5201", "-t", "3", "-J"] + (reverse ? ["-R"] : []),
                        timeout: .seconds(30)
                    ).check()
                    let json = try JSONSerialization.jsonObject(with: Data(client.standardOutput.utf8)) as? [String: Any]
                    let received = (json?["end"] as? [String: Any])?["sum_received"] as? [String: Any]
                    let bits = try #require(received?["bits_per_second"] as? Double, "\(client.standardOutput)")
                    return bits / 1e6
                }
                let up = try iperf(from: .function(1), reverse: false)
                let down = try iperf(from: .function(1), reverse: true)
                let nat = try iperf(from: .nat(1), reverse: false)
                print("a \(mbit) Mbit/s function: \(Int(up)) Mbit/s up, \(Int(down)) down; its NAT \(Int(nat))")
                // Capped, never above the rate; below it only by what a busy machine takes (seen: 0.78 x).
                for rate in [up, down] {
                    #expect(rate > 0.6 * Double(mbit) && rate < 1.05 * Double(mbit), "\(rate) Mbit/s")
                }
                #expect(nat > 1.5 * Double(mbit), "the NAT's own link is not shaped: \(nat) Mbit/s")
            }
        }

        /// A crash left everything: no state file, the function's namespace gone, a process still in its cgroup.
        @Test func downAfterCrashRemovesCgroupsAndTmp() throws {
            let lab = NATLab(prefix: "fld")
            try lab.up(LabConfig(functions: 1, functionLimits: FunctionLimits(memoryMB: 256)))
            let sleeper = try lab.spawn(.function(1), ["sleep", "600"])
            // Past the launcher (which needs the namespace) and into the program.
            let deadline = ContinuousClock.now + .seconds(10)
            while (try? Self.read("/proc/\(sleeper.pid)/comm")) != "sleep" && ContinuousClock.now < deadline {
                usleep(10_000)
            }
            try FileManager.default.removeItem(atPath: lab.stateFile)
            // Without its namespace's name, only the cgroup still knows the sleeper.
            try LabShell.check(["/usr/sbin/ip", "netns", "del", "fld-fn1"])
            #expect(sleeper.isRunning)

            try lab.down()
            #expect(sleeper.waitUntilExit(timeout: .seconds(5)) == 128 + SIGKILL)
            for hierarchy in ["cpu", "memory"] {
                #expect(!FileManager.default.fileExists(atPath: lab.cgroup(ofFunction: 1, hierarchy: hierarchy)))
            }
            #expect(!(try Self.read("/proc/self/mountinfo")).contains(lab.runDirectory))
            #expect(try lab.existingNamespaces().isEmpty)
            #expect(try lab.down().isEmpty)
        }
    }
}
