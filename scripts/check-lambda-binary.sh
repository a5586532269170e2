#!/usr/bin/env bash
# Fails unless each ELF file given runs on a function's base image (AWS Lambda provided.al2023: Amazon Linux 2023,
# glibc 2.34, no other libraries to count on): it may need only glibc's own libraries, and only symbol versions
# GLIBC_2.34 or older. `--shim FILE` is stricter: the preload shim goes into every app, so libc alone (and the
# dynamic loader, where its thread-local variables live: __tls_get_addr).
# Reads what the dynamic loader reads: NEEDED entries (objdump -p) and versioned dynamic symbols (objdump -T).
#   scripts/check-lambda-binary.sh [--shim] FILE [[--shim] FILE …]
set -euo pipefail
max_glibc=2.34
glibc_libraries=(libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 ld-linux-x86-64.so.2)
failed=0
shim=false
for argument in "$@"; do
    if [[ $argument == --shim ]]; then shim=true; continue; fi
    file=$argument
    allowed=("${glibc_libraries[@]}")
    $shim && allowed=(libc.so.6 ld-linux-x86-64.so.2)
    problems=()
    if ! objdump -p "$file" >/dev/null 2>&1; then
        problems+=("not an ELF file objdump can read")
    else
        needed=$(objdump -p "$file" | awk '$1 == "NEEDED" { print $2 }')
        for library in $needed; do
            [[ " ${allowed[*]} " == *" $library "* ]] || problems+=("needs $library")
        done
        # Every version a dynamic symbol refers to: GLIBC_x.y must be <= 2.34; any other (GLIBCXX_, CXXABI_, GCC_,
        # a library's own) means a library beyond glibc.
        versions=$(objdump -T "$file" | sed -n 's/.*[ (]\([A-Za-z_]*_[0-9][0-9.]*\)[) ].*/\1/p' | sort -u)
        newest=$(printf '%s\n' "$versions" | sed -n 's/^GLIBC_//p' | sort -V | tail -1)
        for version in $versions; do
            case $version in
                GLIBC_PRIVATE) problems+=("uses GLIBC_PRIVATE symbols") ;;
                GLIBC_*)
                    number=${version#GLIBC_}
                    if [[ $(printf '%s\n%s\n' "$number" "$max_glibc" | sort -V | tail -1) != "$max_glibc" ]]; then
                        symbols=$(objdump -T "$file" | awk -v v="($version)" '$0 ~ v { print $NF }' | sort -u | tr '\n' ' ')
                        problems+=("needs $version: $symbols")
                    fi
                    ;;
                *) problems+=("needs $version symbols (a library beyond glibc)") ;;
            esac
        done
    fi
    size=$(stat -c %s "$file")
    if ((${#problems[@]})); then
        failed=1
        echo "check-lambda-binary: $file FAILS on Amazon Linux 2023 (glibc $max_glibc):" >&2
        printf '  - %s\n' "${problems[@]}" >&2
    else
        echo "check-lambda-binary: $file fits Amazon Linux 2023: $size bytes; needs $(echo $needed | tr ' ' ','); newest GLIBC_${newest:-none}"
    fi
    shim=false
done
exit $failed
