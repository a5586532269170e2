"""The lab side of bench/run: building boxer-mesh, the NAT lab, the broker, nodes, plain programs in namespaces,
the agent that runs commands inside a node, /proc readings, and cleanup that also runs on failure and Ctrl-C.

Everything runs in the lab's namespaces (PREFIX-*) or on loopback; nothing is sent anywhere else.
"""
import json
import os
import shutil
import signal
import subprocess
import time

BROKER = "203.0.113.10"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def nat_public(i):
    return f"203.0.113.{100 + i}"


def fn_private(i):
    return f"10.1.{i}.2"


class BenchError(Exception):
    pass


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- /proc readings ------------------------------------------------------------------------------------------


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)
    except (OSError, IndexError, ValueError):
        return None


def family_cpu_seconds(pid, settle=2.0):
    """utime + stime of a process and of its children it has reaped (cutime + cstime), in seconds, once no child
    is left (up to `settle` s): a forking server's (socat's) CPU for the connections it served. None if it is gone."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                if not f.read().strip():
                    break
        except OSError:
            return None
        time.sleep(0.02)
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / CLK_TCK  # fields 14-17 of stat(5)
    except (OSError, IndexError, ValueError):
        return None


def memory_kib(pid):
    """VmRSS, VmHWM (from status) and Pss, Pss_Anon (from smaps_rollup) in KiB; {} if the process is gone."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Pss_Anon"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


# ---- building ------------------------------------------------------------------------------------------------


def build(root, scratch, skip_build, log_path, binary=None):
    """Release-builds boxer-mesh into its own scratch path (other people's builds use .build), then the preload
    shim beside it and bench/rtt.c; with `binary` (what ships: the preload shim appended to it) only bench/rtt.c.
    Returns (bin_dir, shim_path or None, shim_note, rtt_path, seconds)."""
    started = time.monotonic()
    with open(log_path, "w") as out:
        deps = f"{root}/scripts/install-deps.sh"  # iperf3, socat, python3-zmq/nacl/protobuf, …: quiet if present
        if os.path.exists(deps) and subprocess.call(["bash", deps], stdout=out, stderr=subprocess.STDOUT) != 0:
            raise BenchError(f"scripts/install-deps.sh failed; see {log_path}")
        if binary:
            if not os.access(binary, os.X_OK):
                raise BenchError(f"--binary {binary}: not an executable file")
            bin_dir, shim, note = os.path.dirname(os.path.abspath(binary)), os.path.abspath(binary), ""
        else:
            if not skip_build:
                log(f"building boxer-mesh (release, --scratch-path {scratch}); log {log_path}")
                rc = subprocess.call(
                    ["swift", "build", "-c", "release", "--scratch-path", scratch, "--product", "boxer-mesh"],
                    cwd=root, stdout=out, stderr=subprocess.STDOUT)
                if rc != 0:
                    out.flush()
                    errors = [line.strip() for line in _read(log_path).splitlines() if ": error:" in line]
                    raise BenchError(f"swift build failed (status {rc}): {errors[0] if errors else 'see ' + log_path}; "
                                     "fix the tree, or measure the last good build with --no-build")
            bin_dir = subprocess.check_output(
                ["swift", "build", "-c", "release", "--scratch-path", scratch, "--show-bin-path"],
                cwd=root, text=True, stderr=out).strip()
            if not os.access(f"{bin_dir}/boxer-mesh", os.X_OK):
                raise BenchError(f"no {bin_dir}/boxer-mesh: build it or drop --no-build")
            shim, note = None, ""
            script = f"{root}/scripts/build-shim.sh"  # trees before the PreloadShimBuilder plugin
            built = f"{bin_dir}/boxer-mesh_PreloadShim.resources/libboxer-shim.so"  # built with the binary
            if os.path.exists(built) and not os.path.exists(script):
                shim = built
            elif skip_build and os.path.exists(f"{bin_dir}/libboxer-shim.so"):
                shim = f"{bin_dir}/libboxer-shim.so"  # the one built with that binary
            elif os.path.exists(script) and os.path.isdir(f"{root}/Sources/CMeshShim"):
                rc = subprocess.call(["bash", script, f"{bin_dir}/libboxer-shim.so"], cwd=root, stdout=out,
                                     stderr=subprocess.STDOUT)
                if rc == 0:
                    shim = f"{bin_dir}/libboxer-shim.so"
                else:
                    note = f"scripts/build-shim.sh failed (status {rc}); see {log_path}"
            else:
                note = "no preload shim in this tree (no PreloadShimBuilder output, scripts/build-shim.sh or Sources/CMeshShim)"
            if shim is None and os.path.exists(f"{bin_dir}/libboxer-shim.so"):
                os.unlink(f"{bin_dir}/libboxer-shim.so")  # never measure a stale shim the node would pick up
        rtt = os.path.join(os.path.dirname(log_path), "rtt")
        rc = subprocess.call(["cc", "-O2", "-Wall", "-pthread", "-o", rtt, f"{root}/bench/rtt.c"], stdout=out,
                             stderr=subprocess.STDOUT)
        if rc != 0:
            raise BenchError(f"cannot compile bench/rtt.c; see {log_path}")
    return bin_dir, shim, note, rtt, time.monotonic() - started


def built_at(path):
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(path)))


# ---- the lab -------------------------------------------------------------------------------------------------


class Lab:
    """One NAT lab (`boxer-mesh lab`) with a broker, and every process bench/run starts in it."""

    def __init__(self, binary, prefix, work, functions, delay_ms=0, function_memory=None):
        self.binary, self.prefix, self.work = binary, prefix, work
        self.functions, self.delay_ms, self.function_memory = functions, delay_ms, function_memory
        self.secret = f"{work}/secret"
        self.processes = []  # (Popen, description)
        self.broker = None
        self.up_done = False

    def ns(self, host):
        return f"{self.prefix}-{host}"

    def up(self):
        os.makedirs(self.work, exist_ok=True)
        with open(self.secret, "w") as f:
            f.write(f"bench-{os.getpid()}-{time.time_ns()}\n")
        args = [self.binary, "lab", "up", "--prefix", self.prefix, "--functions", str(self.functions)]
        if self.delay_ms:
            args += ["--delay", str(self.delay_ms)]
        if self.function_memory:
            args += ["--function-memory", str(self.function_memory)]
        self.up_done = True  # from here on, down() must run even if up fails half way
        result = subprocess.run(args, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise BenchError(f"lab up failed: {result.stderr.strip()}")
        self.broker = self.spawn("broker", [self.binary, "broker", "--secret-file", self.secret], "broker")
        self.wait_log("broker", ["control plane serving", "STUN reflector serving"], 15)

    def down(self):
        for process, _ in reversed(self.processes):
            if process.poll() is None:
                try:
                    process.terminate()
                except OSError:
                    pass
        deadline = time.monotonic() + 3
        for process, _ in self.processes:
            try:
                process.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes = []
        if self.up_done:
            # lab down SIGKILLs whatever is left in the namespaces and removes them.
            subprocess.run([self.binary, "lab", "down", "--prefix", self.prefix], capture_output=True, timeout=120)
            self.up_done = False

    # -- processes

    def launcher(self, host):
        """What starts a program on `host`: in a lab of functions (`function_memory`), a function host's programs run
        as the function runs them (`lab exec`: its cgroups, uid 65534, read-only root), else in its namespace. Every
        launcher step execs the next, so a spawned process's pid is the program's own."""
        if self.function_memory and host.startswith("fn"):
            return [self.binary, "lab", "exec", "--prefix", self.prefix, host, "--"]
        return ["ip", "netns", "exec", self.ns(host)]

    def spawn(self, host, argv, name, env=None, stdout=None):
        """Starts argv on host (``launcher``). Standard output goes to WORK/NAME.out (or `stdout`), standard error
        to WORK/NAME.log."""
        out = stdout if stdout is not None else open(f"{self.work}/{name}.out", "wb")
        err = open(f"{self.work}/{name}.log", "wb")
        process = subprocess.Popen(self.launcher(host) + argv, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err, env=env, start_new_session=True)
        self.processes.append((process, name))
        return process

    def run(self, host, argv, timeout):
        """Runs argv on host (``launcher``) and waits; returns (status, stdout, stderr). Status 124 on timeout."""
        try:
            result = subprocess.run(self.launcher(host) + argv, capture_output=True,
                                    text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            return result.returncode, result.stdout, result.stderr
        except subprocess.TimeoutExpired as expired:
            return 124, _text(expired.stdout), _text(expired.stderr)

    def node_argv(self, name, app, extra=()):
        return [self.binary, "node", "--broker", BROKER, "--name", name, "--secret-file", self.secret,
                *extra, "--", *app]

    def node(self, host, name, app, extra=()):
        return self.spawn(host, self.node_argv(name, app, extra), name)

    def run_node(self, host, name, app, timeout):
        """A short-lived node: joins, runs app, leaves; returns (status, app's stdout, node's stderr)."""
        return self.run(host, self.node_argv(name, app), timeout)

    def stop(self, process, timeout=5):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def wait_log(self, name, needles, timeout, path=None):
        path = path or f"{self.work}/{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _read(path)
            if all(n in text for n in needles):
                return text
            time.sleep(0.05)
        raise BenchError(f"{name} did not log {needles} within {timeout} s: {_read(path)[-800:]}")

    def iptables(self, host, rule):
        status, _, err = self.run(host, ["iptables"] + rule, 20)
        if status != 0:
            raise BenchError(f"iptables {' '.join(rule)} in {self.ns(host)} failed: {err.strip()}")

    def port_forward(self, nat, port, to_ip):
        """The raw baseline's path: DNAT PORT on NAT nat's public address to TO_IP:PORT, and let it through the
        NAT's stateful filter (which drops unsolicited inbound)."""
        self.iptables(f"nat{nat}", ["-t", "nat", "-A", "PREROUTING", "-i", "wan0", "-p", "tcp", "--dport",
                                    str(port), "-j", "DNAT", "--to-destination", f"{to_ip}:{port}"])

    def allow_forwarded(self, nat):
        self.iptables(f"nat{nat}", ["-I", "FORWARD", "1", "-i", "wan0", "-m", "conntrack", "--ctstate", "DNAT",
                                    "-j", "ACCEPT"])


class Agent:
    """A node whose app is bench/agent.sh: commands sent to it run inside the node (with the preload shim and the
    node's socket in their environment), one at a time, so the harness can interleave them with plain runs and
    read the node's CPU before and after."""

    def __init__(self, lab, host, name, script, extra=()):
        self.lab, self.name = lab, name
        self.dir = f"{lab.work}/agent-{name}"
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.fifo = f"{self.dir}/commands"
        os.mkfifo(self.fifo)
        self.process = lab.node(host, name, ["bash", script, self.fifo, self.dir], extra)
        self.count = 0
        deadline = time.monotonic() + 20
        while not os.path.exists(f"{self.dir}/ready"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise BenchError(f"agent node {name} did not start: {_read(f'{lab.work}/{name}.log')[-800:]}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.process.pid

    def start(self, command, timeout):
        """Sends COMMAND (a shell line, run under `timeout`); returns its id for wait()."""
        self.count += 1
        job = f"job{self.count}"
        line = f"{job}\ttimeout -k 2 {timeout} {command}\n"
        with open(self.fifo, "w") as f:
            f.write(line)
        return job

    def wait(self, job, timeout):
        path = f"{self.dir}/{job}.rc"
        deadline = time.monotonic() + timeout + 10
        while not os.path.exists(path):
            if time.monotonic() > deadline or self.process.poll() is not None:
                return 125, _read(f"{self.dir}/{job}.out"), "the agent did not finish the command"
            time.sleep(0.02)
        return int(_read(path).strip() or 125), _read(f"{self.dir}/{job}.out"), _read(f"{self.dir}/{job}.err")

    def run(self, command, timeout):
        return self.wait(self.start(command, timeout), timeout)


def link_paths(log_text):
    """How many links a node's log (--log-level info) says came up on each path: {"direct": n, "relay": m}, and
    under "spare" how many of them took a spare link."""
    paths = {}
    for line in log_text.splitlines():
        if "link up" in line and "path=" in line:
            path = line.split("path=", 1)[1].split()[0]
            paths[path] = paths.get(path, 0) + 1
            if "spare=yes" in line:
                paths["spare"] = paths.get("spare", 0) + 1
    return paths


def node_supports(binary, option):
    """Whether `boxer-mesh node --help` lists OPTION (features arrive while this benchmark exists)."""
    result = subprocess.run([binary, "node", "--help"], capture_output=True, text=True, timeout=30)
    return option in result.stdout


def last_json(text):
    """The last line of TEXT that parses as a JSON object, or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _text(data):
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def install_signal_handlers():
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP end the run with KeyboardInterrupt, so `finally` blocks clean up."""
    def stop(number, _frame):
        raise KeyboardInterrupt(f"signal {number}")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, stop)  # also when started with SIGINT ignored (in the background)
