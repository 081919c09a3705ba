#!/usr/bin/env bash
# Times `flowpeek streams --json FILE > /dev/null` against `tcpflow -r FILE -o TMPDIR` on
# the same captures, one core each (taskset -c $CORE), best of $RUNS wall-clock runs,
# with the peak RSS of /usr/bin/time -v (the max over the runs). Prints a table.
#
# Usage: scripts/bench-streams-vs-tcpflow.sh [CAPTURE...]
#   default captures: gen/http-bulk.pcap and gen/mixed.pcap of the corpus (FLOWPEEK_CORPUS,
#   else ../shared/corpus beside the clone)
# Environment: FLOWPEEK (binary, default target/release/flowpeek under CARGO_TARGET_DIR if
#   set; build it first with `cargo build --release -p flowpeek`), TCPFLOW (default
#   tcpflow), RUNS (3), CORE (0).
# tcpflow writes one file per flow direction: its output goes to a fresh temporary
# directory per run (removed afterwards), so it pays file-creation and write costs that
# flowpeek, which only hashes the bytes, does not: the table shows both, not a verdict.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
cd "$FLOWPEEK_ROOT"
FLOWPEEK=${FLOWPEEK:-$FLOWPEEK_TARGET/release/flowpeek}
TCPFLOW=${TCPFLOW:-tcpflow}
RUNS=${RUNS:-3}
CORE=${CORE:-0}
if [ $# -gt 0 ]; then
    CAPTURES=("$@")
else
    require_corpus bench-streams-vs-tcpflow
    CAPTURES=("$FLOWPEEK_CORPUS/gen/http-bulk.pcap" "$FLOWPEEK_CORPUS/gen/mixed.pcap")
fi

[ -x "$FLOWPEEK" ] || { echo "no $FLOWPEEK: run cargo build --release -p flowpeek" >&2; exit 1; }
command -v "$TCPFLOW" >/dev/null || { echo "no tcpflow" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (GNU time)" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# run FILE CMD...: best wall time (s, from date +%s%N around the run), and the user and
# sys CPU seconds of that run, and the max peak RSS (KiB) over $RUNS runs.
run() {
    local file=$1; shift
    local best="" usr="" sys="" rss=0 i t0 t1 t r u s
    for ((i = 0; i < RUNS; i++)); do
        local out="$WORK/out.$i"
        mkdir -p "$out"
        local cmd=("${@//@OUT@/$out}")
        t0=$(date +%s%N)
        if ! /usr/bin/time -v -o "$WORK/time" taskset -c "$CORE" "${cmd[@]}" >/dev/null 2>"$WORK/err"; then
            echo "failed: ${cmd[*]}" >&2
            cat "$WORK/err" "$WORK/time" >&2
            exit 1
        fi
        t1=$(date +%s%N)
        t=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", (b - a) / 1e9}')
        r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time")
        u=$(awk -F': ' '/User time/ {print $2}' "$WORK/time")
        s=$(awk -F': ' '/System time/ {print $2}' "$WORK/time")
        if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN {exit !(a < b)}'; then
            best=$t usr=$u sys=$s
        fi
        [ "$r" -gt "$rss" ] && rss=$r
        rm -rf "$out"
    done
    echo "$best $usr $sys $rss"
}

printf '%-16s %6s %7s  %-9s %7s %6s %6s %8s %8s %8s\n' capture MB packets tool "wall s" "user" "sys" "MB/s" "kpkt/s" "RSS MiB"
for cap in "${CAPTURES[@]}"; do
    [ -r "$cap" ] || { echo "cannot read $cap" >&2; exit 1; }
    bytes=$(stat -c %s "$cap")
    # Packet count from flowpeek's own summary (stderr).
    pkts=$("$FLOWPEEK" streams --json --summary "$cap" 2>&1 >/dev/null |
        grep -oiE '([0-9]+) packets|packets[^0-9]*([0-9]+)' | grep -oE '[0-9]+' | head -1 || true)
    pkts=${pkts:-0}
    # Warm the page cache so that both tools read from memory.
    cat "$cap" >/dev/null
    for tool in flowpeek tcpflow; do
        if [ "$tool" = flowpeek ]; then
            read -r best usr sys rss < <(run "$cap" "$FLOWPEEK" streams --json "$cap")
        else
            read -r best usr sys rss < <(run "$cap" "$TCPFLOW" -r "$cap" -o @OUT@)
        fi
        awk -v c="$(basename "$cap")" -v b="$bytes" -v p="$pkts" -v tool="$tool" -v t="$best" -v u="$usr" -v s="$sys" -v r="$rss" 'BEGIN {
            printf "%-16s %6.1f %7d  %-9s %7.3f %6.2f %6.2f %8.1f %8.1f %8.1f\n",
                c, b / 1e6, p, tool, t, u, s, (t > 0 ? b / 1e6 / t : 0), (t > 0 ? p / 1e3 / t : 0), r / 1024 }'
    done
done
echo "(best of $RUNS runs each by wall time, taskset -c $CORE; user/sys: CPU s of that run; MB/s = capture file bytes / wall s; RSS = max peak over runs)"
