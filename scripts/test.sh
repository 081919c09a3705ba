#!/usr/bin/env bash
# The whole test suite (the README's test command; CI runs exactly this):
#   1. cargo test --workspace --locked: unit, scenario, corpus, plugin, live (veth, as root),
#      environment and fuzz-regression tests; the bench crate's generator, pipeline and
#      tiny-sweep tests;
#   2. scripts/fuzz.sh: the five cargo-fuzz targets, 20 s each under AddressSanitizer
#      (installs cargo-fuzz, and g++ when run as root on Debian, if they are missing).
# Needs the shared corpus beside the clone (../shared), as on every developer machine.
# FUZZ_SECONDS=N changes the fuzzing time per target; FUZZ_SECONDS=0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d ../shared/corpus ]; then
    echo "test: ../shared/corpus is missing: the tests replay its captures (clone beside ../shared)" >&2
    exit 1
fi
cargo test --workspace --locked
seconds=${FUZZ_SECONDS:-20}
if [ "$seconds" != 0 ]; then
    scripts/fuzz.sh --seconds "$seconds"
fi
