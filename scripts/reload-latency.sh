#!/usr/bin/env bash
# Plugin reload latency on a quiet machine: `flowpeek run` replays the corpus's
# gen/http-small.pcap (paced, one worker) with streamhash, and the plugin is replaced by
# copy + rename RELOADS times, GAP seconds apart. Prints `reload_latency_ms` of --stats
# (each reload, from the file's directory event to the new generation taking traffic), its
# median, and how the test loads ran (`test_loads`). BENCHMARKS.md quotes its figures.
#
#   scripts/reload-latency.sh             # 6 reloads, 0.4 s apart
#   RELOADS=10 SKIP_BUILD=1 scripts/reload-latency.sh
#
# Environment: RELOADS (6), GAP (s, 0.4), PACE (packets/s, 20000), SKIP_BUILD=1 (use the
# binaries in target/release, under CARGO_TARGET_DIR if set), FLOWPEEK_CORPUS.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$FLOWPEEK_ROOT"
require_corpus reload-latency
rel=$FLOWPEEK_TARGET/release
reloads=${RELOADS:-6}
gap=${GAP:-0.4}
pace=${PACE:-20000}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "reload-latency: building (cargo build --release) ..." >&2
    cargo build --release --quiet -p flowpeek -p flowpeek-plugin-streamhash
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/flowpeek-reload-XXXXXX")
run=
trap '[ -n "$run" ] && kill "$run" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/plugins" "$work/logs"
chmod 755 "$work/plugins"
cp "$rel/libstreamhash.so" "$work/lib.so"
cp "$work/lib.so" "$work/plugins/streamhash.so"
"$rel/flowpeek" run --source="pcap:$FLOWPEEK_CORPUS/gen/http-small.pcap" --pace "$pace" \
    --cores 1 --plugins "$work/plugins" --log-dir "$work/logs" --stats "$work/stats.json" \
    --quiet 2>"$work/stderr" &
run=$!
# The first generation is in once its log exists.
for _ in $(seq 200); do [ -e "$work/logs/streamhash.jsonl" ] && break; sleep 0.05; done
if [ ! -e "$work/logs/streamhash.jsonl" ]; then
    echo "reload-latency: the first generation did not start within 10 s; flowpeek's stderr:" >&2
    cat "$work/stderr" >&2
    exit 1
fi
for _ in $(seq "$reloads"); do
    cp "$work/lib.so" "$work/plugins/.next.tmp"
    mv "$work/plugins/.next.tmp" "$work/plugins/streamhash.so"
    sleep "$gap"
done
status=0
wait "$run" || status=$?
run=
if [ "$status" != 0 ]; then
    echo "reload-latency: flowpeek run failed:" >&2
    cat "$work/stderr" >&2
    exit 1
fi
python3 - "$work/stats.json" "$reloads" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
v = d["reload_latency_ms"]
if len(v) != int(sys.argv[2]):
    sys.exit(f"reload-latency: {len(v)} reloads measured of {sys.argv[2]} (the capture ended first? lower GAP)")
s = sorted(v)
print("reload_latency_ms:", " ".join(f"{x:.1f}" for x in v))
print(f"median {s[len(s) // 2]:.1f} ms, min {s[0]:.1f}, max {s[-1]:.1f}; test_loads {d.get('test_loads')}")
PY
