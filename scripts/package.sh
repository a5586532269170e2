#!/usr/bin/env bash
# Builds what ships into a function: a release boxer-mesh and the preload shim built with it. The binary needs
# nothing beyond glibc's own libraries at GLIBC_2.34 or older (Amazon Linux 2023, AWS Lambda's provided.al2023):
# the Swift runtime, libzmq, libsodium, libstdc++ and libgcc linked in statically (scripts/static-deps.sh), the few glibc 2.35+ calls of those archives
# redirected to 2.34's (scripts/glibc234-compat.c). Checked by scripts/check-lambda-binary.sh before it is written.
#   scripts/package.sh [OUTPUT]          one file, default dist/boxer-mesh: the preload shim appended to the
#                                        binary (scripts/one-file.sh)
#   scripts/package.sh --lambda OUT.zip  a Lambda deployment package: `bootstrap` (boxer-mesh-lambda: the node as a
#                                        custom runtime, alone) and the shim libboxer-shim.so beside it, where the
#                                        node finds it
set -euo pipefail
lambda=false
if [[ ${1:-} == --lambda ]]; then
    lambda=true
    shift
    [[ $# -eq 1 && $1 == *.zip ]] || { echo "usage: scripts/package.sh --lambda OUT.zip" >&2; exit 2; }
fi
out=${1:-dist/boxer-mesh}
product=boxer-mesh
$lambda && product=boxer-mesh-lambda
out="$(realpath -m "$out")"
cd "$(dirname "$0")/.."

static=$(scripts/static-deps.sh | tail -1)
# A build folder of its own: SwiftPM does not recompile what it built before when only -Xswiftc flags change.
scratch=.build-package
bin=$(swift build -c release --scratch-path "$scratch" --show-bin-path)
mkdir -p "$bin"
cc -O2 -Wall -Wextra -Werror -c scripts/glibc234-compat.c -o "$bin/glibc234-compat.o"
wraps=()
for name in hypot hypotf arc4random _dl_find_object; do wraps+=(-Xlinker "--wrap=$name"); done
# Linked anew every time: SwiftPM does not see a change of scripts/code-order.txt.
rm -f "$bin/$product"
# -L first: -lzmq, -lsodium and -lstdc++ find the static archives there before the shared libraries. libgcc_eh
# is libgcc's unwinder as a static archive, so libgcc_s drops out (clang links it --as-needed).
# --no-export-dynamic: nothing looks symbols up in the executable; its dynamic symbol table is 1 MB of names.
# Each Swift function in a section of its own, and the functions a node runs (scripts/code-order.txt, made by
# scripts/code-order.sh) put side by side: the node's resident code shrinks by a third.
swift build -c release --scratch-path "$scratch" --static-swift-stdlib --product "$product" -Xswiftc -Xfrontend -Xswiftc -function-sections -Xswiftc -Xclang-linker -Xswiftc -no-pie \
    -Xlinker -L"$static" -Xlinker -lgcc_eh -Xlinker "$bin/glibc234-compat.o" \
    -Xlinker --no-export-dynamic -Xlinker --section-ordering-file="$PWD/scripts/code-order.txt" -Xlinker -Map="$bin/$product.map" "${wraps[@]}" 2>&1 | { grep -v "the use of \`mktemp' is dangerous" || true; } >&2
binary="$bin/$product"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
strip --strip-unneeded -o "$work/libboxer-shim.so" "$bin/boxer-mesh_PreloadShim.resources/libboxer-shim.so"
strip -o "$work/boxer-mesh" "$binary"  # before appending: strip would drop an appended shim
scripts/check-lambda-binary.sh "$work/boxer-mesh" --shim "$work/libboxer-shim.so"
mkdir -p "$(dirname "$out")"

if $lambda; then
    mv "$work/boxer-mesh" "$work/bootstrap"
    # Python's zipfile: Debian's zip package is not needed, and the modes (0755) are set explicitly.
    python3 - "$out.tmp" "$work/bootstrap" "$work/libboxer-shim.so" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
    for path in sys.argv[2:]:
        info = zipfile.ZipInfo(os.path.basename(path), date_time=(2026, 1, 1, 0, 0, 0))
        info.external_attr = (0o100755 << 16)
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as source:
            archive.writestr(info, source.read())
EOF
    mv "$out.tmp" "$out"
    unzipped=$(( $(stat -c %s "$work/bootstrap") + $(stat -c %s "$work/libboxer-shim.so") ))
    echo "package: $out ($(stat -c %s "$out") bytes; unzipped $unzipped: bootstrap $(stat -c %s "$work/bootstrap")," \
        "libboxer-shim.so $(stat -c %s "$work/libboxer-shim.so"))"
    exit 0
fi
scripts/one-file.sh "$work/boxer-mesh" "$work/libboxer-shim.so" "$out"
echo "package: $out ($(stat -c %s "$out") bytes, shim $(stat -c %s "$work/libboxer-shim.so") bytes inside)"
