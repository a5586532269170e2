#!/usr/bin/env bash
# The whole test suite, as README.md and .ci/run give it: dependencies, a stale-schema check, build, tests.
#
#   bash scripts/test.sh              everything; needs root (the NAT-lab tests build network namespaces)
#   bash scripts/test.sh --unit-only  unit tests only, for a machine without root (CI never runs this)
#
# A lab test that skips fails the run: a suite that passes with its end-to-end layer skipped proves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
unit_only=false
case "${1:-}" in
    "") ;;
    --unit-only) unit_only=true ;;
    *) echo "usage: bash scripts/test.sh [--unit-only]" >&2; exit 2 ;;
esac
if ! $unit_only && [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh: the NAT-lab integration tests need root (network namespaces, veth pairs, iptables)." >&2
    echo "Run it as root, or run 'bash scripts/test.sh --unit-only' for the unit tests alone." >&2
    exit 1
fi
# Suites that build NAT labs: run apart from the unit tests, one test at a time.
lab_suites='IntegrationTests|NATLabTests'
scripts/install-deps.sh
scripts/generate-proto.sh --check
swift build --build-tests  # also builds the preload shim (the PreloadShimBuilder plugin)
# The node links FoundationEssentials only: all of Foundation (ICU, CoreFoundation) would add 40 MB to the package.
if ldd .build/debug/boxer-mesh | grep -E 'lib(Foundation|FoundationInternationalization|_FoundationICU)\.so'; then
    echo "scripts/test.sh: boxer-mesh links the libraries above; import FoundationEssentials, not Foundation" >&2
    exit 1
fi
swift test --skip-build --disable-xctest --skip "$lab_suites"
# The function package, as shipped: what its bootstrap and shim need must exist on Amazon Linux 2023.
package=$(mktemp -d)
scripts/package.sh --lambda "$package/boxer-mesh.zip"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$package/boxer-mesh.zip" "$package/x"
scripts/check-lambda-binary.sh "$package/x/bootstrap" --shim "$package/x/libboxer-shim.so"
# …and it works: the runtime tests again, with the packaged bootstrap and the shim beside it.
chmod 755 "$package/x/bootstrap"
BOXER_MESH_LAMBDA_BOOTSTRAP="$package/x/bootstrap" swift test --skip-build --disable-xctest --filter LambdaBootstrapTests
rm -rf "$package"
$unit_only && exit 0
# One lab test at a time: they check timing a user relies on (expiry within 3 s, failure within 5 s), which
# parallel tests on 2 cores would blur.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
swift test --skip-build --disable-xctest --no-parallel --filter "$lab_suites" 2>&1 | tee "$log"
if grep -E '^➜ (Test|Suite) .* skipped' "$log"; then
    echo "scripts/test.sh: the lab tests above were skipped; a skipped lab test is a failure here" >&2
    exit 1
fi
