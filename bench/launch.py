#!/usr/bin/python3
"""bench/launch.py LOG COUNT NAME_PREFIX -- NODE_ARGV... : the scale case's launcher, run inside one function host.

Starts COUNT `boxer-mesh node` processes at once, named NAME_PREFIX-1..COUNT (NODE_ARGV must contain the literal
{name} where the name goes), all logging to LOG. Prints {"pids", "names", "spawned_ns"} (spawn times, wall clock)
when all are started, then waits. On SIGTERM/SIGINT it sends SIGTERM to every node (they leave the mesh and stop
their apps), waits up to 15 s, then SIGKILLs what is left.
"""
import json
import os
import signal
import subprocess
import sys
import time

log_path, count, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
template = sys.argv[sys.argv.index("--") + 1:]
stopping = False


def stop(_number, _frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
log = open(log_path, "ab")
children, names, spawned = [], [], []
for i in range(1, count + 1):
    names.append(f"{prefix}-{i}")
    argv = [part.replace("{name}", names[-1]) for part in template]
    spawned.append(time.time_ns())
    children.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
print(json.dumps({"pids": [child.pid for child in children], "names": names, "spawned_ns": spawned}), flush=True)

while not stopping and any(child.poll() is None for child in children):
    time.sleep(0.1)
for child in children:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
deadline = time.monotonic() + 15
for child in children:
    try:
        child.wait(timeout=max(0.01, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
