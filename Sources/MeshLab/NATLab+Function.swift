import FoundationEssentials

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How a lab with ``LabConfig/functionLimits`` makes each function host `fnI` a Lambda function (cgroup v1):
///
/// - cgroups `/sys/fs/cgroup/cpu/boxer-mesh/PREFIX-fnI` (CFS quota) and `/sys/fs/cgroup/memory/boxer-mesh/PREFIX-fnI`
///   (hard limit, memory + swap too), made by `up` and removed by `down` (left-over ones too, after killing what
///   still runs in them);
/// - a 512 MB tmpfs at `/run/boxer-mesh/lab-PREFIX/fnI-tmp` that is the host's `/tmp`: all processes of one host
///   share it (a node may write its shim there for its app), no other host or the machine sees it. Its pages count
///   against the host's memory limit (Lambda's /tmp is disk);
/// - `tbf` at the function's rate on the function's `eth0` (what it sends) and its NAT's `lan0` (what it receives);
/// - every program run in the host (``NATLab/run(_:_:timeout:)``, ``NATLab/spawn(_:_:environment:)``, `lab exec`)
///   starts as root, opens the cgroups' `cgroup.procs`, enters the network namespace, unshares a mount namespace of
///   its own, binds the tmpfs onto `/tmp`, remounts every other file system read-only (but /proc, /sys, /dev and
///   /dev/pts), sets `TMPDIR=/tmp` and a PATH of the system's directories, joins the cgroups, and execs the
///   program as uid and gid 65534 with no capabilities, an empty bounding set and no_new_privs. Every step execs
///   the next, so the pid `spawn` returns is the program's.
extension NATLab {
    /// The cgroup v1 hierarchies a function host has a cgroup in.
    static let cgroupHierarchies = ["cpu", "memory"]

    /// The folder under which every lab makes its cgroups in `hierarchy` (each names its own by its prefix).
    static func cgroupParent(_ hierarchy: String) -> String { "/sys/fs/cgroup/\(hierarchy)/boxer-mesh" }

    /// Function `i`'s cgroup in `hierarchy` (`cpu` or `memory`): `/sys/fs/cgroup/cpu/boxer-mesh/PREFIX-fnI`.
    public func cgroup(ofFunction i: Int, hierarchy: String) -> String {
        "\(Self.cgroupParent(hierarchy))/\(namespace(of: .function(i)))"
    }

    /// The tmpfs mounted as function `i`'s `/tmp`: `/run/boxer-mesh/lab-PREFIX/fnI-tmp`.
    public func privateTmp(ofFunction i: Int) -> String { "\(runDirectory)/fn\(i)-tmp" }

    /// True when function `i` runs its programs as a Lambda function (the lab made its cgroup).
    func isLimited(function i: Int) -> Bool {
        FileManager.default.fileExists(atPath: cgroup(ofFunction: i, hierarchy: Self.cgroupHierarchies[0]))
    }

    /// The cgroup files `up` writes for function `i`, in order. `ifPresent` ones are skipped on a kernel without
    /// them (memory + swap accounting).
    func cgroupSettings(ofFunction i: Int, _ limits: FunctionLimits) -> [(file: String, value: Int, ifPresent: Bool)] {
        let cpu = cgroup(ofFunction: i, hierarchy: "cpu")
        let memory = cgroup(ofFunction: i, hierarchy: "memory")
        return [
            ("\(cpu)/cpu.cfs_period_us", FunctionLimits.cpuPeriodMicroseconds, false),
            ("\(cpu)/cpu.cfs_quota_us", limits.cpuQuotaMicroseconds, false),
            ("\(memory)/memory.limit_in_bytes", limits.memoryBytes, false),
            // So swap can never stretch the limit; the kernel takes it only after the memory limit.
            ("\(memory)/memory.memsw.limit_in_bytes", limits.memoryBytes, true),
        ]
    }

    /// The commands `up` runs for function `i` of a lab with `limits`: its private /tmp and its shaped link.
    func functionPlan(_ i: Int, _ limits: FunctionLimits, tools: LabTools) -> [[String]] {
        // A bucket of 1 ms at the rate, but at least 64 KiB: a whole GSO packet must fit, or tbf splits it up.
        let burst = max(limits.bandwidthMbit * 1_000_000 / 8 / 1000, 65_536)
        let tbf = ["root", "tbf", "rate", "\(limits.bandwidthMbit)mbit", "burst", "\(burst)", "latency", "20ms"]
        // Kept folders are bound into the private /tmp at their own paths (the host binds it with its submounts).
        let kept = limits.keptFromMachineTmp.map { path in
            [tools.mount, "--mkdir", "--bind", path, privateTmp(ofFunction: i) + path.dropFirst("/tmp".count)]
        }
        return [
            [
                tools.mount, "--mkdir", "-t", "tmpfs", "-o", "size=\(FunctionLimits.tmpMegabytes)m,mode=1777,nosuid,nodev",
                "boxer-mesh-tmp", privateTmp(ofFunction: i),
            ]
        ] + kept + [
            [tools.tc, "-n", namespace(of: .nat(i)), "qdisc", "add", "dev", Interface.lan] + tbf,
            [tools.tc, "-n", namespace(of: .function(i)), "qdisc", "add", "dev", Interface.host] + tbf,
        ]
    }

    /// What runs a program in function `i` as the Lambda function: put the program's argv after it.
    func functionLauncher(_ i: Int, tools: LabTools) -> [String] {
        let user = FunctionLimits.user
        return [tools.sh, "-c", Self.openCgroups, "boxer-mesh-lab"]
            + Self.cgroupHierarchies.map { cgroup(ofFunction: i, hierarchy: $0) + "/cgroup.procs" }
            + [tools.ip, "netns", "exec", namespace(of: .function(i))]
            + [tools.unshare, "--mount", "--propagation", "private"]
            + [tools.sh, "-c", Self.enterFunction, "boxer-mesh-lab", tools.mount, privateTmp(ofFunction: i)]
            + [
                tools.setpriv, "--reuid=\(user)", "--regid=\(user)", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--",
            ]
    }

    /// Opens the `cgroup.procs` files `$1` and `$2` as descriptors 8 and 9, then execs the rest. It runs before
    /// `ip netns exec`, which mounts the namespace's own /sys and so hides /sys/fs/cgroup; ``enterFunction`` joins
    /// the cgroups through them as its last step, so the launcher's own work (a dozen `mount` processes) is not
    /// charged to the function's CPU quota and memory: Lambda does not charge its sandbox's set-up either.
    static let openCgroups = #"exec 8>"$1" 9>"$2" && shift 2 && exec "$@""#

    /// In a fresh mount namespace, with `$1` the mount program and `$2` the host's tmpfs: makes that the private
    /// /tmp, everything else but the kernel's file systems read-only, joins the cgroups ``openCgroups`` opened
    /// (and closes them), then execs the rest.
    static let enterFunction = #"""
        set -e
        mount=$1
        "$mount" --rbind "$2" /tmp
        while read -r _ _ _ _ point _; do
            case $point in
            /proc | /proc/* | /sys | /sys/* | /dev | /dev/pts | /dev/mqueue | /run/netns/* | /tmp) ;;
            *) "$mount" -o remount,bind,ro "$point" ;;
            esac
        done </proc/self/mountinfo
        export TMPDIR=/tmp
        # The system's directories only: the machine's PATH may name directories the function's user cannot enter
        # (/root/.pyenv/shims), where a command would fail with "Permission denied".
        export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        shift 2
        echo $$ >&8
        echo $$ >&9
        exec 8>&- 9>&-
        exec "$@"
        """#

    /// Makes function hosts' cgroups with the limits of `config` (nothing without function limits).
    func makeFunctionCgroups(_ config: LabConfig) throws {
        guard let limits = config.functionLimits else { return }
        for hierarchy in Self.cgroupHierarchies
        where !FileManager.default.fileExists(atPath: "/sys/fs/cgroup/\(hierarchy)/cgroup.procs") {
            throw LabError(
                .functionLimits,
                "--function-memory needs the cgroup v1 \(hierarchy) hierarchy mounted at /sys/fs/cgroup/\(hierarchy)"
            )
        }
        for i in 1...config.functions {
            for hierarchy in Self.cgroupHierarchies {
                let path = cgroup(ofFunction: i, hierarchy: hierarchy)
                do {
                    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                } catch {
                    throw LabError(.functionLimits, "cannot make cgroup \(path): \(error)")
                }
            }
            for setting in cgroupSettings(ofFunction: i, limits)
            where !setting.ifPresent || FileManager.default.fileExists(atPath: setting.file) {
                try Self.writeCgroupFile(setting.file, "\(setting.value)")
            }
        }
    }

    private static func writeCgroupFile(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        let written = fd < 0 ? -1 : value.withCString { write(fd, $0, strlen($0)) }
        let reason = String(cString: strerror(errno))
        if fd >= 0 { close(fd) }
        guard written == value.utf8.count else {
            throw LabError(.functionLimits, "cannot write \(value) to \(path): \(reason)")
        }
    }

    /// Removes this lab's cgroups, killing whatever still runs in them, and unmounts its private /tmp folders.
    /// Returns what it could not remove, each with the reason.
    func removeFunctionLeftovers() -> [String] {
        var failures: [String] = []
        for hierarchy in Self.cgroupHierarchies {
            let parent = Self.cgroupParent(hierarchy)
            let names = (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
            for name in names.sorted() where name.hasPrefix(prefix + "-") {
                if let failure = Self.removeCgroup("\(parent)/\(name)") { failures.append(failure) }
            }
        }
        for point in Self.mountPoints(under: runDirectory + "/") where umount2(point, Int32(MNT_DETACH)) != 0 {
            failures.append("\(point): cannot unmount: \(String(cString: strerror(errno)))")
        }
        return failures
    }

    /// Kills every process in the cgroup at `path` and removes it, retrying for up to 5 s while they exit
    /// (the kernel refuses to remove a cgroup with processes). Returns why it failed, or nil.
    private static func removeCgroup(_ path: String) -> String? {
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            let procs = (try? String(contentsOfFile: "\(path)/cgroup.procs", encoding: .utf8)) ?? ""
            for pid in procs.split(whereSeparator: \.isWhitespace).compactMap({ Int32($0) }) where pid != getpid() {
                posixKill(pid, SIGKILL)
            }
            if rmdir(path) == 0 || errno == ENOENT { return nil }
            let reason = String(cString: strerror(errno))
            if ContinuousClock.now >= deadline { return "\(path): cannot remove cgroup: \(reason)" }
            usleep(20_000)
        }
    }

    /// The mount points in this process's mount namespace under `folder`, deepest first.
    private static func mountPoints(under folder: String) -> [String] {
        let table = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        let points = table.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            return fields.count > 4 && fields[4].hasPrefix(folder) ? String(fields[4]) : nil
        }
        return points.sorted(by: >)
    }
}
