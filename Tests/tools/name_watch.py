#!/usr/bin/env python3
"""Tests/tools/name_watch.py NAME SECONDS: an unmodified program's view of a name, run as a node's app (with the
shim). Looks NAME up with socket.getaddrinfo every 2 ms and prints one line per change of answer:

    change ANSWER FIRST_NS LAST_OLD_NS

ANSWER is the address or "none" (not found, or any resolver error), FIRST_NS when the first lookup that gave it
started, LAST_OLD_NS when the last lookup that still gave the previous answer started (CLOCK_REALTIME, shared by
the lab's namespaces). `getent hosts NAME` (another unmodified program, a child of this one) runs once the name
resolves and once it stopped: lines "getent-found STATUS OUTPUT (SECONDS)" and "getent-gone STATUS OUTPUT (SECONDS)". Ends one second
after the name stopped resolving, or after SECONDS; then prints "lookups N p50_us P".
"""
import socket
import statistics
import subprocess
import sys
import time

name, seconds = sys.argv[1], float(sys.argv[2])


def lookup():
    try:
        return socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError:
        return "none"


def getent(label):
    began = time.monotonic()
    result = subprocess.run(["getent", "hosts", name], capture_output=True, text=True, timeout=30)
    print(label, result.returncode, result.stdout.strip() or "-", f"({time.monotonic() - began:.3f} s)", flush=True)


answer, last_start, durations = None, 0, []
seen_address = gone_at = None
end = time.monotonic() + seconds
while time.monotonic() < end and not (gone_at and time.monotonic() > gone_at + 1):
    start = time.time_ns()
    began = time.perf_counter_ns()
    now = lookup()
    durations.append((time.perf_counter_ns() - began) / 1000)
    if now != answer:
        print("change", now, start, last_start, flush=True)
        answer = now
        if now != "none" and not seen_address:
            seen_address = now
            getent("getent-found")
        elif now == "none" and seen_address and not gone_at:
            gone_at = time.monotonic()
            getent("getent-gone")
    last_start = start
    time.sleep(0.002)
print("lookups", len(durations), "p50_us", round(statistics.median(durations), 1), flush=True)
