#!/usr/bin/env bash
# The whole test suite (the README's test command; CI runs exactly this):
#   1. cargo fmt --all --check, and cargo clippy --workspace --all-targets --locked with
#      warnings denied (the workspace lints deny undocumented unsafe blocks); cargo doc
#      with rustdoc's warnings denied (a module doc that names what is not there fails);
#   2. cargo test --workspace --locked: unit, scenario, corpus, plugin, live (veth, as root),
#      environment and fuzz-regression tests; the bench crate's generator, pipeline and
#      tiny-sweep tests;
#   3. scripts/fuzz.sh: the six cargo-fuzz targets, 20 s each under AddressSanitizer
#      (installs cargo-fuzz, and g++ when run as root on Debian, if they are missing).
# Needs the shared corpus: FLOWPEEK_CORPUS, else ../shared/corpus beside the clone (see
# scripts/lib.sh). FUZZ_SECONDS=N changes the fuzzing time per target; FUZZ_SECONDS=0 skips
# fuzzing. Honours CARGO_TARGET_DIR.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FLOWPEEK_ROOT"
require_packages test "${TEST_PACKAGES[@]}"
require_corpus test
echo "test: cargo fmt --all --check" >&2
cargo fmt --all --check
echo "test: cargo clippy --workspace --all-targets --locked -- -D warnings" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "test: cargo doc --workspace --no-deps --locked (RUSTDOCFLAGS=-D warnings)" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "test: cargo test --workspace --locked" >&2
cargo test --workspace --locked
seconds=${FUZZ_SECONDS:-20}
if [ "$seconds" != 0 ]; then
    scripts/fuzz.sh --seconds "$seconds"
fi
