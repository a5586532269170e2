#!/usr/bin/env bash
# Runs libboxer-shim.so's tests: real programs (python3, curl, redis, iperf3, nginx) with the shim preloaded,
# against Tests/shim/fake_node.py, on loopback only. Last line: "N passed, M failed"; exit status 1 on any failure.
#   Tests/shim/run.sh [FILTER]    FILTER: run only tests whose module.name contains it
# The shim is the one `swift build` built (the PreloadShimBuilder plugin, -Werror: it builds warning-free or not
# at all); BOXER_SHIM_LIBRARY names another.
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
for tool in protoc /usr/bin/python3 curl redis-server redis-cli redis-benchmark iperf3 nginx getent; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
/usr/bin/python3 -c 'import google.protobuf' 2>/dev/null || missing+=(python3-protobuf)
if ((${#missing[@]})); then
    echo "shim tests: missing ${missing[*]} (apt-get install build-essential protobuf-compiler libprotobuf-c-dev" \
        "python3-protobuf curl redis-server redis-tools iperf3 nginx-light)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

shim="${BOXER_SHIM_LIBRARY:-$root/.build/debug/boxer-mesh_PreloadShim.resources/libboxer-shim.so}"
if [[ ! -r "$shim" ]]; then
    echo "shim tests: no preload shim at $shim (run swift build)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/proto"
protoc --python_out="$work/proto" -I"$root/proto" "$root/proto/boxer_mesh.proto"

PYTHONDONTWRITEBYTECODE=1 BOXER_PROTO_PY="$work/proto" /usr/bin/python3 "$here/harness.py" "$shim" "${1:-}"
