#!/usr/bin/env bash
# Soak test: the bench generator feeds netmap-layout shm rings for DURATION seconds
# (default 600) while `flowpeek run` hosts streamhash and noop, the plugins are reloaded
# (copy + rename over) every RELOAD_EVERY seconds, and flowpeek's RSS is sampled every
# SAMPLE_EVERY seconds into a CSV. At the end every connection the generator completed
# (its manifest) must have a streamhash record with the same SHA-256 both ways.
#
#   scripts/soak.sh                  # 10 minutes
#   DURATION=60 scripts/soak.sh      # a short run
#
# Environment: DURATION (s, 600), RATE (packets/s, 200000), FLOWS (20000), RELOAD_EVERY (30),
# SAMPLE_EVERY (10), OUT (work directory, default /tmp/flowpeek-soak-PID, kept),
# SKIP_BUILD=1 (use the binaries and plugins already in target/release, under
# CARGO_TARGET_DIR if set).
set -euo pipefail

. "$(dirname "$0")/lib.sh"
cd "$FLOWPEEK_ROOT"
rel=$FLOWPEEK_TARGET/release
duration=${DURATION:-600}
rate=${RATE:-200000}
flows=${FLOWS:-20000}
reload_every=${RELOAD_EVERY:-30}
sample_every=${SAMPLE_EVERY:-10}
out=${OUT:-/tmp/flowpeek-soak-$$}
name=flowpeek-soak-$$

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "soak: building (cargo build --release) ..."
    cargo build --release --quiet -p flowpeek -p flowpeek-bench \
        -p flowpeek-plugin-streamhash -p flowpeek-plugin-noop
fi

rm -rf "$out" && mkdir -p "$out/plugins" "$out/logs" "$out/lib"
chmod 755 "$out/plugins"
# Private copies of the built plugins: a concurrent build of target/release must not make a
# reload fail half-way.
for p in streamhash noop; do cp "$rel/lib$p.so" "$out/lib/$p.so"; done
install_plugins() {
    # Copy under a name the host ignores, then rename over: the watcher sees a complete file.
    for p in streamhash noop; do
        cp "$out/lib/$p.so" "$out/plugins/.$p.so.tmp"
        chmod 755 "$out/plugins/.$p.so.tmp"
        mv -f "$out/plugins/.$p.so.tmp" "$out/plugins/$p.so"
    done
}
install_plugins
# Connections are read as they arrive: 64 KiB holds what waits behind a gap.
echo "buffer = 65536" > "$out/plugins/streamhash.toml"

gen=
run=
cleanup() {
    [ -n "$gen" ] && kill "$gen" 2>/dev/null || true
    [ -n "$run" ] && kill "$run" 2>/dev/null || true
    rm -f "/dev/shm/$name"
}
trap cleanup EXIT

echo "soak: generator -> shm:$name (2 rings, imix, $flows flows, $rate packets/s, $duration s); work dir $out"
cp "$rel/flowpeek" "$rel/flowpeek-bench" "$out/lib/"
"$out/lib/flowpeek-bench" gen --out "shm:$name" --rings 2 --slots 8192 --imix \
    --flows "$flows" --conn-packets 32 --rate "$rate" --duration "$duration" \
    --manifest "$out/manifest.jsonl" --quiet --json > "$out/gen.json" &
gen=$!
for _ in $(seq 200); do [ -e "/dev/shm/$name" ] && break; sleep 0.05; done
[ -e "/dev/shm/$name" ] || { echo "soak: the generator did not create /dev/shm/$name" >&2; exit 1; }

"$out/lib/flowpeek" run --source "shm:$name" --plugins "$out/plugins" --cores 2 \
    --log-dir "$out/logs" --stats "$out/stats.json" --timeout 60 --quiet \
    2> "$out/flowpeek.err" &
run=$!

echo "t_s,rss_kib" > "$out/rss.csv"
start=$(date +%s)
next_sample=0
next_reload=$reload_every
reloads=0
while kill -0 "$run" 2>/dev/null; do
    now=$(( $(date +%s) - start ))
    if [ "$now" -ge "$next_sample" ]; then
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$run/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$now,$rss" >> "$out/rss.csv"
        next_sample=$(( next_sample + sample_every ))
    fi
    if [ "$now" -ge "$next_reload" ] && [ "$now" -lt "$duration" ]; then
        install_plugins
        reloads=$(( reloads + 1 ))
        next_reload=$(( next_reload + reload_every ))
    fi
    sleep 1
done
rc_run=0
wait "$run" || rc_run=$?
run=
rc_gen=0
wait "$gen" || rc_gen=$?
gen=
if [ "$rc_run" != 0 ] || [ "$rc_gen" != 0 ]; then
    echo "soak: flowpeek exited $rc_run, generator $rc_gen; see $out/flowpeek.err" >&2
    exit 1
fi

python3 - "$out" "$reloads" <<'PY'
import csv, json, sys
out, reloads = sys.argv[1], int(sys.argv[2])
# Keep only what is compared: millions of parsed records as dicts would take gigabytes.
sent = {}
for line in open(f"{out}/manifest.jsonl"):
    m = json.loads(line)
    sent[(m["client"], m["server"])] = (m["c2s"]["sha256"], m["s2c"]["sha256"])
seen = set()
ok = dups = 0
for line in open(f"{out}/logs/streamhash.jsonl"):
    r = json.loads(line)
    k = (r["client"], r["server"])
    if k in seen:
        dups += 1
    seen.add(k)
    if sent.get(k) == (r["c2s"]["sha256"], r["s2c"]["sha256"]):
        ok += 1
missing = sum(1 for k in sent if k not in seen)
rss = [int(r["rss_kib"]) for r in csv.DictReader(open(f"{out}/rss.csv"))]
stats = json.load(open(f"{out}/stats.json"))
gen = json.load(open(f"{out}/gen.json"))
plugins = stats.get("plugins", {})
gens = {p: v.get("generations") for p, v in plugins.items()} if isinstance(plugins, dict) else plugins
print(f"soak: generator sent {gen.get('sent')} packets ({gen.get('refused', 0)} ring-full retries); "
      f"flowpeek read {stats.get('packets')} in {stats.get('seconds', 0):.0f} s")
print(f"soak: {reloads} reloads of streamhash + noop; generations {gens}; "
      f"retained images {stats.get('retained_images')}")
print(f"soak: RSS samples {len(rss)}: min {min(rss)/1024:.1f} MiB, max {max(rss)/1024:.1f} MiB, "
      f"first {rss[0]/1024:.1f}, last {rss[-1]/1024:.1f} MiB ({out}/rss.csv)")
print(f"soak: {ok} of {len(sent)} completed connections checked byte-exact "
      f"({missing} without a record, {dups} duplicate records)")
sys.exit(0 if ok == len(sent) else 1)
PY
