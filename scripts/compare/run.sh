#!/usr/bin/env bash
# Compares flowpeek's TCP reassembly with libnids, gopacket (reassembly), tcpflow and
# tshark on the same captures: wall time (best of $RUNS), peak RSS (/usr/bin/time -v, max
# over the runs), packets/s, and how many connection directions each tool gives the same
# byte count (and CRC-32) as `flowpeek streams --json`. Every tool runs on one core
# (taskset -c $CORE).
#
# Usage: scripts/compare/run.sh [CAPTURE...]
#   default: gen/{http-bulk,mixed,http-small}.pcap of the corpus (FLOWPEEK_CORPUS, else
#   ../shared/corpus beside the clone)
# Environment: RUNS (3), CORE (0), TSHARK_MAX_STREAMS (2000: tshark gets one
#   `-z follow,tcp,raw,N` per stream in one invocation, which costs ~10 ms per stream, so
#   beyond this it follows only the first N streams and the row says so), NO_INSTALL=1
#   (do not apt-get install what is missing).
# Output: a markdown table on stdout; target/compare/results.json; each tool's output
# under target/compare/<capture>/ (target/ is $CARGO_TARGET_DIR if set).
#
# Policy differences that show up as disagreement (not bugs of either side):
#   libnids follows only connections whose handshake it saw and stops a direction at a
#   hole; gopacket's reassembly skips holes (bytes after them still count) and, here,
#   connections without SYN and without data are not printed; tcpflow writes what it got
#   at each sequence offset (holes become zero bytes in the file, a 4-tuple reused after a
#   close gets a new file); tshark's follow reports the bytes of its own TCP analysis.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
ROOT=$FLOWPEEK_ROOT
cd "$ROOT"
RUNS=${RUNS:-3}
CORE=${CORE:-0}
TSHARK_MAX_STREAMS=${TSHARK_MAX_STREAMS:-2000}
OUT=$FLOWPEEK_TARGET/compare
BIN=$OUT/bin
if [ $# -gt 0 ]; then
    CAPTURES=("$@")
else
    require_corpus compare
    CAPTURES=("$FLOWPEEK_CORPUS/gen/http-bulk.pcap" "$FLOWPEEK_CORPUS/gen/mixed.pcap"
        "$FLOWPEEK_CORPUS/gen/http-small.pcap")
fi
say() { echo "compare: $*" >&2; }
die() { echo "compare: error: $*" >&2; exit 1; }

# --- 1. what is missing from Debian's packages -------------------------------------------
PKGS=(libnids-dev libpcap-dev libnet1-dev libglib2.0-dev zlib1g-dev pkg-config gcc make
    golang-go golang-github-google-gopacket-dev golang-golang-x-net-dev golang-golang-x-sys-dev
    tcpflow tshark wireshark-common time util-linux python3)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "${NO_INSTALL:-0}" = 1 ] && die "missing packages: ${missing[*]} (NO_INSTALL=1)"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

# --- 2. build ------------------------------------------------------------------------------
mkdir -p "$BIN"
say "building flowpeek and the streamhash plugin (cargo --release)"
cargo build --release -q -p flowpeek -p flowpeek-plugin-streamhash || die "cargo build failed"
FLOWPEEK=$FLOWPEEK_TARGET/release/flowpeek
[ -x "$FLOWPEEK" ] || die "no $FLOWPEEK"
[ -f "$FLOWPEEK_TARGET/release/libstreamhash.so" ] || die "no $FLOWPEEK_TARGET/release/libstreamhash.so"
mkdir -p "$OUT/plugins"
cp "$FLOWPEEK_TARGET/release/libstreamhash.so" "$OUT/plugins/streamhash.so"
say "building libnids/nidsflow"
make -s -C "$HERE/libnids" OUT="$BIN" >&2 || die "building nidsflow failed"
say "building gopacket/gopacketflow (GOPATH=/usr/share/gocode, GO111MODULE=off)"
(cd "$HERE/gopacket" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o "$BIN/gopacketflow" .) ||
    die "building gopacketflow failed"

# --- 3. measure ----------------------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TIMINGS=$OUT/timings.tsv
printf 'capture\ttool\twall\tuser\tsys\trss_kib\tpackets\tbytes\tnote\n' >"$TIMINGS"

# timed NAME STDOUT_FILE RUNS CMD...: runs CMD pinned to $CORE $RUNS times, stdout to
# STDOUT_FILE; a word @RUN@ in CMD becomes a fresh empty directory for each run (kept for
# the last run at $DIR/NAME). Prints "best_wall user sys max_rss".
timed() {
    local name=$1 stdout=$2 runs=$3; shift 3
    local best="" usr="" sys="" rss=0 i t0 t1 t r u s rundir
    for ((i = 0; i < runs; i++)); do
        rundir=$DIR/$name
        rm -rf "$rundir"
        mkdir -p "$rundir"
        local cmd=("${@//@RUN@/$rundir}")
        t0=$(date +%s%N)
        if ! /usr/bin/time -v -o "$WORK/time" taskset -c "$CORE" "${cmd[@]}" >"$stdout" 2>"$WORK/err"; then
            say "failed: ${cmd[*]}"
            cat "$WORK/err" "$WORK/time" >&2
            return 1
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
    done
    echo "$best $usr $sys $rss"
}

for cap in "${CAPTURES[@]}"; do
    [ -r "$cap" ] || die "cannot read $cap"
    name=$(basename "$cap")
    name=${name%.*}
    DIR=$OUT/$name
    rm -rf "$DIR"
    mkdir -p "$DIR"
    packets=$(capinfos -c -M "$cap" | awk -F: '/Number of packets/ {gsub(/ /, "", $2); print $2}')
    [ -n "$packets" ] || die "capinfos gave no packet count for $cap"
    bytes=$(stat -c %s "$cap")
    cat "$cap" >/dev/null # page cache
    say "$name: $packets packets; reference: flowpeek streams --json"
    "$FLOWPEEK" streams --json "$cap" >"$DIR/reference.jsonl"
    record() { # TOOL NOTE "best usr sys rss"
        local tool=$1 note=$2 b u s r
        read -r b u s r <<<"$3"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$tool" "$b" "$u" "$s" "$r" "$packets" "$bytes" "$note" >>"$TIMINGS"
    }

    say "$name: flowpeek streams"
    res=$(timed fp-streams "$DIR/flowpeek-streams.out" "$RUNS" "$FLOWPEEK" streams --json "$cap")
    record flowpeek-streams "" "$res"

    say "$name: flowpeek streams --no-sha256 (CRC-32 only: the work the C and Go tools do)"
    res=$(timed fp-streams-crc "$DIR/flowpeek-streams-crc.out" "$RUNS" "$FLOWPEEK" streams --json --no-sha256 "$cap")
    record flowpeek-streams-crc32 "--no-sha256" "$res"

    say "$name: flowpeek run + streamhash (--cores 1)"
    res=$(timed fp-run "$DIR/flowpeek-run.out" "$RUNS" "$FLOWPEEK" run --source "pcap:$cap" \
        --plugins "$OUT/plugins" --log-dir @RUN@ --no-watch --quiet --cores 1 --timeout 3600 \
        --buffer-memory 65536)
    cp "$DIR/fp-run/streamhash.jsonl" "$DIR/streamhash.jsonl" || die "flowpeek run wrote no streamhash.jsonl"
    record flowpeek-run-streamhash "--timeout 3600 --buffer-memory 65536" "$res"

    say "$name: libnids"
    res=$(timed nids "$DIR/libnids.out" "$RUNS" "$BIN/nidsflow" "$cap")
    record libnids "" "$res"

    say "$name: gopacket"
    res=$(timed gopacket "$DIR/gopacket.out" "$RUNS" "$BIN/gopacketflow" "$cap")
    record gopacket "" "$res"

    say "$name: tcpflow"
    res=$(timed tcpflow "$DIR/tcpflow.out" "$RUNS" tcpflow -r "$cap" -o @RUN@)
    record tcpflow "writes one file per direction" "$res"

    # tshark: stream indexes first (not timed), then one invocation following them all.
    nstreams=$(tshark -r "$cap" -T fields -e tcp.stream 2>/dev/null | awk 'NF && $1 + 1 > n {n = $1 + 1} END {print n + 0}')
    follow=$nstreams note="all $nstreams streams, one follow tap each"
    if [ "$nstreams" -gt "$TSHARK_MAX_STREAMS" ]; then
        follow=$TSHARK_MAX_STREAMS note="first $follow of $nstreams streams followed (TSHARK_MAX_STREAMS)"
    fi
    say "$name: tshark ($note)"
    targs=()
    for ((i = 0; i < follow; i++)); do targs+=(-z "follow,tcp,raw,$i"); done
    res=$(timed tshark "$DIR/tshark.out" "$RUNS" tshark -r "$cap" -q "${targs[@]}")
    record tshark "$note" "$res"
    rm -rf "$DIR/fp-streams" "$DIR/fp-streams-crc" "$DIR/nids" "$DIR/gopacket" "$DIR/tshark"
done

say "results: $OUT/results.json (outputs under $OUT/<capture>/)"
echo "Per tool: best of $RUNS runs by wall time, taskset -c $CORE; peak RSS: max over runs; agreement: directions whose bytes (and CRC-32) equal flowpeek streams --json."
echo
python3 "$HERE/compare.py" "$OUT"
