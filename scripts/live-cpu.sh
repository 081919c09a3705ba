#!/usr/bin/env bash
# CPU time per packet of a live AF_PACKET capture (issue 12's live target), side by side with
# tcpdump in one run: a veth pair between two network namespaces (scripts/veth-net.sh),
# tcpreplay --topspeed of a capture into one end, and on the other end, in turn,
#
#   tcpdump -w /dev/null                                      the peer
#   flowpeek run --source afpacket:IF --cores 1 (no plugins)  the engine alone
#   flowpeek run ... streamhash with hash = "crc32"           every byte read through the ABI
#
# The figure is the capturing process's on-CPU time (the sum over its threads of
# /proc/PID/task/*/schedstat, from just before the replay to just after) divided by the
# packets tcpreplay sent. The kernel's softirq work for the veth runs on the sender's CPU and
# is in none of the rows. Each tool sees each capture ROUNDS times, the tools alternating.
#
# A capture is replayed once per run: its connections must be new to the engine (a second
# pass of the same connections would be counted as late copies, through the tombstones).
#
# Usage: scripts/live-cpu.sh [CAPTURE...]
#   default: $FLOWPEEK_CORPUS/gen/http-small.pcap (9,000 short connections) and, if
#   present, /dev/shm/flowpeek-big.pcap (scripts/compare/big-input.sh)
# Environment: ROUNDS (3), NAME (veth-net name, fpcpu), SKIP_BUILD=1.
# Needs root (namespaces), tcpreplay and tcpdump (installed by lib.sh's require_packages).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
cd "$FLOWPEEK_ROOT"
ROUNDS=${ROUNDS:-3}
NAME=${NAME:-fpcpu}
say() { echo "live-cpu: $*" >&2; }
die() { echo "live-cpu: error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root for the network namespaces: sudo $0"
require_packages live-cpu tcpreplay tcpdump
caps=("$@")
if [ ${#caps[@]} -eq 0 ]; then
    require_corpus live-cpu
    caps=("$FLOWPEEK_CORPUS/gen/http-small.pcap")
    [ -r /dev/shm/flowpeek-big.pcap ] && caps+=(/dev/shm/flowpeek-big.pcap)
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    say "building flowpeek and the streamhash plugin (cargo --release)"
    cargo build --release -q -p flowpeek -p flowpeek-plugin-streamhash || die "cargo build failed"
fi
FP=$FLOWPEEK_TARGET/release/flowpeek
SH=$FLOWPEEK_TARGET/release/libstreamhash.so
[ -x "$FP" ] && [ -r "$SH" ] || die "$FP or $SH is missing: build them, or leave SKIP_BUILD unset"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/live-cpu.XXXXXX")
cleanup() {
    "$HERE/veth-net.sh" down "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
"$HERE/veth-net.sh" up "$NAME" >/dev/null
mkdir -p "$WORK/none" "$WORK/streamhash" "$WORK/logs"
cp "$SH" "$WORK/streamhash/"
printf 'hash = "crc32"\n' >"$WORK/streamhash/streamhash.toml"

cpu_ns() {
    local t=0 f a rest
    for f in /proc/"$1"/task/*/schedstat; do
        read -r a rest <"$f" || continue
        t=$((t + a))
    done
    echo "$t"
}

# start TOOL: runs the capturing process in the capture namespace, prints its pid (the
# process gets no stdout of ours, or $(start ...) would wait for it to exit).
start() {
    case $1 in
    tcpdump) ip netns exec "$NAME-a" tcpdump -q -i "${NAME}0" -w /dev/null >/dev/null 2>"$WORK/err" & ;;
    flowpeek | flowpeek+streamhash)
        local dir=$WORK/none
        [ "$1" = flowpeek+streamhash ] && dir=$WORK/streamhash
        rm -rf "$WORK/logs"/*
        ip netns exec "$NAME-a" "$FP" run --source "afpacket:${NAME}0" --plugins "$dir" \
            --log-dir "$WORK/logs" --cores 1 >"$WORK/out" 2>"$WORK/err" &
        ;;
    esac
    echo $!
}

echo "| capture | process | µs of CPU per packet, each round | median |"
echo "| --- | --- | --- | --- |"
for cap in "${caps[@]}"; do
    [ -r "$cap" ] || die "cannot read $cap"
    declare -A got=()
    for ((r = 1; r <= ROUNDS; r++)); do
        for tool in tcpdump flowpeek flowpeek+streamhash; do
            pid=$(start "$tool")
            sleep 1.5 # the socket and its ring are set up: their cost is not per packet
            kill -0 "$pid" 2>/dev/null || die "$tool did not start: $(tail -3 "$WORK/err")"
            c0=$(cpu_ns "$pid")
            ip netns exec "$NAME-b" tcpreplay -q -i "${NAME}1" --topspeed "$cap" >"$WORK/replay" 2>&1 ||
                die "tcpreplay failed: $(tail -3 "$WORK/replay")"
            sleep 0.5
            c1=$(cpu_ns "$pid")
            kill -INT "$pid"
            wait "$pid" 2>/dev/null || true
            sent=$(grep -oE 'Actual: [0-9]+' "$WORK/replay" | awk '{print $2}')
            [ -n "$sent" ] && [ "$sent" -gt 0 ] || die "tcpreplay sent nothing: $(cat "$WORK/replay")"
            us=$(awk -v c="$((c1 - c0))" -v n="$sent" 'BEGIN {printf "%.3f", c / n / 1000}')
            got[$tool]="${got[$tool]:-} $us"
            say "$(basename "$cap") round $r $tool: $sent packets sent, $us µs/packet"
        done
    done
    for tool in tcpdump flowpeek flowpeek+streamhash; do
        med=$(tr ' ' '\n' <<<"${got[$tool]}" | grep . | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
        echo "| $(basename "$cap") | $tool | $(echo ${got[$tool]} | sed 's/ / \/ /g') | $med |"
    done
    unset got
done
