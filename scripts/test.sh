#!/usr/bin/env bash
# The whole test suite, as README.md and .ci/run give it: dependencies, a stale-schema check, build, tests.
# Integration tests build NAT labs and need root; without root they print why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/generate-proto.sh --check
swift build --build-tests
scripts/build-shim.sh  # beside the boxer-mesh binary, where the node finds it
# Unit tests first, then the NAT-lab integration tests on their own: they check timing a user relies on (expiry
# within 3 s), which the unit suites' parallel load on 2 cores would blur.
swift test --skip-build --disable-xctest --skip IntegrationTests
swift test --skip-build --disable-xctest --filter IntegrationTests
