#!/usr/bin/env bash
# Writes one executable file that carries the preload shim: BINARY, then SHIM, then a 48-byte trailer (SHIM's
# SHA-256, "BXSHIM02" and SHIM's length as 8 bytes little-endian). The ELF loader ignores the tail; the node
# writes the shim out at start, named by the digest (Sources/MeshNode/Shim/Node+Shim.swift). Used by scripts/package.sh and scripts/code-order.sh.
#   scripts/one-file.sh BINARY SHIM OUT
set -euo pipefail
[[ $# -eq 3 ]] || { echo "usage: scripts/one-file.sh BINARY SHIM OUT" >&2; exit 2; }
binary=$1 shim=$2 out=$3
{
    cat "$binary" "$shim"
    python3 -c "import hashlib, struct, sys; shim = open(sys.argv[1], 'rb').read()
sys.stdout.buffer.write(hashlib.sha256(shim).digest() + b'BXSHIM02' + struct.pack('<Q', len(shim)))" "$shim"
} >"$out.tmp"
chmod 755 "$out.tmp"
mv "$out.tmp" "$out"
