#!/usr/bin/env bash
# The README's demo. A broker on the lab's public host and functions behind their own NATs:
#   1. two nodes print their mesh name and address and resolve each other by name;
#   2. an unmodified redis-server runs in one function, an unmodified redis-benchmark in another reaches it by
#      its mesh name "cache" over a direct punched link; the tap shows the connections and their path.
# Without root (no network namespaces) the same runs on loopback, and it says so (BOXER_DEMO_LOOPBACK=1 forces it).
# In the lab each function is a Lambda of BOXER_DEMO_FUNCTION_MEMORY MB (default 512: its CPU share, memory limit,
# 600 Mbit/s, uid 65534, read-only root; see `boxer-mesh lab up --help`); 0 runs them without limits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build 2>&1 | tail -1  # the preload shim too
bin="$(swift build --show-bin-path)/boxer-mesh"
work=$(mktemp -d)
head -c 32 /dev/urandom | base64 > "$work/secret"
export BOXER_MESH_SECRET=$(cat "$work/secret")
pids=()
prefix=demo

cleanup() {
    # A background `run` is a subshell: end its child (the real process) as well as the subshell itself.
    for pid in "${pids[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $lab == yes ]]; then "$bin" lab down --prefix "$prefix" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

lab=no
[[ $(id -u) -eq 0 && -z "${BOXER_DEMO_LOOPBACK:-}" ]] && lab=yes
if [[ $lab == yes ]]; then
    memory=${BOXER_DEMO_FUNCTION_MEMORY:-512}
    [[ $memory =~ ^[0-9]+$ ]] || { echo "BOXER_DEMO_FUNCTION_MEMORY must be a number of MB (0: no limits)" >&2; exit 2; }
    limits=()
    [[ $memory -gt 0 ]] && limits=(--function-memory "$memory")
    echo "== NAT lab: broker on 203.0.113.10; fn1 and fn2 each behind its own port-preserving NAT" \
        "$([[ $memory -gt 0 ]] && echo "and each a $memory MB function")"
    "$bin" lab up --prefix "$prefix" --functions 2 --nat easy "${limits[@]}"
    run() { local host=$1; shift; "$bin" lab exec --prefix "$prefix" "$host" -- "$@"; }
    broker=203.0.113.10
    listen=(--listen 0.0.0.0:7700)
else
    echo "== not root: no network namespaces, so this runs on loopback without NATs"
    run() { shift; "$@"; }
    broker=127.0.0.1:17700
    listen=(--listen 127.0.0.1:17700 --stun-port 13478)
fi

run broker "$bin" broker "${listen[@]}" >"$work/broker.log" 2>&1 &
pids+=($!)
run broker "$bin" tap --broker "$broker" >"$work/tap.log" 2>"$work/tap.err" &
pids+=($!)
# From "watching mesh" on, the tap misses no event (the broker answered its subscription).
for _ in $(seq 100); do grep -q "watching mesh" "$work/tap.err" && break; sleep 0.1; done

echo
echo "== 1. names: each app prints who it is and resolves the other by name"
app='echo "[$BOXER_MESH_NAME] I am $BOXER_MESH_NAME at $BOXER_MESH_IP in mesh $BOXER_MESH";
     echo "[$BOXER_MESH_NAME] $PEER resolves to $(getent hosts "$PEER" | cut -d" " -f1)"; sleep 1'
PEER=beta run fn1 "$bin" node --broker "$broker" --name alpha --wait-for 2 -- sh -c "$app" 2>/dev/null &
first=$!
PEER=alpha run fn2 "$bin" node --broker "$broker" --name beta --wait-for 2 -- sh -c "$app" 2>/dev/null
wait "$first"

echo
echo "== 2. unmodified redis-server in fn1 as 'cache'; unmodified redis-benchmark in fn2 connects to 'cache'"
run fn1 "$bin" node --broker "$broker" --name cache -- \
    redis-server --protected-mode no --port 6379 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q "Ready to accept" "$work/redis.log" && break; sleep 0.1; done
run fn2 "$bin" node --broker "$broker" --name bench -- \
    redis-benchmark -h cache -p 6379 -t set,get -n 20000 -c 10 -q 2>/dev/null | tr '\r' '\n' | grep "requests per second"

echo
echo "== 3. what the tap saw (joins, connections with their path and setup time, closes with bytes each way)"
sleep 0.5
grep -E "join|connect" "$work/tap.log" | head -6
echo "..."
grep -E " close " "$work/tap.log" | tail -2
echo "... $(grep -c ' connect ' "$work/tap.log") connections, $(grep -c ' close ' "$work/tap.log") closed"
if [[ $lab == yes && $memory -gt 0 ]]; then
    echo
    # Program files this machine had cached already are charged to whoever read them first, not to the function.
    echo "== 4. each function's memory: its cgroup's peak (the node's and app's own memory and /tmp) and limit hits"
    for i in 1 2; do
        cgroup=/sys/fs/cgroup/memory/boxer-mesh/$prefix-fn$i
        echo "fn$i: peak $(( $(cat "$cgroup/memory.max_usage_in_bytes") / 1048576 )) MiB of $memory MB," \
            "limit hit $(cat "$cgroup/memory.failcnt") times"
    done
fi
