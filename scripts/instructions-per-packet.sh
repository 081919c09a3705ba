#!/usr/bin/env bash
# Instructions and simulated L1 data-cache misses per packet of the engine benchmark
# `pkts_64b/10k_flows/no_monitor`, counted by valgrind's callgrind: a figure that does not
# move with the machine's load, for comparing builds on a noisy VM where wall-clock rounds
# swing by ±40% (BENCHMARKS.md, issue 10). Cycles are not counted: the VM exposes no
# hardware counters, and a count of instructions says nothing of stalls beyond the
# simulated caches.
#
# Usage: scripts/instructions-per-packet.sh [BENCH_BINARY...]
#   Each argument is an engine bench binary (built with `cargo bench -p flowpeek --bench
#   engine --no-run`, in the build's own worktree and target directory). Without
#   arguments, this tree's binary is built and measured.
# Environment: BENCH (the criterion filter, default 'pkts_64b/10k_flows/no_monitor$'),
#   CHUNK (packets per timed iteration of that bench, default 20000: bench_64b's chunk for
#   10k flows), SECONDS_EACH (criterion --profile-time, default 15).
#
# Only the calls of `Ring::run_chunk` made from criterion's timed loop count (the set-up,
# handshakes and validation passes are left out); per packet = their inclusive cost /
# (calls x CHUNK). Output: one line per binary.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
cd "$FLOWPEEK_ROOT"
BENCH=${BENCH:-'pkts_64b/10k_flows/no_monitor$'}
CHUNK=${CHUNK:-20000}
SECONDS_EACH=${SECONDS_EACH:-15}
require_packages instructions-per-packet valgrind
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
    out=$(cargo bench -p flowpeek --bench engine --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "engine" and m.get("executable"):
        print(m["executable"])')
    bins=("$out")
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for bin in "${bins[@]}"; do
    [ -x "$bin" ] || { echo "instructions-per-packet: $bin is not an executable" >&2; exit 1; }
    valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$tmp/cg.out" \
        "$bin" --bench "$BENCH" --profile-time "$SECONDS_EACH" >/dev/null 2>"$tmp/err" || {
        echo "instructions-per-packet: $bin failed under callgrind:" >&2
        tail -5 "$tmp/err" >&2
        exit 1
    }
    python3 - "$tmp/cg.out" "$bin" "$CHUNK" <<'PY'
import re, sys
path, name, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(path).read().split("\n")
events = next(l.split()[1:] for l in lines if l.startswith("events:"))
names, caller, callee = {}, None, None
calls, totals = 0, [0] * len(events)
for i, line in enumerate(lines):
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?$", line)
    if m:
        kind, ident, label = m.groups()
        if label:
            names[ident] = label
        if kind == "fn":
            caller = names.get(ident, "")
        else:
            callee = names.get(ident, "")
        continue
    if line.startswith("calls=") and callee is not None:
        if "Ring::run_chunk" in callee and "iter_custom" in (caller or ""):
            calls += int(line.split("=")[1].split()[0])
            costs = [int(x) for x in lines[i + 1].split()[1:]]
            totals = [a + b for a, b in zip(totals, costs + [0] * (len(totals) - len(costs)))]
        callee = None
if calls == 0:
    sys.exit(f"instructions-per-packet: no timed Ring::run_chunk calls found for {name}")
per = {e: t / (calls * chunk) for e, t in zip(events, totals)}
shown = " ".join(f"{e} {per[e]:.1f}" for e in ("Ir", "Dr", "Dw", "D1mr", "D1mw", "DLmr") if e in per)
print(f"{name}: {calls} chunks of {chunk} packets; per packet: {shown}")
PY
done
