#!/usr/bin/env bash
# Builds the one file to ship into a function: a release boxer-mesh (Swift runtime linked statically) with the
# preload shim appended (see Sources/MeshNode/Node+Shim.swift for the trailer format).
#   scripts/package.sh [OUTPUT]      default: dist/boxer-mesh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/boxer-mesh}
swift build -c release --static-swift-stdlib --product boxer-mesh
binary="$(swift build -c release --show-bin-path)/boxer-mesh"
shim=$(mktemp --suffix=.so)
trap 'rm -f "$shim"' EXIT
scripts/build-shim.sh "$shim"
mkdir -p "$(dirname "$out")"
size=$(stat -c %s "$shim")
stripped=$(mktemp)
trap 'rm -f "$shim" "$stripped"' EXIT
strip -o "$stripped" "$binary"  # before appending: strip would drop the appended shim
{
    cat "$stripped" "$shim"
    printf 'BXSHIM01'
    python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<Q', $size))"
} >"$out.tmp"
chmod 755 "$out.tmp"
mv "$out.tmp" "$out"
echo "package: $out ($(stat -c %s "$out") bytes, shim $size bytes inside); needs: $(ldd "$out" | awk '{print $1}' | tr '\n' ' ')"
