#!/usr/bin/env bash
# Writes scripts/code-order.txt: the code sections a node runs, for the link of the package (scripts/package.sh) to
# put side by side. The kernel maps a program's code 64 KiB around each page it touches, so the node's resident code
# follows how scattered the functions it runs are more than how many there are (BENCHMARKS.md, "Inside functions").
#   scripts/code-order.sh BINARY    BINARY: a release boxer-mesh built with function sections and its link map
#                                   BINARY.map (what scripts/package.sh leaves in .build-package/release/)
# It runs a small mesh on loopback under valgrind's callgrind: a broker, a node whose app (socat) serves (run as the
# one file scripts/package.sh ships, which writes its shim out at start), a node
# whose app connects to it again and again (name lookups, punched links, spare links, flows, leave), one that
# relays, and the node as a Lambda runtime for one invocation. Needs valgrind and socat. Run it again when the
# node's code changed much; sections the binary no longer has drop out.
set -euo pipefail
binary=$(realpath "${1:?usage: scripts/code-order.sh BINARY}")
map="$binary.map"  # the link map, which names the input section of every address
cd "$(dirname "$0")/.."
for tool in valgrind socat; do
    command -v "$tool" >/dev/null || { echo "code-order: needs $tool" >&2; exit 1; }
done
shim="$(dirname "$binary")/boxer-mesh_PreloadShim.resources/libboxer-shim.so"
[[ -f $shim ]] || { echo "code-order: no preload shim beside $binary ($shim)" >&2; exit 1; }
[[ -f $map ]] || { echo "code-order: no link map beside $binary ($map): build it with scripts/package.sh" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# valgrind cannot read the DWARF of a Swift build; the symbol table is all it needs.
strip --strip-debug -o "$work/boxer-mesh" "$binary"
cp "$shim" "$work/libboxer-shim.so"
# The serving node runs as the one file scripts/package.sh ships: the shim appended, written out at start.
mkdir "$work/one-file"
scripts/one-file.sh "$work/boxer-mesh" "$shim" "$work/one-file/boxer-mesh"
within() {  # SECONDS COMMAND...: true once COMMAND succeeds, false if it did not within SECONDS
    local until=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < until)) || return 1
        sleep 0.1
    done
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
control=$(port) tap=$(port) stun=$(port) relay=$(port) app=$(port)
# A mesh with a secret, as every real one: reading it is part of a node's start.
echo "code-order-$$-$RANDOM" >"$work/secret"
"$work/boxer-mesh" broker --secret-file "$work/secret" --listen "127.0.0.1:$control" --tap-listen "127.0.0.1:$tap" \
    --stun-port "$stun" --relay-port "$relay" >"$work/broker.log" 2>&1 &
pids+=($!)
profiled() {  # NAME ARGS...: boxer-mesh ARGS under callgrind (run with &: $! is then that process)
    local name=$1 executable=$work/boxer-mesh
    shift
    [[ $name == srv ]] && executable=$work/one-file/boxer-mesh
    exec valgrind --tool=callgrind --demangle=no --dump-instr=yes --compress-pos=no --compress-strings=no --callgrind-out-file="$work/$name.%p.callgrind" \
        "$executable" "$@" >"$work/$name.log" 2>&1
}
node=(node --broker "127.0.0.1:$control" --relay-port "$relay" --secret-file "$work/secret")
profiled srv "${node[@]}" --name srv -- socat "TCP-LISTEN:$app,fork,reuseaddr" EXEC:cat &
server=$!
pids+=($server)
# The first connect may come before socat listens: it is refused, and tried again.
first="for t in \$(seq 50); do echo hello-1 | socat -t 5 - TCP:srv:$app && break; sleep 0.1; done"
clients="$first; for i in 2 3 4 5 6 7 8; do echo hello-\$i | socat -t 5 - TCP:srv:$app || exit 1; sleep 0.2; done"
profiled cli "${node[@]}" --name cli --wait-for 2 -- sh -c "$clients" &
client=$!
profiled rel "${node[@]}" --name rel --wait-for 2 --path relay -- sh -c "sleep 1; echo relayed | socat -t 5 - TCP:srv:$app" &
relayed=$!
# The node as a Lambda runtime (what the package's bootstrap is), one invocation from the test suite's Runtime API.
event=$(printf '{"broker": "127.0.0.1:%s", "relayPort": %s, "name": "fn", "waitFor": 2, "command": ["sh", "-c", "echo hello | socat -t 5 - TCP:srv:%s"]}' \
    "$control" "$relay" "$app")
python3 -c 'import json, sys; print(json.dumps([{"event": sys.argv[1], "deadline_in": 60}]))' "$event" >"$work/invocations.json"
python3 Tests/tools/runtime_api.py "$work/invocations.json" >"$work/api.out" 2>"$work/api.log" &
pids+=($!)
within 10 grep -q listening "$work/api.out" || { cat "$work/api.log" >&2; exit 1; }
api=$(python3 -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["listening"])' "$work/api.out")
AWS_LAMBDA_RUNTIME_API="127.0.0.1:$api" BOXER_MESH_SECRET=$(<"$work/secret") profiled fn lambda &
runtime=$!
pids+=($runtime)
within 120 grep -q '"response"' "$work/api.out" || true
# The runtime now waits for the next invocation, for ever: dump its profile, then end it.
callgrind_control --dump "$runtime" >/dev/null 2>&1
kill -TERM "$runtime"
wait "$runtime" || true
status=0
wait "$client" || status=$?
wait "$relayed" || status=$?
kill -TERM "$server"
wait "$server" || true
profiles=0
for name in srv cli rel fn; do compgen -G "$work/$name.*.callgrind*" >/dev/null && profiles=$((profiles + 1)); done
if [[ $status -ne 0 ]] || [[ $(grep -cxE "hello-[0-9]+" "$work/cli.log") -ne 8 ]] || ! grep -qx relayed "$work/rel.log" ||
    ! grep -q '"response".*hello' "$work/api.out" || [[ $profiles -ne 4 ]]; then
    tail -n 20 "$work"/*.log >&2
    echo "code-order: the profiled mesh did not work (above); nothing written" >&2
    exit 1
fi
# Every code section that ran, as gold's input sections: the section around each instruction callgrind counted in the
# executable (--dump-instr), found in the link map. Not callgrind's function names: they leave out code entered by
# a jump (async continuations, tail calls) and code without a symbol (Swift's unnamed thunks). Runs differ a little
# (timing decides which paths run), so the list keeps what earlier runs saw too.
python3 - "$map" scripts/code-order.txt "$work"/*.callgrind* <<'EOF'
import bisect, sys
link_map, order, profiles = sys.argv[1], sys.argv[2], sys.argv[3:]
sections = []  # (address, size, name) of every input code section of its own (not .text, .text.startup, …)
pending = None
for line in open(link_map, errors="replace"):
    if line.startswith(" .text"):
        fields = line.split()
        if len(fields) < 3 or not fields[1].startswith("0x"):
            pending = line.strip()  # a long name (some have spaces): address and size follow on the next line
            continue
        pending, fields = fields[0], fields[1:]
    elif pending and line.startswith("                0x"):
        fields = line.split()
    else:
        pending = None
        continue
    name, pending = pending, None
    address, size = int(fields[0], 16), int(fields[1], 16)
    if address and size and " " not in name and name.count(".") >= 2 and name not in (".text.startup", ".text.unlikely", ".text.hot", ".text.exit"):
        sections.append((address, size, name))
sections.sort()
starts = [address for address, _, _ in sections]
names = {name for _, _, name in sections}
try:
    ran = {line.strip() for line in open(order)} & names
except FileNotFoundError:
    ran = set()
for profile in profiles:
    ours = False  # whether the cost lines that follow are the executable's (ob= names the object)
    for line in open(profile, errors="replace"):
        if line.startswith("ob="):
            ours = line[3:].strip().endswith("/boxer-mesh")
        elif ours and line.startswith("0x"):
            address = int(line.split()[0], 16)
            index = bisect.bisect_right(starts, address) - 1
            if index >= 0 and address < sections[index][0] + sections[index][1]:
                ran.add(sections[index][2])
with open(order, "w") as out:
    out.writelines(f"{name}\n" for name in sorted(ran))
print(f"code-order: {order}: {len(ran)} sections of {len(names)}")
EOF
