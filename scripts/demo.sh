#!/usr/bin/env bash
# The README's demo: a broker on the lab's public host and two functions behind their own NATs; each app prints
# its mesh name and address and resolves the other by name. Without root (no namespaces) it runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build 2>&1 | tail -1
scripts/build-shim.sh >/dev/null
bin="$(swift build --show-bin-path)/boxer-mesh"
work=$(mktemp -d)
head -c 32 /dev/urandom | base64 > "$work/secret"
export BOXER_MESH_SECRET=$(cat "$work/secret")
pids=()
prefix=demo

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $(id -u) -eq 0 ]] && "$bin" lab down --prefix "$prefix" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# Each app: print who it is, resolve the peer by name, linger a moment so the peer can resolve it too.
app='echo "[$BOXER_MESH_NAME] I am $BOXER_MESH_NAME at $BOXER_MESH_IP in mesh $BOXER_MESH";
     echo "[$BOXER_MESH_NAME] $PEER resolves to $('"$bin"' resolve "$PEER")"; sleep 1'

if [[ $(id -u) -eq 0 ]]; then
    echo "== NAT lab: broker on 203.0.113.10, function fn1 and fn2 each behind its own NAT"
    "$bin" lab up --prefix "$prefix" --functions 2 --nat easy
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
PEER=beta run fn1 "$bin" node --broker "$broker" --name alpha --wait-for 2 -- sh -c "$app" &
pids+=($!)
PEER=alpha run fn2 "$bin" node --broker "$broker" --name beta --wait-for 2 -- sh -c "$app"
wait "${pids[1]}"
echo "== broker log"
cat "$work/broker.log"
