#!/usr/bin/env bash
# Builds libboxer-shim.so and runs its tests: real programs (python3, curl, redis, iperf3, nginx) with the shim
# preloaded, against Tests/shim/fake_node.py, on loopback only. Last line: "N passed, M failed"; exit status 1 on
# any failure.
#   Tests/shim/run.sh [FILTER]    FILTER: run only tests whose module.name contains it
# As root the tests run in a private network namespace (only lo): nothing can leave the machine, even by mistake.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [[ $(id -u) -eq 0 && -z "${BOXER_SHIM_TEST_NETNS:-}" ]] && command -v unshare >/dev/null &&
    unshare -n true 2>/dev/null; then
    exec env BOXER_SHIM_TEST_NETNS=1 unshare -n -- "$0" "$@"
fi
if [[ -n "${BOXER_SHIM_TEST_NETNS:-}" ]]; then
    ip link set lo up
fi

missing=()
for tool in cc protoc /usr/bin/python3 curl redis-server redis-cli redis-benchmark iperf3 nginx getent; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
/usr/bin/python3 -c 'import google.protobuf' 2>/dev/null || missing+=(python3-protobuf)
if ((${#missing[@]})); then
    echo "shim tests: missing ${missing[*]} (apt-get install build-essential protobuf-compiler libprotobuf-c-dev" \
        "python3-protobuf curl redis-server redis-tools iperf3 nginx-light)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
build_log="$work/build.log"
if ! "$root/scripts/build-shim.sh" "$work/libboxer-shim.so" >"$build_log" 2>&1 || grep -q "warning:" "$build_log"; then
    cat "$build_log" >&2
    echo "shim tests: the shim does not build cleanly" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
mkdir -p "$work/proto"
protoc --python_out="$work/proto" -I"$root/proto" "$root/proto/boxer_mesh.proto"

PYTHONDONTWRITEBYTECODE=1 BOXER_PROTO_PY="$work/proto" /usr/bin/python3 "$here/harness.py" "$work/libboxer-shim.so" "${1:-}"
