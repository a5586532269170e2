#!/usr/bin/env bash
# Writes one executable file that carries the preload shim: BINARY, then SHIM, then a 16-byte trailer ("BXSHIM01"
# and the shim's length, little-endian). The ELF loader ignores the tail; the node writes the shim out at start
# (Sources/MeshNode/Shim/Node+Shim.swift). Used by scripts/package.sh and scripts/code-order.sh.
#   scripts/one-file.sh BINARY SHIM OUT
set -euo pipefail
[[ $# -eq 3 ]] || { echo "usage: scripts/one-file.sh BINARY SHIM OUT" >&2; exit 2; }
binary=$1 shim=$2 out=$3
{
    cat "$binary" "$shim"
    printf 'BXSHIM01'
    python3 -c "import struct, sys; sys.stdout.buffer.write(struct.pack('<Q', $(stat -c %s "$shim")))"
} >"$out.tmp"
chmod 755 "$out.tmp"
mv "$out.tmp" "$out"
