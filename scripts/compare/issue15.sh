#!/usr/bin/env bash
# `flowpeek streams` against libnids on the 483 MB real-traffic input of issue 15
# (big-input.sh: six renamed, time-shifted copies of gen/http-bulk + gen/http-small, merged),
# side by side in one run: the tools alternate, ROUNDS times, and each row gives the best
# wall time and the peak RSS (max over the rounds, /usr/bin/time -v).
#
#   libnids                          nidsflow (CRC-32 of every delivered byte), taskset -c 0
#   flowpeek --cores 1 --no-sha256   CRC-32 only, one worker (see CORES1)
#   flowpeek --no-sha256             CRC-32 only, every core
#   flowpeek --cores 1               SHA-256 + CRC-32, one worker
#   flowpeek                         SHA-256 + CRC-32, every core
#   BASE (optional): another flowpeek binary, `streams --json --no-sha256`, taskset -c 0
#
# "One core" for flowpeek --cores 1 means one reassembly worker; its reader thread (read +
# framing) and the output thread run beside it. CORES1=taskset pins the whole process to
# one CPU (taskset -c 0) instead, for the strict single-CPU figure; CORES1=worker only the
# unpinned one; CORES1=both (the default) reports both.
#
# Usage: scripts/compare/issue15.sh [INPUT]   (default: big-input.sh's /dev/shm/flowpeek-big.pcap)
# Environment: ROUNDS (5), BASE (a flowpeek binary to compare with), NO_INSTALL=1.
# Output: a markdown table on stdout; the runs' outputs and times under target/issue15/.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
cd "$FLOWPEEK_ROOT"
ROUNDS=${ROUNDS:-5}
CORES1=${CORES1:-both}
OUT=$FLOWPEEK_TARGET/issue15
mkdir -p "$OUT"
say() { echo "issue15: $*" >&2; }
die() { echo "issue15: error: $*" >&2; exit 1; }
INPUT=${1:-$("$HERE/big-input.sh")}
[ -r "$INPUT" ] || die "cannot read $INPUT"

PKGS=(libnids-dev libpcap-dev libnet1-dev libglib2.0-dev zlib1g-dev pkg-config gcc make time util-linux)
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
say "building flowpeek (cargo --release) and libnids/nidsflow"
cargo build --release -q -p flowpeek || die "cargo build failed"
FP=$FLOWPEEK_TARGET/release/flowpeek
make -s -C "$HERE/libnids" OUT="$OUT" >&2 || die "building nidsflow failed"
cat "$INPUT" >/dev/null # page cache

NAMES=() CMDS=()
add() { NAMES+=("$1"); shift; CMDS+=("$*"); }
add "libnids (nidsflow), taskset -c 0" taskset -c 0 "$OUT/nidsflow" "$INPUT"
if [ "$CORES1" != taskset ]; then
    add "flowpeek streams --json --no-sha256 --cores 1" "$FP" streams --json --no-sha256 --cores 1 "$INPUT"
fi
if [ "$CORES1" != worker ]; then
    add "flowpeek streams --json --no-sha256 --cores 1, taskset -c 0" taskset -c 0 "$FP" streams --json --no-sha256 --cores 1 "$INPUT"
fi
CRCALL=${#NAMES[@]}
add "flowpeek streams --json --no-sha256 (all $(nproc) cores)" "$FP" streams --json --no-sha256 "$INPUT"
SHA1=${#NAMES[@]}
add "flowpeek streams --json --cores 1 (SHA-256)" "$FP" streams --json --cores 1 "$INPUT"
SHAALL=${#NAMES[@]}
add "flowpeek streams --json (SHA-256, all $(nproc) cores)" "$FP" streams --json "$INPUT"
if [ -n "${BASE:-}" ]; then
    add "BASE streams --json --no-sha256, taskset -c 0" taskset -c 0 "$BASE" streams --json --no-sha256 "$INPUT"
fi
n=${#NAMES[@]}
declare -a BEST RSS
for ((i = 0; i < n; i++)); do BEST[i]=""; RSS[i]=0; done
for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        # shellcheck disable=SC2086
        /usr/bin/time -v -o "$OUT/time.$i" ${CMDS[i]} >"$OUT/out.$i" 2>"$OUT/err.$i" ||
            die "failed: ${CMDS[i]} ($(tail -3 "$OUT/err.$i"))"
        w=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (k = 1; k <= n; k++) s = s * 60 + a[k]; print s}' "$OUT/time.$i")
        m=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/time.$i")
        if [ -z "${BEST[i]}" ] || awk -v a="$w" -v b="${BEST[i]}" 'BEGIN {exit !(a < b)}'; then BEST[i]=$w; fi
        [ "$m" -gt "${RSS[i]}" ] && RSS[i]=$m
    done
    say "round $((r + 1))/$ROUNDS done"
done
# The records must not depend on the cores.
cmp -s "$OUT/out.1" "$OUT/out.$CRCALL" || die "the records of --cores 1 and all cores differ (CRC-32)"
cmp -s "$OUT/out.$SHA1" "$OUT/out.$SHAALL" || die "the records of --cores 1 and all cores differ (SHA-256)"
echo "The records of --cores 1 and of all cores are identical (cmp), with and without SHA-256."
packets=$(capinfos -c -M "$INPUT" 2>/dev/null | awk -F: '/Number of packets/ {gsub(/ /, "", $2); print $2}')
echo "Input: $INPUT, $(stat -c %s "$INPUT") bytes, ${packets:-?} packets, $(wc -l <"$OUT/out.1") connections (flowpeek)."
echo "Best of $ROUNDS alternating rounds; peak RSS: max over the rounds. Ratio: libnids wall / row wall."
echo
echo "| command | wall (s) | × libnids | peak RSS (MiB) |"
echo "| --- | --- | --- | --- |"
for ((i = 0; i < n; i++)); do
    ratio=$(awk -v a="${BEST[0]}" -v b="${BEST[i]}" 'BEGIN {printf "%.2f", a / b}')
    printf '| %s | %s | %s | %.1f |\n' "${NAMES[i]}" "${BEST[i]}" "$ratio" "$(awk -v k="${RSS[i]}" 'BEGIN {print k / 1024}')"
done
