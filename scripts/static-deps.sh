#!/usr/bin/env bash
# Prints a folder of static archives for the function package (scripts/package.sh --lambda) to link against:
# libzmq.a, libsodium.a and libstdc++.a, so that the binary needs nothing beyond glibc's own libraries.
#
# libzmq is built once per build folder (cached under .build/static-deps/) from Debian's source package of the
# very version whose headers (libzmq3-dev) the Swift code compiles against. Debian's own libzmq.a cannot be used:
# it needs libpgm, libnorm and libgssapi_krb5, none of which a function has (and krb5 ships no static library).
# Built without what a function cannot use or the project does not use: no PGM/NORM multicast, no VMCI, no
# GSSAPI, no CURVE (the mesh authenticates with its own HMAC handshake; libsodium is linked for that, not for
# libzmq), no draft API, no WebSocket transport, no libbsd. Each function in a section of its own, so that the
# package's link can put the ones a node runs beside its other code (scripts/code-order.txt).
#   scripts/static-deps.sh          builds if needed; last line of output: the folder
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(dpkg-query -W -f='${source:Version}' libzmq3-dev)  # e.g. 4.3.4-6
cache="$PWD/.build/static-deps/zeromq3-$version-function-sections"
if [[ ! -f "$cache/lib/libzmq.a" ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # The machine's apt sources name binary packages only: the same Debian archive entries, as deb-src, in a
    # private apt configuration (the system's stays untouched).
    mkdir -p "$work/apt/lists/partial" "$work/apt/sources.list.d"
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$file" ]] || continue
        # deb822 stanzas signed with Debian's archive key, turned into source entries.
        awk -v RS= -v ORS='\n\n' '/debian-archive-keyring/ { sub(/Types: deb/, "Types: deb-src"); print }' "$file"
    done >"$work/apt/sources.list.d/debian-src.sources"
    if [[ ! -s "$work/apt/sources.list.d/debian-src.sources" ]]; then
        echo "static-deps: no Debian archive entry in /etc/apt/sources.list.d/*.sources to fetch sources from" >&2
        exit 1
    fi
    apt_options=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/apt/sources.list.d"
        -o "Dir::State::Lists=$work/apt/lists" -o "APT::Sandbox::User=root" -qq)
    echo "static-deps: fetching Debian's zeromq3 $version source" >&2
    apt-get "${apt_options[@]}" update >&2
    (cd "$work" && apt-get "${apt_options[@]}" source "zeromq3=$version" >&2)  # unpacks and applies Debian's patches
    src=$(find "$work" -maxdepth 1 -type d -name 'zeromq3-*' | head -1)
    echo "static-deps: building libzmq.a (once per build folder)" >&2
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$cache" \
        -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_C_FLAGS=-ffunction-sections -DCMAKE_CXX_FLAGS=-ffunction-sections \
        -DBUILD_SHARED=OFF -DBUILD_STATIC=ON -DBUILD_TESTS=OFF \
        -DWITH_DOCS=OFF -DWITH_DOC=OFF -DWITH_PERF_TOOL=OFF -DENABLE_CPACK=OFF -DENABLE_PRECOMPILED=OFF \
        -DENABLE_DRAFTS=OFF -DENABLE_WS=OFF -DWITH_LIBBSD=OFF -DWITH_LIBSODIUM=OFF -DENABLE_CURVE=OFF \
        -DWITH_OPENPGM=OFF -DWITH_NORM=OFF -DWITH_VMCI=OFF >"$work/cmake.log" 2>&1 ||
        { cat "$work/cmake.log" >&2; exit 1; }
    cmake --build "$work/build" -j "$(nproc)" >"$work/build.log" 2>&1 && cmake --install "$work/build" >/dev/null ||
        { tail -40 "$work/build.log" >&2; exit 1; }
fi
# The link folder: what `-lzmq`, `-lsodium` and `-lstdc++` must find before the shared libraries do.
link="$cache/link"
mkdir -p "$link"
ln -sf "$cache/lib/libzmq.a" "$link/libzmq.a"
ln -sf "$(gcc -print-file-name=libstdc++.a)" "$link/libstdc++.a"
ln -sf "$(dpkg -L libsodium-dev | grep '/libsodium\.a$')" "$link/libsodium.a"
echo "$link"
