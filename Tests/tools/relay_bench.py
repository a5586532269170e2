#!/usr/bin/python3
"""Benchmark (not a test): one relayed stream through the broker vs. `socat -b 262144` relaying on the broker host.

    relay_bench.py BOXER_MESH [--seconds S] [--runs N] [--prefix P] [--window-kib K]

Builds a NAT lab with hard NATs (so punching fails and the mesh relays), starts a broker and a server node, then
alternates runs of the same sender and sink (Tests/tools/relay_app.py `bench`, which only sends a fixed buffer):
  relay  fn2 node -> broker relay (ZeroMQ) -> fn1 node
  socat  fn2 -> socat -b 262144 on the broker host -> fn1 (both ends dial the broker, as they must behind NATs)
  chain  fn2 -> socat on fn2 -> socat on the broker host -> socat on fn1 -> fn1: the same four TCP hops as the
         relay (app <-> its node on loopback, node <-> broker through the NATs), every hop relayed by socat
and prints every run and the median ratios relay/socat and chain/socat: the chain shows what the relay's extra
hops cost by themselves on this machine. Root only; removes the lab at the end.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
app = os.path.join(here, "relay_app.py")
parser = argparse.ArgumentParser()
parser.add_argument("binary")
parser.add_argument("--seconds", type=float, default=5)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--prefix", default="rlx")
parser.add_argument("--window-kib", type=int, default=1024)
args = parser.parse_args()
binary, prefix = os.path.abspath(args.binary), args.prefix


def ns(host, *command, **kwargs):
    return ["ip", "netns", "exec", f"{prefix}-{host}", *command]


def cpu_seconds(pid):
    """User + system CPU time of a process and all its threads so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def moved(output):
    found = re.search(r"bench: ([0-9]+) bytes", output)
    return int(found.group(1)) if found else 0


def mbps(output):
    found = re.search(r"= ([0-9.]+) MB/s", output)
    return float(found.group(1)) if found else None


def socat_run(run, name, relays, sink_at, source_at):
    """One run of the raw sender and sink through socat relays (started first); returns the sender's output and the
    first relay's CPU seconds."""
    socats = [subprocess.Popen(command) for command in relays]
    time.sleep(0.3)
    sink = subprocess.Popen(ns("fn1", app, "raw-serve", *sink_at), stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(ns("fn2", app, "raw", *source_at, "bench", str(args.seconds)),
                         capture_output=True, text=True, timeout=args.seconds + 60)
    results[name].append(mbps(out.stdout))
    cpu = cpu_seconds(socats[0].pid)
    print(f"run {run + 1} {name}: {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]}", flush=True)
    sink.wait(timeout=10)
    for socat in socats:
        socat.wait(timeout=10)
    return out.stdout, cpu


work = tempfile.mkdtemp(prefix="relay-bench-")
secret = os.path.join(work, "secret")
open(secret, "w").write("bench-secret\n")
subprocess.run([binary, "lab", "up", "--prefix", prefix, "--functions", "2", "--nat", "hard"], check=True, stdout=subprocess.DEVNULL)
processes = []
try:
    broker = subprocess.Popen(
        ns("broker", binary, "broker", "--secret-file", secret, "--relay-window-kib", str(args.window_kib)),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "broker.log"), "w"))
    processes.append(broker)
    time.sleep(1)
    server = subprocess.Popen(
        ns("fn1", binary, "node", "--broker", "203.0.113.10", "--name", "srv", "--secret-file", secret, "--no-shim", "--",
           app, "serve", "5000"),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "srv.log"), "w"))
    processes.append(server)
    time.sleep(3)
    results = {"relay": [], "socat": [], "chain": []}
    # CPU seconds the middle host spends per GB relayed: the broker's vs socat's.
    costs = {"relay": [], "socat": []}
    for run in range(args.runs):
        before = cpu_seconds(broker.pid)
        out = subprocess.run(
            ns("fn2", binary, "node", "--broker", "203.0.113.10", "--name", f"bench{run}", "--secret-file", secret,
               "--no-shim", "--", app, "client", "srv", "5000", "bench", str(args.seconds)),
            capture_output=True, text=True, timeout=args.seconds + 60)
        results["relay"].append(mbps(out.stdout))
        if moved(out.stdout):
            costs["relay"].append((cpu_seconds(broker.pid) - before) / (moved(out.stdout) / 1e9))
        print(f"run {run + 1} relay: {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]}", flush=True)
        broker_socat = ns("broker", "socat", "-b", "262144", "TCP-LISTEN:6001,reuseaddr", "TCP-LISTEN:6002,reuseaddr")
        socat_out, socat_cpu = socat_run(run, "socat", [broker_socat], ("203.0.113.10", "6001"), ("203.0.113.10", "6002"))
        if moved(socat_out):
            costs["socat"].append(socat_cpu / (moved(socat_out) / 1e9))
        # The chain: a local socat in each function in front of the broker's, as a node is in front of the relay.
        socat_run(run, "chain", [
            broker_socat,
            ns("fn1", "socat", "-b", "262144", "TCP-LISTEN:7001,bind=127.0.0.1,reuseaddr", "TCP:203.0.113.10:6001"),
            ns("fn2", "socat", "-b", "262144", "TCP-LISTEN:7002,bind=127.0.0.1,reuseaddr", "TCP:203.0.113.10:6002"),
        ], ("127.0.0.1", "7001"), ("127.0.0.1", "7002"))
    relay = statistics.median(r for r in results["relay"] if r)
    socat = statistics.median(r for r in results["socat"] if r)
    chained = statistics.median(r for r in results["chain"] if r)
    print(f"median relay {relay:.1f} MB/s, socat -b 262144 {socat:.1f} MB/s, ratio {relay / socat:.2f}")
    print(f"median socat chain with the relay's four hops {chained:.1f} MB/s, ratio chain/socat {chained / socat:.2f}, "
          f"relay/chain {relay / chained:.2f}")
    print(f"middle host CPU per GB: broker {statistics.median(costs['relay']):.2f} s, socat {statistics.median(costs['socat']):.2f} s")
finally:
    for process in processes:
        process.kill()
    subprocess.run([binary, "lab", "down", "--prefix", prefix], stdout=subprocess.DEVNULL)
