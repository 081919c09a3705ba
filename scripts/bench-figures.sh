#!/usr/bin/env bash
# Measures every figure of BENCHMARKS.md's "Figures" section on this machine and prints them
# as markdown tables (raw JSON under target/bench-figures/, or $CARGO_TARGET_DIR's). One
# command, about 15 minutes:
#
#   scripts/bench-figures.sh            # everything
#   scripts/bench-figures.sh --quick    # one try per point instead of the best of 3
#   scripts/bench-figures.sh --only run # only the two-process runs (or: engine, compare)
#
# Run it on an idle machine: two-process runs pin the generator and flowpeek to different
# CPUs, and anything else running shows up in the figures. Throughput is the best of
# $TRIES tries (noise only ever slows a run down); each try is measured together with its
# own null-consumer ceiling. Needs: cargo, python3; `compare` also installs libnids, Go,
# tcpflow and tshark (scripts/compare/run.sh).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FLOWPEEK_ROOT"
TRIES=3
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) TRIES=1; shift ;;
        --only) ONLY=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "bench-figures: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT=$FLOWPEEK_TARGET/bench-figures
mkdir -p "$OUT"
say() { echo "bench-figures: $*" >&2; }
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

say "building (release)"
cargo build --release --workspace -q
B=$FLOWPEEK_TARGET/release/flowpeek-bench
echo "# flowpeek figures, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo

if want engine; then
    say "criterion: engine (about 2 minutes)"
    cargo bench -q -p flowpeek --bench engine -- --warm-up-time 1 --measurement-time 3 2>/dev/null |
        tee "$OUT/engine.txt" |
        python3 -c '
import re, sys
name = None
rows = []
for line in sys.stdin:
    line = line.rstrip()
    if re.match(r"^(pkts_64b|reassembly_1460b)/\S+$", line.strip()):
        name = line.strip()
    m = re.search(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+) ", line)
    if m and name and "%" not in line:
        rows.append((name, m.group(1), m.group(2)))
        name = None
print("| criterion benchmark (`cargo bench -p flowpeek --bench engine`) | throughput |")
print("| --- | --- |")
for n, v, u in rows:
    unit = u.replace("Melem/s", "Mpps")
    print(f"| {n} | {v} {unit} |")
print()
'
fi

# best TAG ARGS...: the best of $TRIES `flowpeek-bench run` tries, as a table row.
best() {
    local tag=$1
    shift
    local i
    for ((i = 1; i <= TRIES; i++)); do
        say "$tag, try $i/$TRIES: flowpeek-bench run $*"
        "$B" run "$@" --quiet --json >"$OUT/$tag-$i.json" 2>"$OUT/$tag-$i.err" ||
            { say "failed: $(tail -2 "$OUT/$tag-$i.err")"; return 1; }
    done
    python3 - "$OUT" "$tag" "$TRIES" "$*" <<'EOF'
import json, sys
out, tag, tries, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
runs = [json.load(open(f"{out}/{tag}-{i}.json")) for i in range(1, tries + 1)]
d = max(runs, key=lambda r: r["pps"])
lat = d.get("latency_ns") or {}
null = (d.get("null") or {}).get("pps")
us = lambda k: f"{lat[k] / 1e3:.1f}" if k in lat else "-"
full = sum(c["drops"]["ring_full_frames"] for c in d["per_core"])
ceiling = "%.2f" % (null / 1e6) if null else "-"
tries_txt = ", ".join("%.2f" % (r["pps"] / 1e6) for r in runs)
print("| `%s` | %.2f | %.2f | %.0f | %s / %s / %s / %s / %s / %s | %.1f MiB | %.0f | %s | %d | %s |" % (
    args, d["pps"] / 1e6, d["bps"] / 1e9, d["cycles_per_packet"], us("p50"), us("p90"),
    us("p95"), us("p99"), us("p999"), us("max"), d["rss_kib"] / 1024,
    d["mem_per_flow_bytes"], ceiling, full, tries_txt))
EOF
}

if want run; then
    echo "| \`flowpeek-bench run\` arguments (+ \`--quiet --json\`) | Mpps | Gbit/s | cycles/pkt | latency p50 / p90 / p95 / p99 / p99.9 / max µs | peak RSS | bytes/flow | null ceiling Mpps | ring-full frames | all tries, Mpps |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    best 64-none --size 64 --flows 10000 --cores 1 --duration 5 --no-plugins
    best 64-noop --size 64 --flows 10000 --cores 1 --duration 5
    best 64-noop-unstamped --size 64 --flows 10000 --cores 1 --duration 5 --latency-sample 0
    best 1514-noop --size 1514 --flows 10000 --cores 1 --duration 5
    for p in streamhash streamhash-crc32 streamhash-xxh3; do
        best "1514-$p" --size 1514 --flows 1000 --conn-packets 0 --cores 1 --duration 5 --plugins "$p"
    done
    best 64-1M-none --size 64 --flows 1000000 --cores 1 --duration 8 --no-plugins --latency-sample 0
    best 64-1M-noop --size 64 --flows 1000000 --cores 1 --duration 8 --latency-sample 0
    best 64-10k-none-unstamped --size 64 --flows 10000 --cores 1 --duration 8 --no-plugins --latency-sample 0
    # Zero-loss rate (no ring-full frame) with the no-op plugin, then the latency at half of it.
    # 65,536-slot rings: this VM's vCPUs are descheduled for 1-5 ms now and then (steal
    # time), which overflows 4,096 slots at any rate above 1-2 Mpps.
    say "zero-loss search (no-op plugin, 65,536-slot ring)"
    "$B" run --size 64 --flows 10000 --cores 1 --duration 3 --slots 65536 --zero-loss --no-null \
        --quiet --json >"$OUT/zero-loss.json" 2>"$OUT/zero-loss.err"
    zl=$(python3 -c "import json; print(json.load(open('$OUT/zero-loss.json'))['zero_loss']['pps'])")
    half=$((zl / 2))
    echo "| zero-loss search: \`--size 64 --flows 10000 --cores 1 --duration 3 --slots 65536 --zero-loss\` | zero-loss rate $(python3 -c "print('%.2f' % ($zl / 1e6))") Mpps | | | | | | | | |"
    steal0=$(awk '/^cpu /{print $9}' /proc/stat)
    best 64-noop-half-zl --size 64 --flows 10000 --cores 1 --duration 5 --slots 65536 --rate "$half" --no-null
    steal1=$(awk '/^cpu /{print $9}' /proc/stat)
    echo "| (steal time, /proc/stat, during the $TRIES latency tries: $(( (steal1 - steal0) * 10 )) ms: the hypervisor ran something else on these vCPUs) | | | | | | | | | |"
    echo
fi

if want compare; then
    CAP=$OUT/gen-imix-4m.pcap
    if [ ! -f "$CAP" ]; then
        say "generating $CAP (4,000,000 IMIX packets, 10,000 concurrent connections, 1.3 GB)"
        "$B" gen --out "pcap:$CAP" --flows 10000 --imix --conn-packets 64 --count 4000000 --quiet
    fi
    say "offline comparison (scripts/compare/run.sh)"
    require_corpus bench-figures
    CORPUS=$FLOWPEEK_CORPUS
    RUNS=$TRIES TSHARK_MAX_STREAMS=${TSHARK_MAX_STREAMS:-200} scripts/compare/run.sh "$CAP" \
        "$CORPUS/gen/http-bulk.pcap" "$CORPUS/gen/mixed.pcap"
fi
