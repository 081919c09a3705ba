#!/usr/bin/env bash
# Builds the 483 MB real-traffic benchmark input of issue 15 from the corpus's generated
# captures: COPIES (6) copies of gen/http-bulk.pcap + gen/http-small.pcap, the client
# address renamed in each copy (tcprewrite --pnat 198.18.0.2 -> 198.18.K.2), each copy
# shifted in time by K * SHIFT seconds (editcap -t; 0.5), all merged in time order
# (mergecap). The output is never committed.
#
# Usage: scripts/compare/big-input.sh [OUT]   (default: /dev/shm/flowpeek-big.pcap)
# Environment: COPIES (6), SHIFT (0.5), NO_INSTALL=1 (do not apt-get install tcpreplay /
#   wireshark-common when tcprewrite / editcap / mergecap are missing).
# Prints the output's path; skips the work when OUT exists and is newer than this script.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
OUT=${1:-/dev/shm/flowpeek-big.pcap}
COPIES=${COPIES:-6}
SHIFT=${SHIFT:-0.5}
say() { echo "big-input: $*" >&2; }
die() { echo "big-input: error: $*" >&2; exit 1; }
require_corpus big-input
if [ -s "$OUT" ] && [ "$OUT" -nt "$0" ]; then
    echo "$OUT"
    exit 0
fi
need=()
command -v tcprewrite >/dev/null || need+=(tcpreplay)
command -v editcap >/dev/null && command -v mergecap >/dev/null || need+=(wireshark-common)
if [ ${#need[@]} -gt 0 ]; then
    [ "${NO_INSTALL:-0}" = 1 ] && die "missing packages: ${need[*]} (NO_INSTALL=1)"
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/big-input.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
parts=()
for ((k = 1; k <= COPIES; k++)); do
    for cap in http-bulk http-small; do
        src=$FLOWPEEK_CORPUS/gen/$cap.pcap
        [ -r "$src" ] || die "no $src"
        # The client is 198.18.0.2, the server 198.18.0.1 in every gen capture.
        tcprewrite --pnat="198.18.0.2/32:198.18.$k.2/32" --infile="$src" --outfile="$WORK/$cap-$k.r.pcap" ||
            die "tcprewrite failed on $src"
        editcap -t "$(awk -v k="$k" -v s="$SHIFT" 'BEGIN {printf "%.3f", k * s}')" \
            "$WORK/$cap-$k.r.pcap" "$WORK/$cap-$k.pcap" || die "editcap failed"
        rm -f "$WORK/$cap-$k.r.pcap"
        parts+=("$WORK/$cap-$k.pcap")
    done
done
mergecap -F pcap -w "$OUT.tmp" "${parts[@]}" || die "mergecap failed"
mv "$OUT.tmp" "$OUT"
say "$(capinfos -c -M "$OUT" | awk -F: '/Number of packets/ {gsub(/ /, "", $2); print $2}') packets, $(stat -c %s "$OUT") bytes"
echo "$OUT"
