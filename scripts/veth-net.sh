#!/usr/bin/env bash
# Two network namespaces joined by a veth pair, for live-capture experiments.
#
#   scripts/veth-net.sh up NAME     create ${NAME}-a and ${NAME}-b:
#                                   ${NAME}0 (in ${NAME}-a) 10.77.0.1/24
#                                   ${NAME}1 (in ${NAME}-b) 10.77.0.2/24
#                                   offloads (tso, gso, gro) off when ethtool is present
#   scripts/veth-net.sh down NAME   delete both namespaces (and with them the veth pair)
#
# Both are idempotent: `up` on an existing setup re-applies addresses and settings, `down`
# on a missing one does nothing. Needs root (or CAP_NET_ADMIN) and iproute2.
#
# Then, for example:
#   ip netns exec NAME-b nc -l 10.77.0.2 5000 &
#   ip netns exec NAME-a flowpeek run --source afpacket:NAME0 ...
#   ip netns exec NAME-a nc 10.77.0.2 5000 < somefile
set -euo pipefail

die() { echo "veth-net: $*" >&2; exit 1; }
say() { echo "veth-net: $*"; }

usage() { die "usage: $0 up|down NAME   (NAME: letters, digits, '-' or '_', at most 14 characters)"; }

[ $# -eq 2 ] || usage
cmd=$1
name=$2
[[ $name =~ ^[A-Za-z0-9_-]{1,14}$ ]] || usage

command -v ip >/dev/null || die "the 'ip' command (iproute2) is missing: install iproute2"
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces and veth pairs need CAP_NET_ADMIN): sudo $0 $*"

ns_a=${name}-a
ns_b=${name}-b
if_a=${name}0
if_b=${name}1

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

up() {
    for ns in "$ns_a" "$ns_b"; do
        if ns_exists "$ns"; then
            say "namespace $ns already exists"
        else
            ip netns add "$ns"
            say "created namespace $ns"
        fi
        ip -n "$ns" link set lo up
    done
    if ip -n "$ns_a" link show "$if_a" >/dev/null 2>&1 && ip -n "$ns_b" link show "$if_b" >/dev/null 2>&1; then
        say "veth pair $if_a <-> $if_b already exists"
    else
        # Leftovers of a half-done run: remove them before creating the pair again.
        ip link del "$if_a" >/dev/null 2>&1 || true
        ip -n "$ns_a" link del "$if_a" >/dev/null 2>&1 || true
        ip -n "$ns_b" link del "$if_b" >/dev/null 2>&1 || true
        ip link add "$if_a" netns "$ns_a" type veth peer name "$if_b" netns "$ns_b"
        say "created veth pair $if_a ($ns_a) <-> $if_b ($ns_b)"
    fi
    ip -n "$ns_a" addr replace 10.77.0.1/24 dev "$if_a"
    ip -n "$ns_b" addr replace 10.77.0.2/24 dev "$if_b"
    ip -n "$ns_a" link set "$if_a" up
    ip -n "$ns_b" link set "$if_b" up
    if command -v ethtool >/dev/null; then
        ip netns exec "$ns_a" ethtool -K "$if_a" tso off gso off gro off >/dev/null 2>&1 \
            || say "note: ethtool could not change offloads on $if_a"
        ip netns exec "$ns_b" ethtool -K "$if_b" tso off gso off gro off >/dev/null 2>&1 \
            || say "note: ethtool could not change offloads on $if_b"
        say "offloads (tso, gso, gro) off on both ends"
    else
        say "note: ethtool not found, offloads left as they are (captures may hold GSO super-packets up to 64 KiB; install ethtool to turn them off)"
    fi
    say "ready: $ns_a/$if_a 10.77.0.1/24 <-> $ns_b/$if_b 10.77.0.2/24"
}

down() {
    local any=0
    for ns in "$ns_a" "$ns_b"; do
        if ns_exists "$ns"; then
            ip netns del "$ns"
            say "deleted namespace $ns"
            any=1
        fi
    done
    # A veth pair left in the root namespace by an interrupted `up`.
    if ip link show "$if_a" >/dev/null 2>&1; then
        ip link del "$if_a"
        say "deleted stray interface $if_a"
        any=1
    fi
    [ $any -eq 1 ] || say "nothing to delete for $name"
}

case $cmd in
    up) up ;;
    down) down ;;
    *) usage ;;
esac
