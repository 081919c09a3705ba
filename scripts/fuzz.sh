#!/usr/bin/env bash
# Runs the cargo-fuzz targets of host/fuzz for a bounded time each (see host/fuzz/README.md).
set -euo pipefail

ALL_TARGETS=(decode capture engine shm_ring plugin_config defrag)

usage() {
    cat <<EOF
usage: scripts/fuzz.sh [--seconds N] [--no-sanitizer] [TARGET...]

Builds the fuzz targets of host/fuzz once (cargo-fuzz, address sanitizer, a stable
toolchain with RUSTC_BOOTSTRAP=1), then runs each TARGET for N seconds (libFuzzer
-max_total_time=N) and prints one line per target: executions, executions per second and
the result. Exits non-zero if any target crashed, naming the target and the crash input.

  TARGET          one or more of: ${ALL_TARGETS[*]} (default: all)
  --seconds N     fuzzing time per target, in seconds (default: 20)
  --no-sanitizer  build without AddressSanitizer (cargo fuzz --sanitizer none); used
                  automatically, with a message, if the ASan build fails
  -h, --help      this text

Each run starts from the checked-in inputs host/fuzz/regressions/<target>/ (seeds and
fixed crashes, also replayed by 'cargo test --test fuzz_regressions') plus the git-ignored
host/fuzz/corpus/<target>/, where libFuzzer adds the new inputs it finds, so later runs
pick up where earlier ones stopped. Crash inputs go to host/fuzz/artifacts/<target>/; the
libFuzzer output of each run is in host/fuzz/target/fuzz-logs/<target>.log (the fuzz build
goes to \$CARGO_TARGET_DIR/fuzz instead of host/fuzz/target when CARGO_TARGET_DIR is set).

Needs: rustup's stable toolchain, a C++ compiler (libFuzzer is compiled from source; as
root on Debian the script installs g++ if it is missing) and cargo-fuzz (installed with
'cargo install cargo-fuzz --locked' if missing). plugin_config also builds the bundled
plugins (debug, into target/plugin-tests, shared with the plugin tests; target/ is
\$CARGO_TARGET_DIR if set).

Examples:
  scripts/fuzz.sh                        # all six targets, 20 s each (CI)
  scripts/fuzz.sh --seconds 600 engine   # a longer local run of one target
EOF
}

say() { echo "fuzz: $*"; }
die() {
    echo "fuzz: error: $*" >&2
    exit 2
}

seconds=20
sanitizer=address
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --seconds)
            [ $# -ge 2 ] || die "--seconds needs a value (see --help)"
            seconds=$2
            shift 2
            ;;
        --seconds=*)
            seconds=${1#--seconds=}
            shift
            ;;
        --no-sanitizer)
            sanitizer=none
            shift
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *)
            ok=0
            for t in "${ALL_TARGETS[@]}"; do [ "$1" = "$t" ] && ok=1; done
            [ $ok = 1 ] || die "unknown target '$1': one of ${ALL_TARGETS[*]}"
            targets+=("$1")
            shift
            ;;
    esac
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "--seconds wants a positive whole number, not '$seconds'"
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

. "$(dirname "$0")/lib.sh"
root=$FLOWPEEK_ROOT
fuzz=$root/host/fuzz
# host/fuzz is its own workspace with its own target dir, unless CARGO_TARGET_DIR moves builds.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    fuzz_target=$FLOWPEEK_TARGET/fuzz
else
    fuzz_target=$fuzz/target
fi
plugin_dir=$FLOWPEEK_TARGET/plugin-tests
logs=$fuzz_target/fuzz-logs
triple=$(rustc -vV | sed -n 's/^host: //p')
started=$(date +%s)

# --- Tools -------------------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (stable)"
if ! command -v "${CXX:-c++}" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "no C++ compiler (libFuzzer is built from C++ sources): apt-get install g++ ..."
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null; }
    else
        die "no C++ compiler (c++): libFuzzer is built from C++ sources; install g++ (Debian: apt-get install g++)"
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo-fuzz not installed: cargo install cargo-fuzz --locked (a one-time build, about a minute) ..."
    t0=$(date +%s)
    cargo install cargo-fuzz --locked --quiet || die "installing cargo-fuzz failed"
    say "cargo-fuzz $(cargo fuzz --version | awk '{print $2}') installed in $(($(date +%s) - t0)) s"
fi

# --- Build -------------------------------------------------------------------------------
# A stable toolchain accepts cargo-fuzz's nightly flags (-Zsanitizer=...) with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
mkdir -p "$logs"
build() {
    (cd "$fuzz" && cargo fuzz build --sanitizer "$sanitizer" --target-dir "$fuzz_target") \
        >"$logs/build.log" 2>&1
}
t0=$(date +%s)
say "building the fuzz targets (cargo fuzz build, sanitizer: $sanitizer) ..."
if ! build; then
    if [ "$sanitizer" = address ]; then
        tail -n 15 "$logs/build.log" >&2
        say "the AddressSanitizer build failed (above); building with --sanitizer none instead:"
        say "memory errors are then only found when they panic or fault"
        sanitizer=none
        build || { tail -n 30 "$logs/build.log" >&2; die "cargo fuzz build failed (log: $logs/build.log)"; }
    else
        tail -n 30 "$logs/build.log" >&2
        die "cargo fuzz build failed (log: $logs/build.log)"
    fi
fi
for t in "${targets[@]}"; do
    if [ "$t" = plugin_config ]; then
        say "building the bundled plugins plugin_config loads (cargo build, debug) ..."
        for p in httplog streamhash midstat eventlog noop; do
            (cd "$root" && cargo build --quiet -p "flowpeek-plugin-$p" --target-dir "$plugin_dir") ||
                die "building flowpeek-plugin-$p failed"
        done
    fi
done
build_secs=$(($(date +%s) - t0))
say "built in ${build_secs} s"

# --- Run ---------------------------------------------------------------------------------
failed=()
printf 'fuzz: %-14s %12s %9s  %s\n' target executions exec/s result
for t in "${targets[@]}"; do
    bin=$fuzz_target/$triple/release/$t
    [ -x "$bin" ] || die "$bin was not built"
    mkdir -p "$fuzz/corpus/$t" "$fuzz/artifacts/$t"
    log=$logs/$t.log
    env=()
    if [ "$t" = plugin_config ]; then
        # The plugin libraries are never unloaded (on purpose): not leaks to report.
        env=(ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
            FLOWPEEK_FUZZ_PLUGIN_DIR="$plugin_dir/debug")
    fi
    rc=0
    # New inputs go to the first directory (corpus/), never into regressions/.
    (cd "$fuzz" && env "${env[@]}" "$bin" -max_total_time="$seconds" -timeout=20 \
        -print_final_stats=1 -artifact_prefix="$fuzz/artifacts/$t/" \
        "$fuzz/corpus/$t" "$fuzz/regressions/$t") >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    if [ -z "$execs" ]; then
        # No final stats (killed or crashed early): the last status line, "#N ... exec/s: R".
        execs=$(grep -o '^#[0-9]*' "$log" | tail -n 1 | tr -d '#')
        rate=$(grep -o 'exec/s: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')
    fi
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ $rc -eq 0 ]; then
        result="ok ($(find "$fuzz/corpus/$t" -type f | wc -l) inputs in corpus/$t)"
    else
        what=$(grep -m 1 -o -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer): [a-zA-Z-]+|panicked at [^:]*:[0-9]*' "$log" || true)
        result="CRASH (exit $rc${what:+: $what}) input: ${artifact:-none written} log: $log"
        failed+=("$t ${artifact:-}")
    fi
    printf 'fuzz: %-14s %12s %9s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done

total=$(($(date +%s) - started))
say "${#targets[@]} target(s), ${seconds} s each, sanitizer $sanitizer; build ${build_secs} s, total ${total} s"
if [ ${#failed[@]} -gt 0 ]; then
    for f in "${failed[@]}"; do
        t=${f%% *}
        input=${f#* }
        pre="RUSTC_BOOTSTRAP=1"
        [ "$t" = plugin_config ] &&
            pre="ASAN_OPTIONS=detect_leaks=0 FLOWPEEK_FUZZ_PLUGIN_DIR=$plugin_dir/debug $pre"
        if [ -n "$input" ]; then
            echo "fuzz: CRASH in $t: $input" >&2
            echo "fuzz:   reproduce: (cd host/fuzz && $pre cargo fuzz run $t $input)" >&2
            echo "fuzz:   minimize:  (cd host/fuzz && $pre cargo fuzz tmin $t $input)" >&2
        else
            echo "fuzz: CRASH in $t (no input written): see $logs/$t.log" >&2
        fi
    done
    echo "fuzz: once fixed, keep the (minimized) input as host/fuzz/regressions/<target>/crash-<what>" >&2
    exit 1
fi
