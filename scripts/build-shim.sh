#!/usr/bin/env bash
# Builds the LD_PRELOAD shim libboxer-shim.so with plain cc (never SwiftPM: a Swift-built library would drag the
# Swift runtime into every app). It needs only libc: protobuf-c (libprotobuf-c-dev) is linked in statically with
# its symbols hidden, and only the hooked libc functions are exported.
#   scripts/build-shim.sh [OUTPUT]   default: next to the boxer-mesh binary, $(swift build --show-bin-path)
set -euo pipefail
out=${1:-}
[[ -n "$out" ]] && out="$(realpath -m "$out")"
cd "$(dirname "$0")/.."
[[ -n "$out" ]] || out="$(swift build --show-bin-path)/libboxer-shim.so"
mkdir -p "$(dirname "$out")"

src=Sources/CMeshShim
# -Wno-missing-braces: protobuf-c's generated initializers for messages with a oneof trip it (benign, and the
# generated code is not ours to edit).
cc -std=c11 -shared -fPIC -O2 -g -Wall -Wextra -Wno-missing-braces -D_GNU_SOURCE -fvisibility=hidden -I"$src" -I"$src/generated" \
    "$src"/*.c "$src/generated/boxer_mesh.pb-c.c" -o "$out" \
    -Wl,-z,defs -Wl,--exclude-libs,ALL -Wl,-Bstatic -lprotobuf-c -Wl,-Bdynamic -ldl -lpthread
echo "build-shim: wrote $out"
