"""The cases of bench/run. Each measures a candidate and its baseline in the same run, interleaved (the order of
variants rotates every repetition, so drift and position hit all of them), and returns table rows (benchstats.row)
plus the raw per-run data for the JSON.

Hosts: A = fn2 (the side that connects), B = fn1 (the side that listens). "A→B" means data flows from fn2 to fn1.
"""
import csv
import json
import os
import statistics
import subprocess
import time

from benchlab import BROKER, Agent, BenchError, Lab, cpu_seconds, family_cpu_seconds, last_json, link_paths, log, \
    mem_available_kib, memory_kib, nat_public, node_supports
from benchstats import ratio, row

RELAY_MISSING = "this build's node has no relay (no --path option; issue 5)"
UPGRADE_MISSING = "this build's node has no relay fallback, so no live upgrade (issue 5)"

# Ports. Mesh servers run inside node "srv" on fn1; plain ones beside it, reached through NAT 1's port forward.
MESH_IPERF, RAW_IPERF = 5201, 5202
MESH_ECHO, RAW_ECHO, RELAYED_ECHO = 7001, 7002, 7003  # socat's own echo server: no process shared with raw
SOCAT_BIG, SOCAT_DEFAULT, SOCAT_ECHO = 6202, 6203, 6204
REDIS_MESH, REDIS_RAW = 6379, 6380


def rotated(items, k):
    k %= len(items)
    return items[k:] + items[:k]


class Context:
    def __init__(self, options, binary, shim, rtt, root, work, deadline):
        self.options, self.binary, self.shim, self.rtt = options, binary, shim, rtt
        self.root, self.work, self.deadline = root, work, deadline
        self.lab = None
        self.labs = []
        self.shim_note = ""
        # The relay (issue 5) is detected, not assumed: a node that can be told its path has one.
        self.relay = node_supports(binary, "--path")
        # So is the splice port (issue 14): the broker joins a relayed connection's two TCP connections in the kernel.
        self.splice = node_supports(binary, "--relay-splice")

    def remaining(self):
        return self.deadline - time.monotonic()


# ---- setting up a lab with its servers ------------------------------------------------------------------------


def serve(ctx, lab, full):
    """Starts the servers on fn1: node "srv" (mesh side, with the shim) and the plain ones, the port forward on
    NAT 1 (the raw baseline's path), and with `full` the socat relays on the broker host and the agent node on fn2."""
    rtt = ctx.rtt
    # Both iperf3 servers give up on a test whose client went silent (a run that lost its data connection).
    iperf_server = "iperf3 -s --rcv-timeout 5000 -p"
    mesh_app = ["sh", "-c", f"{iperf_server} {MESH_IPERF} >/dev/null 2>&1 & exec {rtt} serve {MESH_ECHO}"]
    lab.srv = lab.node("fn1", "srv", mesh_app, ["--relay-splice"] if ctx.splice else [])
    lab.raw_echo = lab.spawn("fn1", [rtt, "serve", str(RAW_ECHO)], "raw-echo")
    lab.spawn("fn1", [rtt, "serve", str(RELAYED_ECHO)], "relayed-echo")
    for port in (RAW_ECHO, RELAYED_ECHO, RAW_IPERF):
        lab.port_forward(1, port, "10.1.1.2")
    lab.allow_forwarded(1)
    if full:
        lab.spawn("fn1", iperf_server.split() + [str(RAW_IPERF)], "raw-iperf3")
        target = f"TCP:{nat_public(1)}"
        lab.socat_big = lab.spawn("broker", ["socat", "-b", "262144", f"TCP-LISTEN:{SOCAT_BIG},fork,reuseaddr",
                             f"{target}:{RAW_IPERF}"], "socat-262144")
        lab.spawn("broker", ["socat", f"TCP-LISTEN:{SOCAT_DEFAULT},fork,reuseaddr", f"{target}:{RAW_IPERF}"],
                  "socat-default")
        lab.spawn("broker", ["socat", f"TCP-LISTEN:{SOCAT_ECHO},fork,reuseaddr", f"{target}:{RELAYED_ECHO}"],
                  "socat-echo")
    lab.wait_log("srv", ["joined mesh"], 20)
    deadline = time.monotonic() + 10
    while '"serve"' not in open(f"{lab.work}/srv.out", errors="replace").read():
        if time.monotonic() > deadline or lab.srv.poll() is not None:
            raise BenchError(f"the srv node's app did not start: {open(f'{lab.work}/srv.log').read()[-800:]}")
        time.sleep(0.05)
    if full and ctx.shim:
        script = os.path.join(ctx.root, "bench", "agent.sh")
        # With a relay in the build, pin each agent's path so a figure is never silently of the other path.
        lab.agent = Agent(lab, "fn2", "cli", script,
                          ["--path", "direct", "--log-level", "info"] if ctx.relay else ["--log-level", "info"])
        if ctx.relay:
            lab.relay_agent = Agent(lab, "fn2", "clr", script, ["--path", "relay", "--log-level", "info"])
        if ctx.splice:
            lab.splice_agent = Agent(lab, "fn2", "cls", script, ["--path", "relay", "--relay-splice", "--log-level", "info"])
    time.sleep(0.3)  # plain servers and socat listening


def make_lab(ctx, prefix, functions, delay_ms=0, full=True, function_memory=None):
    lab = Lab(ctx.binary, prefix, os.path.join(ctx.work, prefix), functions, delay_ms, function_memory)
    lab.srv = lab.agent = lab.relay_agent = lab.splice_agent = lab.socat_big = None
    ctx.labs.append(lab)
    log(f"lab {prefix}: up, {functions} functions" + (f" of {function_memory} MB" if function_memory else "") +
        f", delay {delay_ms} ms")
    lab.up()
    serve(ctx, lab, full)
    return lab


# ---- case 1: throughput ---------------------------------------------------------------------------------------


def iperf_bps(text):
    data = whole_json(text) or {}
    bps = data.get("end", {}).get("sum_received", {}).get("bits_per_second")
    if not bps:
        return None, data.get("error") or "no result (iperf3 was stopped or its connection never came up)"
    return bps, None


def iperf_bytes(text):
    """Bytes the whole test moved, the omitted first intervals included (they cost CPU too)."""
    data = whole_json(text) or {}
    return sum(i.get("sum", {}).get("bytes", 0) for i in data.get("intervals", [])) or None


def throughput(ctx):
    lab, agent, relay, o = ctx.lab, ctx.lab.agent, ctx.lab.relay_agent, ctx.options
    spliced = lab.splice_agent
    seconds, omit = o.iperf_seconds, o.iperf_omit
    timeout = seconds + omit + 6  # a run that lost a connection to the accept race hangs until then
    variants = (["raw", "socat256k", "socat"] + (["direct"] if agent else []) + (["relayed"] if relay else [])
                + (["spliced"] if spliced else []))
    clients = {"direct": agent, "relayed": relay, "spliced": spliced}
    data = {d: {v: [] for v in variants} for d in ("A→B", "B→A")}
    cpu = {"direct": [], "relayed": [], "spliced": []}  # per mesh run: CPU seconds of both nodes and the broker, wall seconds
    socat_cpu = []  # per socat -b 262144 run: the relay's CPU seconds (its forked children) and the bytes moved
    failures = {v: [] for v in variants}
    for rep in range(o.reps):
        for direction in ("A→B", "B→A"):
            reverse = ["-R"] if direction == "B→A" else []
            for variant in rotated(variants, rep):
                args = ["-t", str(seconds), "-O", str(omit), "-J"] + reverse
                value = None
                for attempt in range(2):
                    if variant in clients:
                        client = clients[variant]
                        pids = [client.pid, lab.srv.pid, lab.broker.pid]
                        before = [cpu_seconds(pid) for pid in pids]
                        started = time.monotonic()
                        status, out, err = client.run(f"iperf3 -c srv -p {MESH_IPERF} {' '.join(args)}", timeout)
                        wall = time.monotonic() - started
                        after = [cpu_seconds(pid) for pid in pids]
                    else:
                        host, port = {"raw": (nat_public(1), RAW_IPERF), "socat256k": (BROKER, SOCAT_BIG),
                                      "socat": (BROKER, SOCAT_DEFAULT)}[variant]
                        measured = variant == "socat256k" and lab.socat_big is not None
                        socat_before = family_cpu_seconds(lab.socat_big.pid) if measured else None
                        status, out, err = lab.run("fn2", ["iperf3", "-c", host, "-p", str(port)] + args, timeout)
                        socat_after = family_cpu_seconds(lab.socat_big.pid) if measured else None
                    value, error = iperf_bps(out)
                    if value:
                        break
                    failures[variant].append(f"status {status}: {error or tail(err)}")
                    log(f"  throughput {direction} {variant}: run failed: {failures[variant][-1]}")
                    time.sleep(2)  # let the server end the broken test
                data[direction][variant].append(value)
                if variant in cpu and value and None not in before + after:
                    cpu[variant].append({"client_node_cpu_s": after[0] - before[0],
                                         "server_node_cpu_s": after[1] - before[1],
                                         "broker_cpu_s": after[2] - before[2], "wall_s": wall, "direction": direction,
                                         "bytes": iperf_bytes(out)})
                if variant == "socat256k" and value and None not in (socat_before, socat_after):
                    socat_cpu.append({"cpu_s": socat_after - socat_before, "bytes": iperf_bytes(out),
                                      "direction": direction})
                log(f"  throughput rep {rep + 1} {direction} {variant}: {(value or 0) / 1e9:.2f} Gbit/s")
    rows = []
    names = {"socat256k": "socat relay on broker host, -b 262144",
             "socat": "socat relay on broker host, default buffer"}
    for direction in ("A→B", "B→A"):
        d = data[direction]
        rows.append(row("throughput", f"{direction} raw TCP via port-forward (baseline)", "bit/s", d["raw"]))
        if agent:
            rows.append(row("throughput", f"{direction} mesh direct (iperf3 + shim)", "bit/s", d["direct"],
                            d["raw"], "raw", goal=("≥ 0.97x raw", ">=", 0.97), note=retry_note(failures["direct"])))
        else:
            rows.append(row("throughput", f"{direction} mesh direct", "bit/s", available=False,
                            note=f"not available: {ctx.shim_note}"))
        if relay:
            rows.append(row("throughput", f"{direction} mesh relayed vs socat -b 262144", "bit/s", d["relayed"],
                            d["socat256k"], "socat", goal=("≥ 1.0x socat", ">=", 1.0),
                            note=retry_note(failures["relayed"])))
            rows.append(row("throughput", f"{direction} mesh relayed vs raw", "bit/s", d["relayed"], d["raw"], "raw"))
        else:
            rows.append(row("throughput", f"{direction} mesh relayed", "bit/s", available=False,
                            note=RELAY_MISSING if agent else f"not available: {ctx.shim_note}"))
        if spliced:
            rows.append(row("throughput", f"{direction} mesh spliced (--relay-splice) vs socat -b 262144", "bit/s",
                            d["spliced"], d["socat256k"], "socat", note=retry_note(failures["spliced"])))
        for v in ("socat256k", "socat"):
            rows.append(row("throughput", f"{direction} {names[v]}", "bit/s", d[v], d["raw"], "raw"))
    for variant, runs in cpu.items():
        if not runs:
            continue
        nodes = [100 * (c["client_node_cpu_s"] + c["server_node_cpu_s"]) / c["wall_s"] for c in runs]
        goal = ("≈ 0 (issue 3; read as ≤ 1 %)", "<=", 1.0) if variant == "direct" else None
        rows.append(row("throughput", f"both nodes' CPU during {variant} transfers (% of one core)", "%", nodes,
                        goal=goal))
        if variant != "direct":
            rows.append(row("throughput", f"broker CPU during {variant} transfers (% of one core)", "%",
                            [100 * c["broker_cpu_s"] / c["wall_s"] for c in runs]))
            rows += relay_cpu_rows(variant, runs, socat_cpu)
    names = ("cli", "clr") + (("cls",) if spliced else ())
    paths = {name: link_paths(read(f"{lab.work}/{name}.log")) for name in names}
    wrong = {"cli": paths["cli"].get("relay", 0), "clr": paths["clr"].get("direct", 0),
             "cls": paths.get("cls", {}).get("direct", 0)}
    for r in rows:  # a figure is only of its path if every link of its agent came up on that path
        agent_name = ("cli" if "direct" in r["what"] else "clr" if "relayed" in r["what"]
                      else "cls" if "spliced" in r["what"] else None)
        if agent_name and wrong[agent_name]:
            other = f"{wrong[agent_name]} link(s) of {agent_name} on the other path"
            r["note"] = f"{r['note']}; {other}" if r.get("note") else other
            r["verdict"] = "INVALID"
    return rows, {"seconds": seconds, "omit": omit, "bits_per_second": data, "cpu": cpu, "socat_cpu": socat_cpu,
                  "failures": failures,
                  "agent_link_paths": paths}


def relay_cpu_rows(variant, runs, socat_runs):
    """CPU per relayed GB (10^9 bytes) of each node and of the broker (issue 14) on the `variant` path (relayed:
    the copy loop; spliced: the broker's splice port), the broker's against a socat -b 262144 relay's on the same
    host in the same run (runs of both directions, interleaved, paired in order)."""
    def per_gb(seconds, moved):
        return seconds / (moved / 1e9) if moved else None

    socat = [per_gb(c["cpu_s"], c["bytes"]) for c in socat_runs]
    goal = ("≤ 0.3 cpu-s/GB", "<=", 0.3)
    return [
        row("throughput", f"connecting node's CPU per {variant} GB", "cpu-s/GB",
            [per_gb(c["client_node_cpu_s"], c["bytes"]) for c in runs], goal=goal),
        row("throughput", f"accepting node's CPU per {variant} GB", "cpu-s/GB",
            [per_gb(c["server_node_cpu_s"], c["bytes"]) for c in runs], goal=goal),
        row("throughput", f"broker CPU per {variant} GB vs a socat -b 262144 relay's", "cpu-s/GB",
            [per_gb(c["broker_cpu_s"], c["bytes"]) for c in runs], socat, "socat", goal=("≤ 1.0x socat", "<=", 1.0)),
    ]


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def retry_note(failures):
    return f"{len(failures)} failed attempt(s) retried" if failures else ""


def failed_note(failures):
    return f"{len(failures)} run(s) failed, left out" if failures else ""


def tail(text, limit=240):
    """The end of a program's output without the node's routine notices."""
    lines = [line for line in text.strip().splitlines() if " notice " not in line and " info " not in line]
    return " | ".join(lines)[-limit:]


# ---- case 2: round trip -------------------------------------------------------------------------------------


def rtt(ctx):
    """One process (in an agent node, so it can reach mesh names) holds a raw, a socat-relayed and a mesh
    connection and ping-pongs 1 KiB on them in turns of `block` round trips: baseline and candidate share the
    process, the moment and the CPU. The shim never sees data (it hooks only connect/accept/names), so the raw
    connection's data path is the plain kernel's. With a relay in the build, a second process in the relay agent
    does the same with a relayed mesh connection."""
    lab, agent, relay, o = ctx.lab, ctx.lab.agent, ctx.lab.relay_agent, ctx.options
    count, warmup, block = o.ping_count, o.ping_warmup, 100
    plain = {"raw": f"{nat_public(1)}:{RAW_ECHO}", "socat": f"{BROKER}:{SOCAT_ECHO}"}
    runs = [("direct", agent)] if agent else [("plain", None)]
    if relay:
        runs.append(("relayed", relay))
    if lab.splice_agent:
        runs.append(("spliced", lab.splice_agent))
    p50 = {run: {} for run, _ in runs}
    p99 = {run: {} for run, _ in runs}
    failures = []
    for rep in range(o.reps):
        for run, client in rotated(runs, rep):
            targets = dict(plain, **({run: f"srv:{MESH_ECHO}"} if client else {}))
            variants = list(targets)
            specs = [f"{v}={targets[v]}" for v in rotated(variants, rep)]
            argv = [ctx.rtt, "pingmix", "1024", str(count), str(block), str(warmup)] + specs
            result = None
            for attempt in range(3):
                status, out, err = client.run(" ".join(argv), 30) if client else lab.run("fn2", argv, 30)
                result = whole_json(out)
                if status == 0 and result and "targets" in result:
                    break
                failures.append(f"{run}: status {status}: {tail(out)} {tail(err)}")
                log(f"  rtt: run failed: {failures[-1]}")
                result = None
            for v in variants:
                stats = result["targets"][v] if result else {}
                p50[run].setdefault(v, []).append(stats.get("p50_us"))
                p99[run].setdefault(v, []).append(stats.get("p99_us"))
            measured = ", ".join(f"{v} {p50[run][v][-1]} µs" for v in variants)
            log(f"  rtt rep {rep + 1} ({run} process): p50 {measured}")
    first = runs[0][0]
    base50, base99 = p50[first]["raw"], p99[first]["raw"]
    rows = [row("rtt", "1 KiB ping-pong p50, raw TCP via port-forward (baseline)", "us", base50)]
    if agent:
        rows.append(row("rtt", "1 KiB p50, mesh direct", "us", p50["direct"]["direct"], base50, "raw",
                        goal=("≤ 1.03x raw", "<=", 1.03), note=retry_note(failures)))
    else:
        rows.append(row("rtt", "1 KiB p50, mesh direct", "us", available=False, note=f"not available: {ctx.shim_note}"))
    if relay:
        rows.append(row("rtt", "1 KiB p50, mesh relayed (vs raw in the same process)", "us", p50["relayed"]["relayed"],
                        p50["relayed"]["raw"], "raw"))
        rows.append(row("rtt", "1 KiB p50, mesh relayed vs a socat relay on the broker host (same process)", "us",
                        p50["relayed"]["relayed"], p50["relayed"]["socat"], "socat", goal=("≤ 1.5x socat", "<=", 1.5)))
    else:
        rows.append(row("rtt", "1 KiB p50, mesh relayed", "us", available=False,
                        note=RELAY_MISSING if agent else f"not available: {ctx.shim_note}"))
    if lab.splice_agent:
        rows.append(row("rtt", "1 KiB p50, mesh spliced (--relay-splice) vs a socat relay on the broker host (same process)",
                        "us", p50["spliced"]["spliced"], p50["spliced"]["socat"], "socat", goal=("≤ 1.5x socat", "<=", 1.5)))
    rows.append(row("rtt", "1 KiB p50, socat relay on broker host", "us", p50[first]["socat"], base50, "raw"))
    rows.append(row("rtt", "1 KiB p99, raw (baseline)", "us", base99))
    if agent:
        rows.append(row("rtt", "1 KiB p99, mesh direct", "us", p99["direct"]["direct"], base99, "raw"))
    if relay:
        rows.append(row("rtt", "1 KiB p99, mesh relayed (vs raw in the same process)", "us", p99["relayed"]["relayed"],
                        p99["relayed"]["raw"], "raw"))
    return rows, {"count_per_run": count, "warmup": warmup, "block": block, "size": 1024, "p50_us": p50,
                  "p99_us": p99, "failures": failures}


def whole_json(text):
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        return None


# ---- case 3: connection setup ---------------------------------------------------------------------------------


CONNECT_PAUSE_MS = 50  # between one connect of a run and the next (not timed)


def spare_note(paths):
    """How many of the links the connecting nodes logged took a spare link."""
    total = sum(n for path, n in paths.items() if path != "spare")
    return f"{paths.get('spare', 0)} of {total} links took a spare" if total else ""


# Connects in the long run of the CPU-per-connect measurement (the short run makes 1): /proc counts CPU in 10 ms
# ticks, 25 µs per connect over 400.
CPU_CONNECTS = 401


def connect_cpu(ctx, lab):
    """CPU per connect, both nodes and the broker together: a fresh node's app makes CPU_CONNECTS connects to srv
    (10 ms apart, so spare links serve them), another fresh node's app makes one; the difference in CPU (the client
    node with its app and shim, the server node srv, the broker), divided by CPU_CONNECTS - 1, leaves out what
    joining and leaving cost. Spare links made for these connects count: the connects cause them. The baseline is
    the same for raw connects through the same NATs (the client and the plain echo server): the lab's NATs run on
    the same cores, and the packets' way through them is counted on either path."""
    def per_connect(argv, servers):
        """CPU per connect of the clients `argv(count)` runs (reaped by this process) and the processes `servers`."""
        def sample():
            return (os.times().children_user + os.times().children_system,) + tuple(cpu_seconds(p) for p in servers)
        spent = {}
        for count in (1, CPU_CONNECTS):
            before = sample()
            status, out, err = lab.run("fn2", argv(count), 30)
            time.sleep(0.3)  # the spare links being made as the client left end on both sides
            after = sample()
            if status != 0 or None in before + after:
                log(f"  connect cpu: run of {count} failed: status {status}: {tail(out)} {tail(err)}")
                return None
            spent[count] = sum(a - b for a, b in zip(after, before))
        return (spent[CPU_CONNECTS] - spent[1]) / (CPU_CONNECTS - 1) * 1e6

    mesh, raw = [], []
    for rep in range(ctx.options.reps):
        mesh.append(per_connect(lambda count: lab.node_argv(f"cpu{rep}n{count}", [
            ctx.rtt, "connect", "srv", str(MESH_ECHO), str(count), "pause=10"]), [lab.srv.pid, lab.broker.pid]))
        raw.append(per_connect(lambda count: [ctx.rtt, "connect", nat_public(1), str(RAW_ECHO), str(count), "pause=10"],
                               [lab.raw_echo.pid]))
        log(f"  connect cpu rep {rep + 1}: {mesh[-1]} µs per connect (raw {raw[-1]} µs)")
    return [row("connect", "delay 0 ms: CPU per raw connect through the same NATs, client and echo server (baseline)",
                "us", raw),
            row("connect", "delay 0 ms: CPU per connect to a peer already connected, both nodes (with app and shim) "
                "and broker", "us", mesh, goal=("≤ 300 µs", "<=", 300),
                note=cpu_ratio_note(mesh, raw))], {"cpu_per_connect_us": mesh, "raw_cpu_per_connect_us": raw}


def cpu_ratio_note(mesh, raw):
    """The mesh's CPU per connect against the raw baseline's, for the note (the goal stays in µs)."""
    r = ratio(mesh, raw)
    return f"{r['value']:.1f}x the raw baseline's" + (" (WIDE)" if r["wide"] else "") if r else ""


def connect_setup(ctx, lab, delay_ms):
    """Raw connect() through the port forward vs connect() of an app in a fresh node to srv: the first connect
    is to a new peer; the later ones happen while the first connection is still open, each CONNECT_PAUSE_MS after
    the one before. The third makes the node keep spare links to the peer: the fourth to sixth are "peer already
    connected". In a lab of functions the goals are the issue's absolute ones for connects inside them."""
    o = ctx.options
    per_run = 6
    pause = f"pause={CONNECT_PAUSE_MS}"
    warm = 3  # the node makes spare links from the app's third connect to a peer on
    raw, new, again, resolve = [], [], [], []
    lookups, local_lookups = [], []  # p50 per run of getaddrinfo of srv (through the shim) and of localhost
    failures = []
    paths = {}  # links the connecting nodes logged, by path (the default policy may relay a slow punch)
    mesh = bool(ctx.shim)
    for rep in range(o.reps):
        for variant in rotated(["raw", "mesh", "lookup"] if mesh else ["raw"], rep):
            if variant == "lookup":
                # A fresh node, as the connect runs use: its app's lookups, in turns with a local one.
                status, out, err = lab.run("fn2", lab.node_argv(f"l{delay_ms}r{rep}", [ctx.rtt, "lookups", "srv",
                                                                                   "localhost", "200"]), 8)
                result = last_json(out)
                ok = status == 0 and result and "name" in result
                if not ok:
                    failures.append(f"lookups: status {status}: {tail(out)} {tail(err)}")
                lookups.append(result["name"]["p50_us"] if ok else None)
                local_lookups.append(result["baseline"]["p50_us"] if ok else None)
                continue
            if variant == "raw":
                status, out, err = lab.run("fn2", [ctx.rtt, "connect", nat_public(1), str(RAW_ECHO), str(per_run), pause], 30)
                result = last_json(out)
                raw.append(statistics.median(result["connect_us"]) if status == 0 and result and
                           "connect_us" in result else None)
                continue
            result = None
            for attempt in range(3):
                name = f"c{delay_ms}r{rep}a{attempt}"
                status, out, err = lab.run(
                    "fn2", lab.node_argv(name, [ctx.rtt, "connect", "srv", str(MESH_ECHO), str(per_run), pause],
                                         ["--log-level", "info"]), 8)
                for path, n in link_paths(err).items():
                    paths[path] = paths.get(path, 0) + n
                result = last_json(out)
                if status == 0 and result and "connect_us" in result:
                    break
                failures.append(f"status {status}: {tail(out)} {tail(err)}")
                log(f"  connect {delay_ms} ms mesh: run failed: {failures[-1]}")
                result = None
            new.append(result and result["connect_us"][0])
            again.append(result and statistics.median(result["connect_us"][warm:]))
            resolve.append(result and result["resolve_us"])
        log(f"  connect {delay_ms} ms rep {rep + 1}: raw {raw[-1]} µs, mesh new {new[-1] if new else None} µs, "
            f"again {again[-1] if again else None} µs, name lookup {lookups[-1] if lookups else None} µs "
            f"(localhost {local_lookups[-1] if local_lookups else None} µs)")
    label = f"delay {delay_ms} ms"
    # Against raw, or inside functions (where raw is a tenth of a millisecond either way) against fixed times. A
    # new peer with no delay has the fixed goal, its ratio to raw shown beside it.
    baseline, new_goal, again_goal = raw, ("≤ 2x raw", "<=", 2.0), ("≤ 1x raw", "<=", 1.0)
    if delay_ms == 0:
        new_goal = ("≤ 1 ms", "<=", 1000, "median")
    if lab.function_memory:
        label = f"{lab.function_memory} MB functions, {label}"
        baseline, new_goal, again_goal = None, ("≤ 10 ms", "<=", 10000), ("≤ 2 ms", "<=", 2000)
    rows = [row("connect", f"{label}: raw connect() via port-forward (baseline)", "us", raw)]
    if mesh:
        note = retry_note(failures)
        if paths.get("relay"):
            note = (note + "; " if note else "") + f"{paths['relay']} of {sum(n for p, n in paths.items() if p != 'spare')} links relayed"
        rows += [
            row("connect", f"{label}: mesh connect() to a new peer", "us", new, baseline, "raw",
                goal=new_goal, note=note),
            row("connect", f"{label}: mesh connect() to a peer already connected (the app's 4th-6th, "
                f"{CONNECT_PAUSE_MS} ms apart: spare links ready)", "us", again, baseline, "raw", goal=again_goal,
                note=spare_note(paths)),
            row("connect", f"{label}: mesh name lookup before it (getaddrinfo, the app's first)", "us", resolve),
            row("connect", f"{label}: getaddrinfo of localhost (/etc/hosts), p50 of 200 (baseline)", "us",
                local_lookups),
            row("connect", f"{label}: getaddrinfo of a mesh name through the shim, p50 of 200", "us", lookups,
                goal=("≤ 50 µs", "<=", 50)),
        ]
    else:
        rows.append(row("connect", f"{label}: mesh connect()", "us", available=False,
                        note=f"not available: {ctx.shim_note}"))
    return rows, {"delay_ms": delay_ms, "connects_per_run": per_run, "raw_us": raw, "mesh_new_peer_us": new,
                  "mesh_connected_peer_us": again, "mesh_resolve_us": resolve, "mesh_lookup_p50_us": lookups,
                  "localhost_lookup_p50_us": local_lookups, "failures": failures,
                  "link_paths": paths}


# ---- case: interposition cost (issue 15) ---------------------------------------------------------------------

SECCOMP_ECHO = 7004  # rtt serve under a node that runs it under the seccomp supervisor
SELF_ECHO = 7005  # rtt serve beside rtt connect, in one node


def interpose(ctx):
    """What the seccomp supervisor costs per connect and per accept, against the preload shim, with the same
    program (bench/rtt, dynamic, forced with --interpose): connect() from a client node under each, to srv (shim);
    and connect + first echo from a shim client to a server under each (the difference is the accept's cost).
    Between functions on direct links (the first connect of a run, to a new peer, is left out), and within one node
    (a loopback link: the interposition's cost without the network's). And a non-blocking connect (as an event
    loop makes it) to srv: how long connect() itself holds the app's thread — both return EINPROGRESS at once (the
    supervisor with a stand-in socket) — and how long until the socket is connected (the supervisor's includes the
    SO_ERROR call that puts the link in)."""
    lab, o = ctx.lab, ctx.options
    if not node_supports(ctx.binary, "--interpose"):
        return [row("interpose", "seccomp supervisor", "us", available=False,
                    note="this build's node has no --interpose (issue 15)")], {}
    per_run = 8
    rtt = ctx.rtt
    # Within one node: rtt connects to its own node's mesh address, which the node answers with a loopback
    # connection (no broker, no punch), so the difference between the two modes is the interposition alone.
    local = ["sh", "-c", f"{rtt} serve {SELF_ECHO} & sleep 0.3; {rtt} connect \"$BOXER_MESH_NAME\" {SELF_ECHO} 20; "
             "status=$?; kill $!; exit $status"]
    server = lab.node("fn1", "srvsc", [rtt, "serve", str(SECCOMP_ECHO)], ["--interpose", "seccomp"])
    lab.wait_log("srvsc", ["seccomp supervisor"], 20)
    time.sleep(0.5)
    series = {"connect_shim": [], "connect_seccomp": [], "echo_shim_server": [], "echo_seccomp_server": [],
              "local_connect_shim": [], "local_connect_seccomp": [], "local_echo_shim": [], "local_echo_seccomp": [],
              "nonblocking_call_shim": [], "nonblocking_call_seccomp": [],
              "nonblocking_connected_shim": [], "nonblocking_connected_seccomp": []}
    failures = []
    variants = [("shim", "srv", MESH_ECHO), ("seccomp", "srv", MESH_ECHO), ("shim", "srvsc", SECCOMP_ECHO),
                ("shim", "self", SELF_ECHO), ("seccomp", "self", SELF_ECHO),
                ("shim", "srvnb", MESH_ECHO), ("seccomp", "srvnb", MESH_ECHO)]
    try:
        for rep in range(o.reps):
            for mode, target, port in rotated(variants, rep):
                app = (local if target == "self" else
                       [rtt, "connect", "srv", str(port), str(per_run), "nonblocking"] if target == "srvnb" else
                       [rtt, "connect", target, str(port), str(per_run)])
                options = ["--interpose", "preload" if mode == "shim" else "seccomp"]
                argv = lab.node_argv(f"ip{rep}{mode[:2]}{target[-2:]}", app,
                                     options + (["--path", "direct"] if ctx.relay else []))
                status, out, err = lab.run("fn2", argv, 20)
                result = last_json(out)
                if status != 0 or not result or "echo_us" not in result:
                    failures.append(f"{mode}→{target}: status {status}: {tail(out)} {tail(err)}")
                    log(f"  interpose: run failed: {failures[-1]}")
                    continue
                connect = statistics.median(result["connect_us"][1:])
                echo = statistics.median(result["echo_us"][1:])
                if target == "self":
                    series[f"local_connect_{mode}"].append(connect)
                    series[f"local_echo_{mode}"].append(echo)
                elif target == "srvnb":
                    series[f"nonblocking_call_{mode}"].append(statistics.median(result["call_us"][1:]))
                    series[f"nonblocking_connected_{mode}"].append(connect)
                elif target == "srvsc":
                    series["echo_seccomp_server"].append(echo)
                else:
                    series[f"connect_{mode}"].append(connect)
                    if mode == "shim":
                        series["echo_shim_server"].append(echo)
            log(f"  interpose rep {rep + 1}: " + ", ".join(f"{k} {v[-1] if v else None:.0f} µs" if v else f"{k} -"
                                                           for k, v in series.items()))
    finally:
        lab.stop(server)
    rows = [
        row("interpose", "connect() to the own node (loopback link) under the shim", "us", series["local_connect_shim"]),
        row("interpose", "connect() to the own node (loopback link) under the supervisor", "us",
            series["local_connect_seccomp"], series["local_connect_shim"], "shim"),
        row("interpose", "own node: connect + accept + 1-byte echo, both under the shim", "us", series["local_echo_shim"]),
        row("interpose", "own node: connect + accept + 1-byte echo, both under the supervisor", "us",
            series["local_echo_seccomp"], series["local_echo_shim"], "shim"),
        row("interpose", "connect() under the preload shim (peer already connected)", "us", series["connect_shim"]),
        row("interpose", "connect() under the seccomp supervisor", "us", series["connect_seccomp"],
            series["connect_shim"], "shim", note=retry_note(failures)),
        row("interpose", "non-blocking connect(): the call holds the app's thread, under the shim (EINPROGRESS)", "us",
            series["nonblocking_call_shim"]),
        row("interpose", "non-blocking connect(): the call holds the app's thread, under the supervisor (EINPROGRESS, "
            "stand-in)", "us", series["nonblocking_call_seccomp"], series["nonblocking_call_shim"], "shim"),
        row("interpose", "non-blocking connect until connected, under the shim", "us",
            series["nonblocking_connected_shim"]),
        row("interpose", "non-blocking connect until connected, under the supervisor", "us",
            series["nonblocking_connected_seccomp"], series["nonblocking_connected_shim"], "shim"),
        row("interpose", "connect + accept + 1-byte echo, server under the shim", "us", series["echo_shim_server"]),
        row("interpose", "connect + accept + 1-byte echo, server under the seccomp supervisor", "us",
            series["echo_seccomp_server"], series["echo_shim_server"], "shim server"),
    ]
    return rows, {"connects_per_run": per_run, "failures": failures, **{k + "_us": v for k, v in series.items()}}


# ---- case 4: control plane scale ------------------------------------------------------------------------------


def scale(ctx):
    lab, agent, o = ctx.lab, ctx.lab.agent, ctx.options
    hosts = [f"fn{i}" for i in range(3, 3 + o.scale_hosts)]
    launch = os.path.join(ctx.root, "bench", "launch.py")
    rows, raw = [], {}
    per_node_kib = 8 * 1024  # node PSS + its app, a guess until the first size is measured (seen: ~4 MiB)
    seconds_per_node = None
    for size in o.scale:
        need = size * per_node_kib * 1.5
        if need > 0.5 * mem_available_kib():
            rows.append(row("scale", f"{size} nodes", "s", available=False,
                            note=f"skipped: needs ~{need / 1048576:.1f} GiB, more than half of free memory"))
            continue
        reps = o.scale_reps
        if seconds_per_node is not None:
            estimate = 15 + seconds_per_node * size
            fit = int((ctx.remaining() - o.reserve_seconds) // estimate)
            if fit < 1:
                rows.append(row("scale", f"{size} nodes", "s", available=False,
                                note=f"skipped: ~{estimate:.0f} s a run does not fit the 15-minute budget"))
                continue
            if fit < reps:
                log(f"  scale {size}: only {fit} run(s) fit the time budget")
                reps = fit
        runs = []
        for rep in range(reps):
            started = time.monotonic()
            runs.append(scale_run(ctx, lab, agent, hosts, launch, size, rep))
            seconds_per_node = (time.monotonic() - started) / size
            r = runs[-1]
            if r["node_pss_kib"]:
                per_node_kib = statistics.median(r["node_pss_kib"]) + 2048
            log(f"  scale {size} rep {rep + 1}: {r['joined']}/{size} joined in {r['all_joined_s']} s, "
                f"resolved by {r['all_resolved_s']} s, broker {r['broker_cpu_s']} CPU-s, "
                f"node RSS median {statistics.median(r['node_rss_kib'] or [0]) / 1024:.1f} MiB")
        raw[str(size)] = runs
        pick = lambda key: [r[key] for r in runs]  # noqa: E731
        complete = all(r["joined"] == size for r in runs)
        note = "" if complete else f"not all joined: {[r['joined'] for r in runs]}"
        goal = ("≤ 5 s", "<=", 5.0) if size == 500 else None
        rows += [
            row("scale", f"{size} nodes: time until all joined (from spawning)", "s", pick("all_joined_s"), goal=goal,
                note=note),
            row("scale", f"{size} nodes: time until all resolved a name", "s", pick("all_resolved_s")),
            row("scale", f"{size} nodes: one node's spawn→joined, median of nodes", "s",
                pick("node_spawn_to_joined_p50_s")),
            row("scale", f"{size} nodes: broker CPU while they join", "cpu-s", pick("broker_cpu_s")),
            row("scale", f"{size} nodes: all nodes' CPU until all joined (process start + join)", "cpu-s",
                pick("nodes_cpu_s")),
            row("scale", f"{size} nodes: broker RSS with all joined", "KiB", pick("broker_rss_kib")),
            row("scale", f"{size} nodes: node RSS (median of nodes)", "KiB",
                [statistics.median(r["node_rss_kib"]) if r["node_rss_kib"] else None for r in runs],
                goal=("≤ 25 MiB", "<=", 25 * 1024)),
            row("scale", f"{size} nodes: node PSS (median; shared pages split)", "KiB",
                [statistics.median(r["node_pss_kib"]) if r["node_pss_kib"] else None for r in runs]),
        ]
        if agent:
            rows += [
                row("scale", f"{size} nodes: resolve latency p50 during the join storm", "us", pick("storm_p50_us")),
                row("scale", f"{size} nodes: resolve latency p99 during the join storm", "us", pick("storm_p99_us")),
                row("scale", f"{size} nodes: resolve latency p50 with all joined", "us", pick("steady_p50_us")),
                row("scale", f"{size} nodes: resolve latency p99 with all joined", "us", pick("steady_p99_us")),
            ]
    return rows, raw


def scale_run(ctx, lab, agent, hosts, launch, size, rep):
    o = ctx.options
    members = f"{lab.work}/scale-{size}-{rep}.members"
    if os.path.exists(members):
        os.unlink(members)
    counts = [size // len(hosts) + (1 if i < size % len(hosts) else 0) for i in range(len(hosts))]
    broker_before = cpu_seconds(lab.broker.pid)
    storm_probe = agent.start(f"{ctx.rtt} resolve srv 1000000 {o.storm_probe_seconds}", 60) if agent else None
    t0 = time.time_ns()
    launchers = []
    for k, (host, count) in enumerate(zip(hosts, counts)):
        if count == 0:
            continue
        name = f"scale-{size}-{rep}-{host}"
        # Each node's app resolves a mesh name once joined; without the shim it looks up localhost instead (never
        # a name the system resolver would send to DNS).
        target = "srv" if ctx.shim else "localhost"
        argv = ["/usr/bin/python3", launch, f"{lab.work}/{name}.nodes.log", str(count), f"s{size}r{rep}h{k}", "--",
                *lab.node_argv("{name}", [ctx.rtt, "member", members, target])]
        launchers.append((lab.spawn(host, argv, name), name))
    timeout = 30 + 0.2 * size
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        lines = read_lines(members)
        if len(lines) >= size:
            break
        time.sleep(0.05)
    broker_after = cpu_seconds(lab.broker.pid)
    broker_memory = memory_kib(lab.broker.pid)
    pids, spawned = [], {}
    for _, name in launchers:
        data = last_json(open(f"{lab.work}/{name}.out", errors="replace").read()) or {}
        pids += data.get("pids", [])
        spawned.update(zip(data.get("names", []), data.get("spawned_ns", [])))
    memories = [memory_kib(pid) for pid in pids]
    node_cpu = [cpu_seconds(pid) for pid in pids]
    # Each node's own time from its spawn to the start of its app (the app starts right after the join).
    own = sorted((int(parts[1]) - spawned[parts[0]]) / 1e9 for parts in lines if parts[0] in spawned)
    storm = steady = None
    if agent:
        storm = last_json(agent.wait(storm_probe, 60)[1])
        steady = last_json(agent.run(f"{ctx.rtt} resolve srv {o.steady_probe_count}", 60)[1])
    for process, _ in launchers:
        lab.stop(process, timeout=25)
    starts = [int(parts[1]) for parts in lines]
    resolved = [int(parts[2]) for parts in lines if parts[3] == "0"]
    time.sleep(1)  # the broker frees the leavers
    return {
        "size": size, "hosts": len(launchers), "joined": len(lines), "resolved": len(resolved),
        "all_joined_s": (max(starts) - t0) / 1e9 if len(lines) >= size else None,
        "first_joined_s": (min(starts) - t0) / 1e9 if starts else None,
        "all_resolved_s": (max(resolved) - t0) / 1e9 if len(resolved) >= size else None,
        "node_spawn_to_joined_p50_s": own[len(own) // 2] if own else None,
        "node_spawn_to_joined_max_s": own[-1] if own else None,
        "nodes_cpu_s": sum(c for c in node_cpu if c is not None),
        "broker_cpu_s": broker_after - broker_before if None not in (broker_before, broker_after) else None,
        "broker_rss_kib": broker_memory.get("VmRSS"), "broker_hwm_kib": broker_memory.get("VmHWM"),
        "node_rss_kib": [m["VmRSS"] for m in memories if "VmRSS" in m],
        "node_pss_kib": [m["Pss"] for m in memories if "Pss" in m],
        "node_pss_anon_kib": [m["Pss_Anon"] for m in memories if "Pss_Anon" in m],
        "storm_p50_us": storm and storm.get("p50_us"), "storm_p99_us": storm and storm.get("p99_us"),
        "storm_count": storm and storm.get("count"),
        "steady_p50_us": steady and steady.get("p50_us"), "steady_p99_us": steady and steady.get("p99_us"),
    }


def read_lines(path):
    try:
        with open(path) as f:
            return [line.split() for line in f if len(line.split()) == 4]
    except OSError:
        return []


# ---- case 5: upgrade --------------------------------------------------------------------------------------------


def set_punch_block(lab, on):
    """Drops TCP between function 1 and NAT 2's public address in NAT 1's forwarding path, both ways: no punch can
    get through, while both functions still reach the broker (so the relay works)."""
    action = "-I" if on else "-D"
    for match in (["-s", nat_public(2)], ["-d", nat_public(2)]):
        rule = ["FORWARD", "-p", "tcp"] + match + ["-j", "DROP"]
        lab.iptables("nat1", [action] + (rule[:1] + ["1"] + rule[1:] if on else rule))


def upgrade(ctx):
    """A connection opened while punching is blocked comes up relayed; after `hold` seconds the block is lifted
    ("punching becomes possible") and we time until the broker's tap reports the connection's upgrade to a direct
    link (KIND_UPGRADE, stamped by the broker), then until both apps hold the direct socket (KIND_HANDOFF from each
    side). The app pings all along (rtt watch), so the JSON also shows the RTT the app saw on each path; then it
    moves bulk on the same connection, while both nodes' CPU is measured. The result depends on where the node's
    retry backoff is (1 s, then doubling) when the block is lifted: the hold is part of the result."""
    if not ctx.relay or not ctx.shim:
        why = UPGRADE_MISSING if ctx.shim else f"not available: {ctx.shim_note}"
        return [row("upgrade", "time from punching possible to connection on the direct path", "s", available=False,
                    note=why)], {"available": False, "why": why}
    lab, o = ctx.lab, ctx.options
    tap_tool = os.path.join(ctx.root, "Tests", "tools", "tap_subscriber.py")
    tap = lab.spawn("broker", ["/usr/bin/python3", tap_tool, "tcp://127.0.0.1:7701", "default", lab.secret], "tap")
    lab.wait_log("tap", ["subscribed to"], 30)
    hold, bulk_seconds = o.upgrade_hold_seconds, 3
    watch_seconds = hold + 8  # pings until the upgrade and the handoffs are long done; then the bulk
    runs = []
    try:
        for rep in range(o.scale_reps):
            name = f"up{rep}"
            set_punch_block(lab, True)
            blocked = True
            node = lab.spawn("fn2", lab.node_argv(name, [ctx.rtt, "watch", "srv", str(MESH_ECHO), str(watch_seconds),
                                                         str(bulk_seconds)], ["--log-level", "info"]), name)
            try:
                started = time.monotonic()
                opened = wait_tap(lab, lambda e: e.get("kind") == "KIND_OPEN" and sender(e) == name, 20)
                if not opened:
                    raise BenchError(f"{name}: no connection opened (node log: {tail(read(f'{lab.work}/{name}.log'))})")
                connection = opened.get("connection_id")
                if opened.get("path") != "PATH_RELAY":
                    raise BenchError(f"{name}: came up on {opened.get('path')} although punching was blocked")
                time.sleep(hold)
                lifted_ms = time.time_ns() / 1e6
                set_punch_block(lab, False)
                blocked = False
                upgraded = wait_tap(lab, lambda e: e.get("kind") == "KIND_UPGRADE"
                                    and e.get("connection_id") == connection, 40)
                handoffs = [wait_tap(lab, lambda e, side=side: e.get("kind") == "KIND_HANDOFF"
                                     and e.get("connection_id") == connection and e.get("handoff_side") == side, 5)
                            for side in ("connecting", "accepting")] if upgraded else []
                taken = [h for h in handoffs if h and not h.get("handoff_declined")]
                # Both nodes' CPU while the app moves bulk on the connection (it starts watch_seconds after it did).
                bulk_at = started + watch_seconds
                time.sleep(max(0.0, bulk_at + 0.3 - time.monotonic()))
                pids = [node.pid, lab.srv.pid]
                cpu_before, cpu_start = [cpu_seconds(pid) for pid in pids], time.monotonic()
                time.sleep(bulk_seconds - 0.6)
                cpu_after, cpu_end = [cpu_seconds(pid) for pid in pids], time.monotonic()
                node.wait(timeout=bulk_seconds + 20)
                measured = None not in cpu_before + cpu_after
                result = {"hold_s": hold, "opened_ms": int(opened["time"]), "lifted_ms": lifted_ms,
                          "upgraded_ms": upgraded and int(upgraded["time"]),
                          "upgrade_s": upgraded and (int(upgraded["time"]) - lifted_ms) / 1000,
                          "handoffs": [h and {k: h.get(k) for k in ("handoff_side", "handoff_declined", "reason", "time")}
                                       for h in handoffs],
                          "handed_off_ms": max(int(h["time"]) for h in taken) if len(taken) == 2 else None,
                          "bulk_nodes_cpu_pct": 100 * (sum(cpu_after) - sum(cpu_before)) / (cpu_end - cpu_start)
                          if measured else None}
            finally:
                if blocked:
                    set_punch_block(lab, False)
                lab.stop(node)
            lines = json_lines(read(f"{lab.work}/{name}.out"))
            buckets = [(b["bucket_ms"], b["p50_us"]) for b in lines if "bucket_ms" in b]
            bulk = next((b for b in lines if "bulk_mbps" in b), {})
            # After the switch: from both handoffs on (or from the upgrade, where an app kept the node's copy loop).
            switched = result["handed_off_ms"] or result["upgraded_ms"]
            before = [b[1] for b in buckets if b[0] < result["lifted_ms"] - 100]
            after = [b[1] for b in buckets if switched and b[0] > switched + 100]
            result.update({"app_rtt_relayed_p50_us": statistics.median(before) if before else None,
                           "app_rtt_direct_p50_us": statistics.median(after) if after else None,
                           "bulk_mbps": bulk.get("bulk_mbps") if switched and bulk.get("bulk_start_ms", 0) > switched
                           else None,
                           "app_watch": buckets})
            if lab.agent:  # the same paced pings and bulk on a connection that was direct from the start
                status, out, _ = lab.agent.run(f"{ctx.rtt} watch srv {MESH_ECHO} 1.5 {bulk_seconds}", 30)
                paced = [b["p50_us"] for b in json_lines(out) if "p50_us" in b]
                result["direct_from_start_p50_us"] = statistics.median(paced) if paced else None
                result["direct_from_start_bulk_mbps"] = next((b["bulk_mbps"] for b in json_lines(out)
                                                              if "bulk_mbps" in b), None)
            runs.append(result)
            log(f"  upgrade rep {rep + 1}: {result['upgrade_s']} s after the block was lifted "
                f"(held {hold} s); handoffs {result['handoffs']}; app RTT relayed {result['app_rtt_relayed_p50_us']} µs, "
                f"after {result['app_rtt_direct_p50_us']} µs (direct from the start "
                f"{result.get('direct_from_start_p50_us')} µs); bulk {result['bulk_mbps']} Mbit/s "
                f"(direct from the start {result.get('direct_from_start_bulk_mbps')}), nodes' CPU meanwhile "
                f"{result['bulk_nodes_cpu_pct']} %")
    finally:
        lab.stop(tap)
    times = [r["upgrade_s"] for r in runs]
    note = "" if all(t is not None for t in times) else f"{times.count(None)} run(s) never upgraded within 40 s"
    handed = [sum(1 for h in r["handoffs"] if h and not h.get("handoff_declined")) for r in runs]
    declined = sorted({h.get("reason") for r in runs for h in r["handoffs"] if h and h.get("handoff_declined")})
    return [
        row("upgrade", f"time from punching possible to direct path (tap; relayed {hold} s before)", "s", times,
            note=note),
        row("upgrade", "apps that took the direct socket after the upgrade (of 2 per run; tap)", "count", handed,
            goal=("both (issue 14)", ">=", 2), note="declined: " + "; ".join(declined) if declined else ""),
        row("upgrade", "app's 1 KiB RTT while relayed (a ping every ms; p50)", "us",
            [r["app_rtt_relayed_p50_us"] for r in runs]),
        row("upgrade", "app's 1 KiB RTT after the upgrade and handoff (same connection), vs direct from the start", "us",
            [r["app_rtt_direct_p50_us"] for r in runs], [r.get("direct_from_start_p50_us") for r in runs],
            "direct", goal=("≤ 1.05x direct (issue 14)", "<=", 1.05)),
        row("upgrade", "app's bulk echo after the upgrade and handoff (same connection), vs direct from the start",
            "bit/s", [r["bulk_mbps"] and r["bulk_mbps"] * 1e6 for r in runs],
            [r.get("direct_from_start_bulk_mbps") and r["direct_from_start_bulk_mbps"] * 1e6 for r in runs], "direct",
            goal=("≥ 0.95x direct (issue 14)", ">=", 0.95)),
        row("upgrade", "both nodes' CPU during that bulk (% of one core)", "%", [r["bulk_nodes_cpu_pct"] for r in runs],
            goal=("≈ 0 (issue 14; read as ≤ 1 %)", "<=", 1)),
    ], {"runs": runs}


def json_lines(text):
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def sender(event):
    return (event.get("from") or {}).get("name")


def wait_tap(lab, match, timeout):
    """The first connection event on the tap (tap_subscriber.py's JSON lines) that matches, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in json_lines(read(f"{lab.work}/tap.out")):
            connection = event.get("connection")
            if connection and match(connection):
                return dict(connection, time=event.get("time_unix_ms"))
        time.sleep(0.05)
    return None


# ---- case 6: footprint -- a node inside function-sized limits -------------------------------------------------


def footprint(ctx):
    """A node in a function of each size (`lab up --function-memory`: CPU share, memory limit, uid 65534,
    read-only root), its app `sleep`: spawn to joined (from starting `lab exec` to the node's "joined mesh"
    line), peak RSS, and CPU while idle (joined, no connections) as a share of one vCPU."""
    o = ctx.options
    rows, raw = [], {}
    for size in o.function_sizes:
        prefix = o.prefix + "f"
        lab = Lab(o.footprint_binary or ctx.binary, prefix, os.path.join(ctx.work, f"{prefix}{size}"), 1,
                  function_memory=size)
        ctx.labs.append(lab)
        log(f"lab {prefix}: up, one function of {size} MB")
        runs = []
        try:
            lab.up()
            for rep in range(o.reps):
                runs.append(footprint_run(lab, size, rep, o.idle_seconds))
                r = runs[-1]
                log(f"  footprint {size} MB rep {rep + 1}: joined {r['spawn_to_joined_s'] * 1000:.0f} ms after spawn, "
                    f"peak RSS {r['peak_rss_kib'] / 1024:.1f} MiB, idle CPU {r['idle_cpu_percent']:.2f} %")
        finally:
            lab.down()
            ctx.labs.remove(lab)
        raw[str(size)] = runs
        pick = lambda key: [r[key] for r in runs]  # noqa: E731
        joined_goal = {128: ("≤ 500 ms", "<=", 0.5), 512: ("≤ 150 ms", "<=", 0.15)}.get(size)
        rows += [
            row("footprint", f"{size} MB function: node spawn→joined", "s", pick("spawn_to_joined_s"),
                goal=joined_goal),
            row("footprint", f"{size} MB function: node peak RSS (VmHWM)", "KiB", pick("peak_rss_kib"),
                goal=("≤ 12 MiB", "<=", 12 * 1024)),
            row("footprint", f"{size} MB function: node PSS (shared pages split)", "KiB", pick("pss_kib")),
            row("footprint", f"{size} MB function: idle node CPU (% of one vCPU)", "%", pick("idle_cpu_percent"),
                goal=("≤ 0.2 %", "<=", 0.2)),
        ]
    return rows, raw


def footprint_run(lab, size, rep, idle_seconds):
    name = f"fp{size}x{rep}"
    started = time.monotonic()
    node = lab.spawn("fn1", lab.node_argv(name, ["sleep", "3600"]), name)
    path = f"{lab.work}/{name}.log"
    while "joined mesh" not in read(path):
        if node.poll() is not None or time.monotonic() - started > 30:
            raise BenchError(f"node {name} in a {size} MB function did not join: {tail(read(path))}")
        time.sleep(0.002)
    joined = time.monotonic() - started
    time.sleep(1)  # past the start: the first warm endpoint, the app's launch
    cpu_before = cpu_seconds(node.pid)
    time.sleep(idle_seconds)
    cpu_after = cpu_seconds(node.pid)
    memory = memory_kib(node.pid)
    lab.stop(node)
    if cpu_before is None or cpu_after is None or "VmHWM" not in memory:
        raise BenchError(f"node {name} exited while idle ({cpu_before}, {cpu_after}, {memory}): {tail(read(path))}")
    return {"spawn_to_joined_s": round(joined, 4), "peak_rss_kib": memory["VmHWM"], "rss_kib": memory["VmRSS"],
            "pss_kib": memory.get("Pss"), "idle_cpu_percent": round(100 * (cpu_after - cpu_before) / idle_seconds, 3)}


# ---- case 7: a connection-per-request app ---------------------------------------------------------------------


def redis_rps(text):
    """{"SET": rps, "GET": rps} from redis-benchmark --csv, or None."""
    found = {row[0]: float(row[1]) for row in csv.reader(text.splitlines()) if len(row) >= 2 and row[0] in ("SET", "GET")}
    return found if len(found) == 2 else None


def redis_per_request(ctx):
    """Unmodified redis-benchmark -k 0 (a new connection for every request, 8 clients, SET and GET) from A to an
    unmodified redis-server on B: through the mesh (both under nodes, by mesh name "cache"; the benchmark in a fresh
    node each run) against the same benchmark over the raw path (a second redis-server beside it, through NAT 1's
    port forward), interleaved. A run that does not finish within its timeout counts as a hang."""
    if not ctx.shim:
        return [row("redis", "redis-benchmark -k 0 through the mesh", "count", available=False,
                    note=f"not available: {ctx.shim_note}")], {"available": False}
    lab, o = ctx.lab, ctx.options
    requests = 1000 if o.quick else 3000
    server = ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--port"]
    mesh_server = lab.node("fn1", "cache", server + [str(REDIS_MESH)])
    raw_server = lab.spawn("fn1", server + [str(REDIS_RAW)], "redis-raw")
    lab.port_forward(1, REDIS_RAW, "10.1.1.2")
    for name in ("cache", "redis-raw"):
        deadline = time.monotonic() + 15
        while "Ready to accept connections" not in read(f"{lab.work}/{name}.out"):
            if time.monotonic() > deadline:
                raise BenchError(f"{name} did not start: {tail(read(f'{lab.work}/{name}.out'))}")
            time.sleep(0.1)
    # As redis-benchmark asks for with keep-alive off: without it the raw runs' client runs out of ports (every
    # connection leaves one in TIME_WAIT for a minute) and fails from the second or third run on. A port in
    # TIME_WAIT is reused only a second later, and connect() draws from half of the range: two raw runs back to
    # back (the rotation makes that) need 12,000 of them, more than the default range's half holds.
    status, _, err = lab.run("fn2", ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
                                     "net.ipv4.ip_local_port_range=10240 65535"], 10)
    if status != 0:
        raise BenchError(f"cannot set tcp_tw_reuse and the local port range in fn2: {err.strip()}")
    rps = {v: {"SET": [], "GET": []} for v in ("raw", "mesh")}
    failures, hangs = [], 0
    paths = {}  # the benchmark's node's links, by path, and how many took a spare
    timeout = 120
    try:
        for rep in range(o.reps):
            for variant in rotated(["raw", "mesh"], rep):
                host, port = ("cache", REDIS_MESH) if variant == "mesh" else (nat_public(1), REDIS_RAW)
                argv = ["redis-benchmark", "-h", host, "-p", str(port), "-k", "0", "-c", "8", "-n", str(requests),
                        "-t", "set,get", "--csv"]
                if variant == "mesh":
                    argv = lab.node_argv(f"rb{rep}", argv, ["--log-level", "info"])
                status, out, err = lab.run("fn2", argv, timeout)
                if variant == "mesh":
                    for path, n in link_paths(err).items():
                        paths[path] = paths.get(path, 0) + n
                result = redis_rps(out) if status == 0 else None
                if status == 124:
                    hangs += 1
                if not result:
                    failures.append(f"{variant}: status {status}: {tail(out)} {tail(err)}")
                    log(f"  redis {variant}: run failed: {failures[-1]}")
                for test in ("SET", "GET"):
                    rps[variant][test].append(result and result[test])
                log(f"  redis rep {rep + 1} {variant}: {result}")
    finally:
        lab.stop(mesh_server)
        lab.stop(raw_server)
    rows = []
    for test in ("SET", "GET"):
        rows.append(row("redis", f"redis-benchmark -k 0 -c 8 {test}, raw path (baseline)", "count", rps["raw"][test]))
        rows.append(row("redis", f"redis-benchmark -k 0 -c 8 {test} through the mesh (requests/s)", "count",
                        rps["mesh"][test], rps["raw"][test], "raw", goal=("≥ 0.8x raw", ">=", 0.8),
                        note="; ".join(n for n in (f"{hangs} run(s) hung ({timeout} s)" if hangs else retry_note(failures),
                                                    spare_note(paths)) if n)))
    return rows, {"requests": requests, "clients": 8, "rps": rps, "failures": failures, "hangs": hangs,
                  "link_paths": paths}



# ---- case 8: relayed against direct inside the smallest function ----------------------------------------------


def function_relay(ctx):
    """Issue 14: iperf3 between two 128 MB functions (`lab up --function-memory 128`: 0.07 vCPU each, memory limit,
    600 Mbit/s, uid 65534), server and clients under nodes inside the functions: relayed (--path relay) against
    direct (--path direct) and the raw path (NAT 1's port forward, no nodes), interleaved, in one lab. The server's
    node is long-lived: its CPU per relayed GB is the accepting side's cost inside the function. "upgraded": a
    connection that comes up relayed (punching blocked) and is upgraded 1 s later, after which each app takes the
    direct socket (handoff); iperf3 omits the first UPGRADE_OMIT seconds, so what it reports is after the switch.
    "spliced": relayed with --relay-splice on both nodes, so the connection moves onto the broker's splice port at
    once and each app takes that socket."""
    if not ctx.relay or not ctx.shim:
        return [row("fnrelay", "relayed vs direct in 128 MB functions", "bit/s", available=False,
                    note=RELAY_MISSING if ctx.shim else f"not available: {ctx.shim_note}")], {"available": False}
    o, size = ctx.options, 128
    seconds, omit = (4, 1) if o.quick else (8, 2)
    prefix = o.prefix + "r"
    lab = Lab(ctx.binary, prefix, os.path.join(ctx.work, prefix), 2, function_memory=size)
    ctx.labs.append(lab)
    log(f"lab {prefix}: up, two functions of {size} MB")
    variants = ["raw", "direct", "relayed", "upgraded"] + (["spliced"] if ctx.splice else [])
    bps = {v: [] for v in variants}
    server_cpu = {"relayed": [], "spliced": []}  # per run: the server node's CPU seconds and the bytes moved
    handoffs = []  # per upgraded run: how many of iperf3's two connections the client's app took over
    failures = {v: [] for v in variants}
    try:
        lab.up()
        iperf_server = ["iperf3", "-s", "--rcv-timeout", "5000", "-p"]
        server = lab.spawn("fn1", lab.node_argv("srv", iperf_server + [str(MESH_IPERF)],
                                                ["--log-level", "info"] + (["--relay-splice"] if ctx.splice else [])), "srv")
        lab.spawn("fn1", iperf_server + [str(RAW_IPERF)], "raw-iperf3")
        lab.port_forward(1, RAW_IPERF, "10.1.1.2")
        lab.allow_forwarded(1)
        lab.wait_log("srv", ["joined mesh"], 30)
        time.sleep(1)  # both iperf3 servers listening
        for rep in range(o.reps):
            for variant in rotated(variants, rep):
                args = ["-t", str(seconds), "-O", str(UPGRADE_OMIT if variant == "upgraded" else omit), "-J"]
                if variant == "raw":
                    argv = ["iperf3", "-c", nat_public(1), "-p", str(RAW_IPERF)] + args
                else:
                    path = {"direct": "direct", "relayed": "relay", "upgraded": "auto", "spliced": "relay"}[variant]
                    options = {"upgraded": ["--upgrade-max-interval", "1"], "spliced": ["--relay-splice"]}.get(variant, [])
                    argv = lab.node_argv(f"c{rep}{variant}", ["iperf3", "-c", "srv", "-p", str(MESH_IPERF)] + args,
                                         ["--path", path, "--log-level", "info"] + options)
                before = cpu_seconds(server.pid)
                if variant == "upgraded":
                    status, out, err = upgraded_run(lab, argv, seconds + UPGRADE_OMIT + 30)
                    held = err.count(HANDOFF_TAKEN)
                    handoffs.append(held)
                    if held < 2:
                        log(f"  fnrelay upgraded: the client's apps took {held} direct socket(s) of 2")
                else:
                    status, out, err = lab.run("fn2", argv, seconds + omit + 30)
                after = cpu_seconds(server.pid)
                value, error = iperf_bps(out)
                if not value:
                    failures[variant].append(f"status {status}: {error or tail(err)}")
                    log(f"  fnrelay {variant}: run failed: {failures[variant][-1]}")
                    time.sleep(2)  # let the server end the broken test
                bps[variant].append(value)
                if variant in server_cpu and value and None not in (before, after):
                    server_cpu[variant].append({"cpu_s": after - before, "bytes": iperf_bytes(out)})
                log(f"  fnrelay rep {rep + 1} {variant}: {(value or 0) / 1e6:.0f} Mbit/s")
    finally:
        lab.down()
        ctx.labs.remove(lab)
    per_gb = {v: [c["cpu_s"] / (c["bytes"] / 1e9) for c in runs if c["bytes"]] for v, runs in server_cpu.items()}
    rows = [
        row("fnrelay", f"{size} MB functions: raw TCP via port-forward (baseline)", "bit/s", bps["raw"],
            note=failed_note(failures["raw"])),
        row("fnrelay", f"{size} MB functions: mesh direct", "bit/s", bps["direct"], bps["raw"], "raw",
            note=failed_note(failures["direct"])),
        row("fnrelay", f"{size} MB functions: mesh relayed vs direct", "bit/s", bps["relayed"], bps["direct"],
            "direct", goal=("≥ 0.9x direct", ">=", 0.9), note=failed_note(failures["relayed"])),
        row("fnrelay", f"{size} MB functions: accepting node, CPU-s per relayed GB", "s", per_gb["relayed"],
            goal=("≤ 0.3", "<=", 0.3)),
        row("fnrelay", f"{size} MB functions: relayed, upgraded 1 s in and handed to the apps, vs direct (after "
            f"{UPGRADE_OMIT} s)", "bit/s", bps["upgraded"], bps["direct"], "direct", goal=("≥ 0.9x direct", ">=", 0.9),
            note="; ".join(filter(None, [failed_note(failures["upgraded"]),
                                         f"client's handoffs per run (of 2): {handoffs}"]))),
    ]
    if ctx.splice:
        rows += [
            row("fnrelay", f"{size} MB functions: mesh spliced (--relay-splice) vs direct", "bit/s", bps["spliced"],
                bps["direct"], "direct", goal=("≥ 0.9x direct", ">=", 0.9), note=failed_note(failures["spliced"])),
            row("fnrelay", f"{size} MB functions: accepting node, CPU-s per spliced GB", "s", per_gb["spliced"],
                goal=("≤ 0.3", "<=", 0.3)),
        ]
    server_handoffs = read(f"{lab.work}/srv.log").count(HANDOFF_TAKEN)
    return rows, {"function_memory": size, "seconds": seconds, "omit": omit, "upgrade_omit": UPGRADE_OMIT,
                  "bits_per_second": bps, "server_node_cpu": server_cpu, "failures": failures,
                  "client_handoffs": handoffs, "server_handoffs_total": server_handoffs}


UPGRADE_OMIT = 4  # seconds iperf3 leaves out of an upgraded run: relayed 1 s, the upgrade, both handoffs
HANDOFF_TAKEN = "the app holds the direct socket"


def upgraded_run(lab, argv, timeout):
    """Runs argv (a node with iperf3) on fn2 with punching blocked, lifted 1 s after the connection came up on the
    relay; returns (status, stdout, the node's stderr)."""
    name = "upgraded"
    set_punch_block(lab, True)
    blocked = True
    try:
        process = lab.spawn("fn2", argv, name)
        try:
            lab.wait_log(name, ["path=relay"], 20)
        except BenchError as error:
            lab.stop(process)
            return 125, "", f"no relayed connection: {error}"
        time.sleep(1)
        set_punch_block(lab, False)
        blocked = False
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            lab.stop(process)
            status = 124
    finally:
        if blocked:
            set_punch_block(lab, False)
    return status, read(f"{lab.work}/{name}.out"), read(f"{lab.work}/{name}.log")
