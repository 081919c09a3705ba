//! Live capture source: Linux `AF_PACKET` sockets with a `TPACKET_V3` memory-mapped ring.
//!
//! [`AfPacketSocket::open`] creates a raw packet socket, asks the kernel for a `TPACKET_V3`
//! receive ring of [`RingConfig::block_count`] blocks of [`RingConfig::block_size`] bytes,
//! maps it, binds the socket to one interface and, optionally, joins a fanout group so that
//! several sockets (one per worker thread) share the interface's traffic.
//! [`AfPacketSocket::poll_batch`] then waits for filled blocks and hands every frame in them
//! to a callback as a slice borrowed straight from the ring: nothing is copied and nothing
//! is allocated per packet. A block goes back to the kernel as soon as its frames have been
//! handed out.
//!
//! # What is captured
//!
//! Both directions: frames the interface receives and frames it sends (`ETH_P_ALL`). The
//! frame starts at the link-layer header the device uses ([`AfPacketSocket::link_type`]:
//! Ethernet for Ethernet, veth and loopback devices, bare IP for `tun` devices and other
//! header-less links). Timestamps are the kernel's receive timestamps, in nanoseconds since
//! the Unix epoch, the engine's clock.
//!
//! A frame larger than what a block can hold is truncated by the kernel; it is still
//! delivered (the slice is shorter than the frame was on the wire) and counted in
//! [`AfPacketStats::truncated`]. With `TPACKET_V3` the limit is the block size, not
//! [`RingConfig::frame_size`], so even GSO/GRO super-packets of 64 KiB fit in the default
//! 1 MiB blocks. Offloads still matter for analysis: with TSO/GSO/GRO on, the capture holds
//! the super-packets the stack handled, not the frames on the wire (`ethtool -K IF tso off
//! gso off gro off` to see those).
//!
//! # Fanout and symmetry
//!
//! A stateful monitor must see both directions of a connection in the same worker. Two
//! modes are offered ([`FanoutMode`]):
//!
//! - [`FanoutMode::Symmetric`] (recommended): `PACKET_FANOUT_CBPF` with a classic BPF
//!   program built here ([`symmetric_fanout_program`]). It adds the source and destination
//!   addresses (IPv4, or the eight 32-bit words of both IPv6 addresses) and, for TCP, UDP
//!   and SCTP, the two ports, then mixes the sum (multiply by a 32-bit golden-ratio
//!   constant, xor-fold). Addition commutes, so the result is the same for both directions
//!   *by construction*, whatever the kernel version or the NIC. IPv4 fragments and IPv6
//!   packets with extension headers before the transport header are spread by their
//!   addresses only (all fragments of a datagram stay together). Non-IP frames, and frames
//!   whose VLAN tag was not stripped by the driver, all go to the first socket. The kernel
//!   takes the program's result modulo the number of sockets in the group. Needs Linux 4.3.
//! - [`FanoutMode::Hash`]: `PACKET_FANOUT_HASH`, the kernel's own flow hash. Since Linux 4.9
//!   (commit "packet: Use symmetric hash for PACKET_FANOUT_HASH") the kernel computes it
//!   with `__skb_get_hash_symmetric`, which sorts the addresses and ports before hashing,
//!   so it is symmetric too; from 4.2 to 4.8 it used `skb_get_hash`, which returns the
//!   NIC's RSS hash or the sending socket's random `sk_txhash` when there is one and is
//!   *not* symmetric. Use it only on kernels known to be ≥ 4.9 (or with a single worker).
//!
//! # Errors
//!
//! Opening reports [`AfPacketError`]s that say what to do: a missing interface, missing
//! privileges (`CAP_NET_RAW`), a ring the kernel cannot allocate, a fanout group id taken by
//! a group of another mode. [`AfPacketSocket::poll_batch`] returns the socket's pending
//! error (`ENETDOWN` when the interface goes down or away) as an [`std::io::Error`].
//!
//! # Namespaces
//!
//! The interface is looked up, and the socket created, in the network namespace of the
//! calling *thread*: a thread that entered another namespace (`setns`) captures there.
//!
//! # Files
//!
//! [`socket`] (the socket, its ring and the [`crate::io::Source`] the workers read), [`bpf`]
//! (the fanout program, checked against [`crate::io::shard::fanout_hash`]) and `sys` (each
//! system call wrapped once with its safety argument). What this module must not do: copy or
//! allocate per packet, or parse a frame beyond the block framing.

pub mod bpf;
pub mod socket;
mod sys;

pub use bpf::symmetric_fanout_program;
pub use socket::AfPacketSocket;

use std::io;
use std::time::Duration;

/// Shape of the receive ring shared with the kernel.
///
/// The ring takes `block_size × block_count` bytes of locked kernel memory (64 MiB with the
/// defaults) for as long as the socket is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// Bytes per block: a multiple of the page size (4096), at least 4096. Default 1 MiB.
    pub block_size: u32,
    /// Number of blocks. Default 64.
    pub block_count: u32,
    /// Nominal frame size: a multiple of 16 dividing `block_size`, at least 64. It only
    /// sizes the kernel's bookkeeping; with `TPACKET_V3` frames are packed back to back and
    /// may be as large as a block. Default 2048.
    pub frame_size: u32,
    /// How long the kernel may keep a partly filled block before handing it over
    /// (`tp_retire_blk_tov`): the worst-case delivery latency on a quiet link. Whole
    /// milliseconds, at least 1. Default 10 ms.
    pub block_timeout: Duration,
}

impl Default for RingConfig {
    fn default() -> RingConfig {
        RingConfig {
            block_size: 1 << 20,
            block_count: 64,
            frame_size: 2048,
            block_timeout: Duration::from_millis(10),
        }
    }
}

impl RingConfig {
    /// Total bytes of the ring.
    pub fn ring_bytes(&self) -> u64 {
        u64::from(self.block_size) * u64::from(self.block_count)
    }

    pub(super) fn check(&self) -> Result<(), String> {
        const PAGE: u32 = 4096;
        if self.block_size < PAGE || self.block_size % PAGE != 0 {
            return Err(format!(
                "block size {} is not a positive multiple of the page size (4096)",
                self.block_size
            ));
        }
        if self.block_count == 0 {
            return Err("block count is 0".into());
        }
        if self.frame_size < 64
            || self.frame_size % 16 != 0
            || self.block_size % self.frame_size != 0
        {
            return Err(format!(
                "frame size {} must be a multiple of 16, at least 64, dividing the block size {}",
                self.frame_size, self.block_size
            ));
        }
        if (self.block_size / self.frame_size)
            .checked_mul(self.block_count)
            .is_none()
            || self.ring_bytes() > usize::MAX as u64
        {
            return Err(format!(
                "{} blocks of {} bytes is too large a ring",
                self.block_count, self.block_size
            ));
        }
        let ms = self.block_timeout.as_millis();
        if ms == 0 || ms > u128::from(u32::MAX) {
            return Err(format!(
                "block timeout {:?} must be between 1 ms and 2^32 ms",
                self.block_timeout
            ));
        }
        Ok(())
    }
}

/// How a fanout group spreads packets over its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FanoutMode {
    /// The kernel's flow hash (`PACKET_FANOUT_HASH`); symmetric only on Linux ≥ 4.9 (see
    /// the module documentation).
    Hash,
    /// A classic BPF program computing a hash symmetric by construction
    /// (`PACKET_FANOUT_CBPF`, [`symmetric_fanout_program`]). Linux ≥ 4.3.
    Symmetric,
}

/// A fanout group to join: every socket of the host opened on the same interface with the
/// same `id` and mode shares that interface's packets, each packet going to exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FanoutGroup {
    /// Group id, unique per network namespace: pick one no other program uses.
    pub id: u16,
    /// How packets are spread.
    pub mode: FanoutMode,
}

/// Counters of one socket since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfPacketStats {
    /// Packets the kernel accepted for this socket (delivered or dropped), from
    /// `PACKET_STATISTICS`.
    pub packets: u64,
    /// Packets the kernel dropped because the ring was full, from `PACKET_STATISTICS`.
    pub drops: u64,
    /// Times the ring filled up and the kernel froze the queue (`tp_freeze_q_cnt`).
    pub freezes: u64,
    /// Frames handed to `poll_batch` callbacks.
    pub delivered: u64,
    /// Delivered frames that were cut short (captured length below the length on the wire).
    pub truncated: u64,
}

/// Why a packet socket could not be opened.
///
/// Every message names the interface, the problem and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AfPacketError {
    /// No interface of that name in this network namespace.
    #[error("no interface named {ifname:?}: check `ip link` (the name is looked up in the capturing thread's network namespace)")]
    NoSuchInterface {
        /// The name given.
        ifname: String,
    },
    /// The name cannot be an interface name (empty, too long, or with a NUL byte).
    #[error("{ifname:?} is not a valid interface name (1 to 15 bytes, no NUL); check `ip link` for the names")]
    BadInterfaceName {
        /// The name given.
        ifname: String,
    },
    /// The process may not open packet sockets.
    #[error("{ifname}: no permission for live capture: {op} failed ({source}); AF_PACKET capture needs the CAP_NET_RAW capability, which this process does not have; {fix}")]
    PermissionDenied {
        /// The interface.
        ifname: String,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
        /// What to do (it differs for a process running as root and one that is not).
        fix: &'static str,
    },
    /// The ring configuration is not one the kernel accepts.
    #[error("{ifname}: invalid ring configuration: {detail}")]
    BadRing {
        /// The interface.
        ifname: String,
        /// What is wrong.
        detail: String,
    },
    /// The kernel could not allocate or map the ring.
    #[error("{ifname}: could not {op} for a ring of {mib} MiB: {source}; use fewer or smaller blocks (or raise the memlock limit, `ulimit -l`)")]
    RingAlloc {
        /// The interface.
        ifname: String,
        /// "allocate the ring", "map the ring".
        op: &'static str,
        /// Ring size in MiB.
        mib: u64,
        /// The underlying error.
        source: io::Error,
    },
    /// The fanout group exists with another mode or flags, or the kernel lacks the mode.
    #[error("{ifname}: could not join fanout group {id} ({mode:?}): {source}; the id may be in use by another program with a different mode (pick another id), or the kernel is too old for this mode (Symmetric needs Linux 4.3)")]
    Fanout {
        /// The interface.
        ifname: String,
        /// Group id.
        id: u16,
        /// Mode asked for.
        mode: FanoutMode,
        /// The underlying error.
        source: io::Error,
    },
    /// Receiving failed: the socket's pending error (`ENETDOWN` when the interface went down
    /// or away), or the wait for frames.
    #[error("{ifname}: {source}")]
    Receive {
        /// The interface.
        ifname: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Any other system call failure.
    #[error("{ifname}: {op} failed: {source}{hint}")]
    Io {
        /// The interface.
        ifname: String,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
        /// What to try, or empty.
        hint: &'static str,
    },
}

/// What to do about a missing `CAP_NET_RAW`: a process running as root without it had the
/// capability taken away (a container, a systemd unit, `capsh`); any other needs root or a
/// file capability on the binary.
pub(super) fn permission_fix() -> &'static str {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        "this process runs as root but CAP_NET_RAW was removed from its capabilities (by a container runtime, a systemd unit or capsh/setpriv): give it back, e.g. `docker run --cap-add NET_RAW`, or CapabilityBoundingSet=/AmbientCapabilities=CAP_NET_RAW in the unit"
    } else {
        "run flowpeek as root (sudo), or grant the capability to the binary once: `sudo setcap cap_net_raw+ep $(command -v flowpeek)`"
    }
}
