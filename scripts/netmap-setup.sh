#!/bin/sh
# netmap-setup.sh — build and load netmap on a REAL netmap host, then prepare an interface
# for flowpeek (netmap:IF or netmap:IF-K, one hardware ring per worker).
#
# FOR REAL NETMAP HOSTS ONLY. UNTESTED HERE: the development machines have no netmap module
# and cannot reach github.com. Read it, adapt IF/N/DRIVER, and run the steps as root.
#
# Usage: sudo scripts/netmap-setup.sh IF N [DRIVER]
#   IF      interface to capture on (e.g. enp1s0f0)
#   N       number of queues = flowpeek workers (one core each)
#   DRIVER  netmap-patched driver to build (ixgbe, i40e, ice, mlx5, igb, e1000e, virtio_net...);
#           omit to use netmap's generic (emulated, slower) adapter.
set -eu

IF=${1:?usage: netmap-setup.sh IF N [DRIVER]}
N=${2:?usage: netmap-setup.sh IF N [DRIVER]}
DRIVER=${3:-}
SRC=${NETMAP_SRC:-/usr/local/src/netmap}

# 1. Prerequisites: kernel headers for the running kernel, a compiler, git.
#    Debian/Ubuntu: apt-get install linux-headers-$(uname -r) build-essential git ethtool
#    RHEL/Fedora:   dnf install kernel-devel-$(uname -r) gcc make git ethtool
if [ ! -d "/lib/modules/$(uname -r)/build" ]; then
    echo "kernel headers for $(uname -r) are missing: install linux-headers-$(uname -r)" >&2
    exit 1
fi

# 2. Source.
if [ ! -d "$SRC" ]; then
    git clone https://github.com/luigirizzo/netmap.git "$SRC"
fi
cd "$SRC"

# 3. Configure and build. --drivers= selects the patched NIC drivers (their sources are
#    fetched for the running kernel); without it only the generic adapter is built.
if [ -n "$DRIVER" ]; then
    ./configure --drivers="$DRIVER"
else
    ./configure --no-drivers
fi
make -j"$(nproc)"

# 4. Load netmap, then swap the stock driver for the patched one (this takes the link down).
insmod ./netmap.ko
if [ -n "$DRIVER" ]; then
    rmmod "$DRIVER" 2>/dev/null || true
    insmod "./$DRIVER/$DRIVER.ko" 2>/dev/null || insmod "$(find . -name "$DRIVER.ko" | head -n 1)"
fi
test -c /dev/netmap || { echo "/dev/netmap did not appear" >&2; exit 1; }
chmod 600 /dev/netmap

# 5. The interface: up, promiscuous, offloads that merge or rewrite frames off.
ip link set "$IF" up promisc on
ethtool -K "$IF" gro off lro off tso off gso off rxvlan off 2>/dev/null || true

# 6. N combined queues, and a SYMMETRIC RSS key (0x6d5a repeated: 40 bytes for most NICs,
#    52 for i40e/ice — adjust) so both directions of a TCP connection hash to one queue.
ethtool -L "$IF" combined "$N"
KEY=$(printf '6d:5a:%.0s' $(seq 1 20) | sed 's/:$//')
ethtool -X "$IF" hkey "$KEY" equal "$N"
ethtool -N "$IF" rx-flow-hash tcp4 sdfn 2>/dev/null || true
ethtool -N "$IF" rx-flow-hash tcp6 sdfn 2>/dev/null || true

# 7. IRQ / core pinning: queue k's interrupt on core k (flowpeek pins worker k to core k).
#    Stop irqbalance first or it will undo this.
systemctl stop irqbalance 2>/dev/null || true
k=0
for irq in $(grep -E "$IF-(TxRx|rx|combined|comp)?-?[0-9]+" /proc/interrupts | cut -d: -f1 | tr -d ' '); do
    [ "$k" -lt "$N" ] || break
    echo "$k" > "/proc/irq/$irq/smp_affinity_list"
    k=$((k + 1))
done

echo "netmap ready: run flowpeek on netmap:$IF (all rings) or netmap:$IF-0 .. netmap:$IF-$((N - 1))"
