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

use std::ffi::CString;
use std::io;
use std::mem::{self, offset_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

use crate::wire::LinkType;

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

    fn check(&self) -> Result<(), String> {
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
fn permission_fix() -> &'static str {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        "this process runs as root but CAP_NET_RAW was removed from its capabilities (by a container runtime, a systemd unit or capsh/setpriv): give it back, e.g. `docker run --cap-add NET_RAW`, or CapabilityBoundingSet=/AmbientCapabilities=CAP_NET_RAW in the unit"
    } else {
        "run flowpeek as root (sudo), or grant the capability to the binary once: `sudo setcap cap_net_raw+ep $(command -v flowpeek)`"
    }
}

/// A packet socket bound to one interface, with its receive ring mapped.
///
/// Not `Sync`: one thread polls it. It may be moved to another thread after opening (the
/// namespace it captures in was fixed at opening).
#[derive(Debug)]
pub struct AfPacketSocket {
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    block_size: usize,
    block_count: usize,
    /// Next block to look at.
    current: usize,
    ifname: String,
    ifindex: u32,
    link: Option<LinkType>,
    stats: AfPacketStats,
}

// SAFETY: the ring mapping is owned by this value alone (it is unmapped in `Drop`), and all
// access to it goes through `&mut self`; moving it to another thread is like moving a
// `Vec`. It is deliberately not `Sync`.
#[allow(unsafe_code)]
unsafe impl Send for AfPacketSocket {}

/// `PACKET_FANOUT` mode values (`linux/if_packet.h`).
const PACKET_FANOUT_HASH: u32 = 0;
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_FANOUT_DATA: libc::c_int = 22;

impl AfPacketSocket {
    /// Opens a capture of `ifname` (in the calling thread's network namespace), joining
    /// `fanout` if given.
    pub fn open(
        ifname: &str,
        fanout: Option<FanoutGroup>,
        ring: RingConfig,
    ) -> Result<AfPacketSocket, AfPacketError> {
        let name = || ifname.to_owned();
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
            return Err(AfPacketError::BadInterfaceName { ifname: name() });
        }
        ring.check().map_err(|detail| AfPacketError::BadRing {
            ifname: name(),
            detail,
        })?;
        let cname =
            CString::new(ifname).map_err(|_| AfPacketError::BadInterfaceName { ifname: name() })?;
        let ifindex = sys::if_nametoindex(&cname);
        if ifindex == 0 {
            return Err(AfPacketError::NoSuchInterface { ifname: name() });
        }
        let io_err = |op: &'static str, hint: &'static str| {
            let source = io::Error::last_os_error();
            if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                AfPacketError::PermissionDenied {
                    ifname: name(),
                    op,
                    source,
                    fix: permission_fix(),
                }
            } else {
                AfPacketError::Io {
                    ifname: name(),
                    op,
                    source,
                    hint,
                }
            }
        };

        // Protocol 0: the socket receives nothing until it is bound to the interface below,
        // so no frame of another interface slips into the ring in between.
        let fd = sys::socket().ok_or_else(|| io_err("opening an AF_PACKET socket", ""))?;
        let raw = fd.as_raw_fd();

        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        sys::setsockopt(raw, libc::PACKET_VERSION, &version).ok_or_else(|| {
            io_err(
                "selecting TPACKET_V3",
                "; the kernel is older than 3.2 and lacks TPACKET_V3",
            )
        })?;

        let req = libc::tpacket_req3 {
            tp_block_size: ring.block_size,
            tp_block_nr: ring.block_count,
            tp_frame_size: ring.frame_size,
            tp_frame_nr: (ring.block_size / ring.frame_size) * ring.block_count,
            tp_retire_blk_tov: ring.block_timeout.as_millis() as u32,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        let mib = ring.ring_bytes() >> 20;
        if sys::setsockopt(raw, libc::PACKET_RX_RING, &req).is_none() {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => AfPacketError::PermissionDenied {
                    ifname: name(),
                    op: "setting up the receive ring",
                    source,
                    fix: permission_fix(),
                },
                Some(libc::EINVAL) => AfPacketError::BadRing {
                    ifname: name(),
                    detail: format!("the kernel rejected {req:?}: {source}"),
                },
                _ => AfPacketError::RingAlloc {
                    ifname: name(),
                    op: "allocate",
                    mib,
                    source,
                },
            });
        }
        let ring_len = ring.ring_bytes() as usize;
        let ptr = sys::mmap_ring(raw, ring_len).ok_or_else(|| AfPacketError::RingAlloc {
            ifname: name(),
            op: "map",
            mib,
            source: io::Error::last_os_error(),
        })?;
        // From here `sock` owns the mapping and unmaps it on every error path.
        let mut sock = AfPacketSocket {
            fd,
            ring: ptr,
            ring_len,
            block_size: ring.block_size as usize,
            block_count: ring.block_count as usize,
            current: 0,
            ifname: name(),
            ifindex,
            link: None,
            stats: AfPacketStats::default(),
        };

        let hatype = sys::bind(raw, ifindex).ok_or_else(|| {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODEV) {
                AfPacketError::NoSuchInterface { ifname: name() }
            } else {
                // Restore errno for io_err's classification.
                let code = e.raw_os_error().unwrap_or(0);
                sys::set_errno(code);
                io_err("binding to the interface", "")
            }
        })?;
        sock.link = match hatype {
            libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => Some(LinkType::Ethernet),
            libc::ARPHRD_NONE | libc::ARPHRD_IPGRE | libc::ARPHRD_TUNNEL | libc::ARPHRD_TUNNEL6 => {
                Some(LinkType::RawIp)
            }
            _ => None,
        };

        if let Some(group) = fanout {
            let mode = match group.mode {
                FanoutMode::Hash => PACKET_FANOUT_HASH,
                FanoutMode::Symmetric => PACKET_FANOUT_CBPF,
            };
            let arg: u32 = u32::from(group.id) | (mode << 16);
            let fanout_err = |source| AfPacketError::Fanout {
                ifname: name(),
                id: group.id,
                mode: group.mode,
                source,
            };
            sys::setsockopt(raw, PACKET_FANOUT, &arg)
                .ok_or_else(|| fanout_err(io::Error::last_os_error()))?;
            if group.mode == FanoutMode::Symmetric {
                // Every member (re)installs the same program; the group keeps one.
                let mut prog = symmetric_fanout_program();
                let fprog = libc::sock_fprog {
                    len: prog.len() as u16,
                    filter: prog.as_mut_ptr(),
                };
                sys::setsockopt(raw, PACKET_FANOUT_DATA, &fprog)
                    .ok_or_else(|| fanout_err(io::Error::last_os_error()))?;
            }
        }
        Ok(sock)
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface index (in the namespace the socket was opened in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// How frames of this interface start, or `None` for a link type flowpeek does not
    /// decode (the engine counts such frames as unsupported).
    pub fn link_type(&self) -> Option<LinkType> {
        self.link
    }

    /// The socket's file descriptor (to wait on it together with other descriptors).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Waits up to `timeout` for filled blocks, then hands every frame of every filled block
    /// to `f` as (frame bytes, capture time in ns since the epoch), in capture order, and
    /// returns the blocks to the kernel. Returns the number of frames handed out: 0 when the
    /// timeout expired (or a signal interrupted the wait).
    ///
    /// At most one ring's worth of blocks is delivered per call, so a busy link cannot keep
    /// the caller inside forever; call [`crate::flow::Engine::end_batch`] after each call.
    pub fn poll_batch(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&[u8], u64),
    ) -> io::Result<usize> {
        if !self.block_ready(self.current) {
            let ms = timeout
                .as_nanos()
                .div_ceil(1_000_000)
                .min(libc::c_int::MAX as u128) as libc::c_int;
            let revents = sys::poll(self.fd.as_raw_fd(), ms)?;
            if revents & libc::POLLERR != 0 {
                if let Some(e) = sys::take_socket_error(self.fd.as_raw_fd())? {
                    return Err(e);
                }
            }
            if revents & libc::POLLNVAL != 0 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
        }
        let mut delivered = 0;
        for _ in 0..self.block_count {
            if !self.block_ready(self.current) {
                break;
            }
            delivered += self.deliver_block(self.current, &mut f);
            self.release_block(self.current);
            self.current = (self.current + 1) % self.block_count;
        }
        Ok(delivered)
    }

    /// Counters since the socket was opened. Reading the kernel's counters resets them, so
    /// this accumulates; call it now and then, not per packet.
    pub fn stats(&mut self) -> io::Result<AfPacketStats> {
        let k = sys::packet_statistics(self.fd.as_raw_fd())?;
        self.stats.packets += u64::from(k.tp_packets);
        self.stats.drops += u64::from(k.tp_drops);
        self.stats.freezes += u64::from(k.tp_freeze_q_cnt);
        Ok(self.stats)
    }

    fn block_ptr(&self, block: usize) -> *mut u8 {
        debug_assert!(block < self.block_count);
        self.ring.as_ptr().wrapping_add(block * self.block_size)
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        let off = offset_of!(libc::tpacket_block_desc, hdr)
            + offset_of!(libc::tpacket_hdr_v1, block_status);
        let p = self.block_ptr(block).wrapping_add(off).cast::<AtomicU32>();
        #[allow(unsafe_code)]
        // SAFETY: `p` lies inside the mapping (block < block_count, the header is the first
        // 48 bytes of a block of at least 4096), is 4-aligned (blocks are page-aligned, the
        // field is at offset 8), and lives as long as `self`. The kernel writes the word
        // concurrently, which is why it is only accessed atomically.
        unsafe {
            &*p
        }
    }

    fn block_ready(&self, block: usize) -> bool {
        self.block_status(block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    fn release_block(&self, block: usize) {
        fence(Ordering::Release);
        self.block_status(block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }

    /// Hands out the frames of a block the kernel has passed to user space.
    fn deliver_block(&mut self, block: usize, f: &mut impl FnMut(&[u8], u64)) -> usize {
        let base = self.block_ptr(block);
        #[allow(unsafe_code)]
        // SAFETY: the block is ours (status TP_STATUS_USER, read with Acquire ordering): the
        // kernel does not touch it until we release it, and the mapping covers
        // `block_size` bytes from `base`, readable and live for this borrow of `self`.
        let bytes: &[u8] = unsafe { std::slice::from_raw_parts(base, self.block_size) };
        let (count, truncated) = walk_block(bytes, f);
        self.stats.delivered += count as u64;
        self.stats.truncated += truncated as u64;
        count
    }
}

/// Walks the frames of one `TPACKET_V3` block (its bytes), calling `f` for each; returns
/// (frames, truncated frames). Offsets from the kernel are checked against the block, so a
/// corrupt block ends the walk instead of reading out of bounds.
fn walk_block(block: &[u8], f: &mut impl FnMut(&[u8], u64)) -> (usize, usize) {
    let hdr = offset_of!(libc::tpacket_block_desc, hdr);
    let u32_at = |b: &[u8], off: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
    };
    let u16_at = |b: &[u8], off: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
    };
    let (Some(num_pkts), Some(first)) = (
        u32_at(block, hdr + offset_of!(libc::tpacket_hdr_v1, num_pkts)),
        u32_at(
            block,
            hdr + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
        ),
    ) else {
        return (0, 0);
    };
    let mut off = first as usize;
    let (mut count, mut truncated) = (0, 0);
    for _ in 0..num_pkts {
        let Some(pkt) = block.get(off..) else { break };
        if pkt.len() < mem::size_of::<libc::tpacket3_hdr>() {
            break;
        }
        let field = |o: usize| u32_at(pkt, o).unwrap_or(0);
        let next = field(offset_of!(libc::tpacket3_hdr, tp_next_offset)) as usize;
        let sec = field(offset_of!(libc::tpacket3_hdr, tp_sec));
        let nsec = field(offset_of!(libc::tpacket3_hdr, tp_nsec));
        let snaplen = field(offset_of!(libc::tpacket3_hdr, tp_snaplen)) as usize;
        let len = field(offset_of!(libc::tpacket3_hdr, tp_len)) as usize;
        let mac = u16_at(pkt, offset_of!(libc::tpacket3_hdr, tp_mac)).unwrap_or(0) as usize;
        let Some(frame) = pkt.get(mac..mac.saturating_add(snaplen)) else {
            break;
        };
        f(frame, u64::from(sec) * 1_000_000_000 + u64::from(nsec));
        count += 1;
        truncated += usize::from(snaplen < len);
        if next == 0 {
            break;
        }
        off += next;
    }
    (count, truncated)
}

impl Drop for AfPacketSocket {
    fn drop(&mut self) {
        sys::munmap_ring(self.ring, self.ring_len);
        // The descriptor closes when `fd` drops.
    }
}

/// The classic BPF program of [`FanoutMode::Symmetric`]: returns a hash of the packet's
/// addresses and transport ports that is the same for both directions of a flow (the
/// kernel picks socket `hash % members`).
///
/// All loads are relative to the network header (`SKF_NET_OFF`) and the protocol comes from
/// the `skb` (`SKF_AD_PROTOCOL`), because the kernel runs fanout programs on incoming frames
/// with the link header already pulled and on outgoing ones with it in place.
pub fn symmetric_fanout_program() -> Vec<libc::sock_filter> {
    use bpf::*;
    let mut a = Asm::default();
    // A = ethertype.
    a.stmt(LD | W | ABS, AD_PROTOCOL);
    a.jeq(0x0800, "v4", "not_v4");
    a.label("not_v4");
    a.jeq(0x86dd, "v6", "other");

    // IPv4: A = saddr + daddr.
    a.label("v4");
    a.stmt(LD | W | ABS, NET + 12);
    a.stmt(MISC | TAX, 0);
    a.stmt(LD | W | ABS, NET + 16);
    a.stmt(ALU | ADD | X, 0);
    a.stmt(ST, 0);
    // Fragments (MF or offset): addresses only.
    a.stmt(LD | H | ABS, NET + 6);
    a.jset(0x3fff, "addr_only", "v4_proto");
    a.label("v4_proto");
    a.stmt(LD | B | ABS, NET + 9);
    a.jeq(6, "v4_ports", "v4_udp");
    a.label("v4_udp");
    a.jeq(17, "v4_ports", "v4_sctp");
    a.label("v4_sctp");
    a.jeq(132, "v4_ports", "addr_only");
    a.label("v4_ports");
    // X = IHL * 4.
    a.stmt(LD | B | ABS, NET);
    a.stmt(ALU | AND | K, 0x0f);
    a.stmt(ALU | LSH | K, 2);
    a.stmt(MISC | TAX, 0);
    a.stmt(LD | H | IND, NET);
    a.stmt(ST, 1);
    a.stmt(LD | H | IND, NET + 2);
    a.jmp("add_ports");

    // IPv6: A = sum of the eight address words.
    a.label("v6");
    a.stmt(LD | W | ABS, NET + 8);
    for word in 1..8 {
        a.stmt(MISC | TAX, 0);
        a.stmt(LD | W | ABS, NET + 8 + 4 * word);
        a.stmt(ALU | ADD | X, 0);
    }
    a.stmt(ST, 0);
    a.stmt(LD | B | ABS, NET + 6);
    a.jeq(6, "v6_ports", "v6_udp");
    a.label("v6_udp");
    a.jeq(17, "v6_ports", "v6_sctp");
    a.label("v6_sctp");
    a.jeq(132, "v6_ports", "addr_only");
    a.label("v6_ports");
    a.stmt(LD | H | ABS, NET + 40);
    a.stmt(ST, 1);
    a.stmt(LD | H | ABS, NET + 42);
    a.jmp("add_ports");

    // A = M[0] + M[1] + A.
    a.label("add_ports");
    a.stmt(LDX | MEM, 1);
    a.stmt(ALU | ADD | X, 0);
    a.stmt(LDX | MEM, 0);
    a.stmt(ALU | ADD | X, 0);
    a.jmp("mix");

    a.label("addr_only");
    a.stmt(LD | MEM, 0);
    // A = (A * golden) ^ ((A * golden) >> 16): the low bits (what `% members` uses) depend
    // on all input bits.
    a.label("mix");
    a.stmt(ALU | MUL | K, 0x9e37_79b1);
    a.stmt(MISC | TAX, 0);
    a.stmt(ALU | RSH | K, 16);
    a.stmt(ALU | XOR | X, 0);
    a.stmt(RET | A, 0);

    a.label("other");
    a.stmt(RET | K, 0);
    a.finish()
}

/// A tiny classic-BPF assembler with symbolic forward jumps.
mod bpf {
    pub(super) const LD: u16 = 0x00;
    pub(super) const LDX: u16 = 0x01;
    pub(super) const ST: u16 = 0x02;
    pub(super) const ALU: u16 = 0x04;
    pub(super) const JMP: u16 = 0x05;
    pub(super) const RET: u16 = 0x06;
    pub(super) const MISC: u16 = 0x07;
    pub(super) const W: u16 = 0x00;
    pub(super) const H: u16 = 0x08;
    pub(super) const B: u16 = 0x10;
    pub(super) const ABS: u16 = 0x20;
    pub(super) const IND: u16 = 0x40;
    pub(super) const MEM: u16 = 0x60;
    pub(super) const ADD: u16 = 0x00;
    pub(super) const MUL: u16 = 0x20;
    pub(super) const AND: u16 = 0x50;
    pub(super) const LSH: u16 = 0x60;
    pub(super) const RSH: u16 = 0x70;
    pub(super) const XOR: u16 = 0xa0;
    pub(super) const JA: u16 = 0x00;
    pub(super) const JEQ: u16 = 0x10;
    pub(super) const JSET: u16 = 0x40;
    pub(super) const K: u16 = 0x00;
    pub(super) const X: u16 = 0x08;
    pub(super) const A: u16 = 0x10;
    pub(super) const TAX: u16 = 0x00;
    /// `SKF_NET_OFF`: loads relative to the network header.
    pub(super) const NET: u32 = 0xfff0_0000;
    /// `SKF_AD_OFF + SKF_AD_PROTOCOL`: the skb's protocol (an ethertype, host order).
    pub(super) const AD_PROTOCOL: u32 = 0xffff_f000;

    enum Item {
        Op(u16, u32),
        Cond(u16, u32, &'static str, &'static str),
        Jmp(&'static str),
        Label(&'static str),
    }

    #[derive(Default)]
    pub(super) struct Asm {
        items: Vec<Item>,
    }

    impl Asm {
        pub(super) fn stmt(&mut self, code: u16, k: u32) {
            self.items.push(Item::Op(code, k));
        }
        pub(super) fn jeq(&mut self, k: u32, t: &'static str, f: &'static str) {
            self.items.push(Item::Cond(JMP | JEQ | K, k, t, f));
        }
        pub(super) fn jset(&mut self, k: u32, t: &'static str, f: &'static str) {
            self.items.push(Item::Cond(JMP | JSET | K, k, t, f));
        }
        pub(super) fn jmp(&mut self, to: &'static str) {
            self.items.push(Item::Jmp(to));
        }
        pub(super) fn label(&mut self, name: &'static str) {
            self.items.push(Item::Label(name));
        }

        /// Resolves the labels. Panics on an unknown label or a backward or too long jump:
        /// the program is fixed, so the unit tests catch any such mistake.
        pub(super) fn finish(self) -> Vec<libc::sock_filter> {
            let mut at = std::collections::HashMap::new();
            let mut pc = 0usize;
            for item in &self.items {
                match item {
                    Item::Label(l) => {
                        at.insert(*l, pc);
                    }
                    _ => pc += 1,
                }
            }
            let rel = |from: usize, l: &str| -> usize {
                let to = at[l];
                assert!(to > from, "backward jump to {l}");
                to - from - 1
            };
            let mut out = Vec::with_capacity(pc);
            for item in &self.items {
                let pc = out.len();
                let ins = match *item {
                    Item::Label(_) => continue,
                    Item::Op(code, k) => libc::sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k,
                    },
                    Item::Cond(code, k, t, f) => libc::sock_filter {
                        code,
                        jt: u8::try_from(rel(pc, t)).expect("short jump"),
                        jf: u8::try_from(rel(pc, f)).expect("short jump"),
                        k,
                    },
                    Item::Jmp(to) => libc::sock_filter {
                        code: JMP | JA,
                        jt: 0,
                        jf: 0,
                        k: rel(pc, to) as u32,
                    },
                };
                out.push(ins);
            }
            out
        }
    }
}

/// The system calls, each wrapped once with its safety argument.
#[allow(unsafe_code)]
mod sys {
    use super::*;

    pub(super) fn if_nametoindex(name: &CString) -> u32 {
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    }

    pub(super) fn socket() -> Option<OwnedFd> {
        // SAFETY: plain system call with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        // SAFETY: `fd` is a freshly created descriptor nobody else owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(super) fn set_errno(code: i32) {
        // SAFETY: `__errno_location` returns this thread's errno slot.
        unsafe { *libc::__errno_location() = code };
    }

    /// `setsockopt(SOL_PACKET, opt, value)`; `None` on failure (errno set).
    pub(super) fn setsockopt<T>(fd: RawFd, opt: libc::c_int, value: &T) -> Option<()> {
        // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it
        // (for PACKET_FANOUT_DATA it also reads the filter array `value` points to, which
        // the caller keeps alive across the call).
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                opt,
                (value as *const T).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        };
        (rc == 0).then_some(())
    }

    pub(super) fn mmap_ring(fd: RawFd, len: usize) -> Option<NonNull<u8>> {
        // SAFETY: maps a fresh region chosen by the kernel (no address hint), backed by the
        // socket's ring; nothing else in the process aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            // MAP_LOCKED fails under a low RLIMIT_MEMLOCK for non-root users; retry without.
            // SAFETY: as above.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_POPULATE,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            return NonNull::new(p.cast());
        }
        NonNull::new(p.cast())
    }

    pub(super) fn munmap_ring(p: NonNull<u8>, len: usize) {
        // SAFETY: `p`/`len` are exactly a mapping made by `mmap_ring`, unmapped once (from
        // `Drop`), after which no reference into it survives (they all borrow the socket).
        unsafe {
            libc::munmap(p.as_ptr().cast(), len);
        }
    }

    /// Binds to `ifindex` for all protocols; returns the device's ARPHRD type.
    pub(super) fn bind(fd: RawFd, ifindex: u32) -> Option<u16> {
        // SAFETY: all-zero is a valid `sockaddr_ll`.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a valid `sockaddr_ll` of the size passed.
        let rc = unsafe { libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), len) };
        if rc != 0 {
            return None;
        }
        let mut out_len = len;
        // SAFETY: `sll` is writable for `out_len` bytes, which the kernel updates.
        let rc = unsafe {
            libc::getsockname(
                fd,
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut out_len,
            )
        };
        Some(if rc == 0 { sll.sll_hatype } else { u16::MAX })
    }

    /// Waits for the socket to become readable; returns `revents` (0 on timeout or EINTR).
    pub(super) fn poll(fd: RawFd, ms: libc::c_int) -> io::Result<libc::c_short> {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLERR,
            revents: 0,
        };
        // SAFETY: one valid `pollfd`.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(if rc == 0 { 0 } else { p.revents })
    }

    /// Reads and clears the socket's pending error.
    pub(super) fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
        let mut err: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` is a writable c_int of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
    }

    pub(super) fn packet_statistics(fd: RawFd) -> io::Result<libc::tpacket_stats_v3> {
        // SAFETY: all-zero is a valid `tpacket_stats_v3` (three integers).
        let mut st: libc::tpacket_stats_v3 = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::bpf::*;
    use super::*;

    #[test]
    fn kernel_struct_layouts() {
        // linux/if_packet.h on every architecture Linux supports.
        assert_eq!(mem::size_of::<libc::tpacket3_hdr>(), 48);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_next_offset), 0);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_sec), 4);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_nsec), 8);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_snaplen), 12);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_len), 16);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_status), 20);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_mac), 24);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_net), 26);
        assert_eq!(offset_of!(libc::tpacket_block_desc, version), 0);
        assert_eq!(offset_of!(libc::tpacket_block_desc, offset_to_priv), 4);
        assert_eq!(offset_of!(libc::tpacket_block_desc, hdr), 8);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, block_status), 0);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, num_pkts), 4);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt), 8);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, blk_len), 12);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, seq_num), 16);
        assert_eq!(mem::size_of::<libc::tpacket_hdr_v1>(), 40);
        assert_eq!(mem::size_of::<libc::tpacket_block_desc>(), 48);
        assert_eq!(mem::size_of::<libc::tpacket_req3>(), 28);
        assert_eq!(mem::size_of::<libc::tpacket_stats_v3>(), 12);
        assert_eq!(mem::size_of::<libc::sock_filter>(), 8);
        assert_eq!(libc::tpacket_versions::TPACKET_V3 as u32, 2);
        assert_eq!(PACKET_FANOUT as u32, 18);
        assert_eq!(PACKET_FANOUT_DATA as u32, 22);
        assert_eq!(NET as i32, libc::SKF_NET_OFF);
        assert_eq!(AD_PROTOCOL as i32, libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL);
    }

    /// Builds a block as the kernel lays it out: header, then frames 16-aligned.
    fn block_with(frames: &[(&[u8], u32, u32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        let hdr = 8;
        b[hdr + 4..hdr + 8].copy_from_slice(&(frames.len() as u32).to_ne_bytes());
        let first = 48u32;
        b[hdr + 8..hdr + 12].copy_from_slice(&first.to_ne_bytes());
        let mut off = first as usize;
        for (i, (data, sec, nsec, wire_len)) in frames.iter().enumerate() {
            let mac = 48 + 20; // header + sockaddr_ll, as TPACKET3_HDRLEN-ish
            let size = (mac + data.len()).div_ceil(16) * 16;
            let next = if i + 1 == frames.len() {
                0
            } else {
                size as u32
            };
            b[off..off + 4].copy_from_slice(&next.to_ne_bytes());
            b[off + 4..off + 8].copy_from_slice(&sec.to_ne_bytes());
            b[off + 8..off + 12].copy_from_slice(&nsec.to_ne_bytes());
            b[off + 12..off + 16].copy_from_slice(&(data.len() as u32).to_ne_bytes());
            b[off + 16..off + 20].copy_from_slice(&wire_len.to_ne_bytes());
            b[off + 24..off + 26].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[off + mac..off + mac + data.len()].copy_from_slice(data);
            off += size;
        }
        b
    }

    #[test]
    fn walks_every_frame_of_a_block() {
        let frames: [(&[u8], u32, u32, u32); 3] = [
            (b"hello", 1, 5, 5),
            (&[7u8; 100], 2, 999_999_999, 1500),
            (b"", 3, 0, 0),
        ];
        let b = block_with(&frames);
        let mut seen = Vec::new();
        let (n, trunc) = walk_block(&b, &mut |f: &[u8], ts| seen.push((f.to_vec(), ts)));
        assert_eq!((n, trunc), (3, 1));
        assert_eq!(seen[0], (b"hello".to_vec(), 1_000_000_005));
        assert_eq!(seen[1], (vec![7u8; 100], 2_999_999_999));
        assert_eq!(seen[2], (Vec::new(), 3_000_000_000));
    }

    #[test]
    fn corrupt_offsets_end_the_walk() {
        let mut b = block_with(&[(b"abc", 0, 0, 3), (b"def", 0, 0, 3)]);
        // Second frame's offset points past the block.
        b[48..52].copy_from_slice(&100_000u32.to_ne_bytes());
        let (n, _) = walk_block(&b, &mut |_, _| {});
        assert_eq!(n, 1);
        // Snap length past the block.
        let mut b = block_with(&[(b"abc", 0, 0, 3)]);
        b[48 + 12..48 + 16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(walk_block(&b, &mut |_, _| {}).0, 0);
        // Count larger than the frames present, first offset out of range.
        let mut b = block_with(&[]);
        b[12..16].copy_from_slice(&1000u32.to_ne_bytes());
        b[16..20].copy_from_slice(&9000u32.to_ne_bytes());
        assert_eq!(walk_block(&b, &mut |_, _| {}).0, 0);
        assert_eq!(walk_block(&[0u8; 4], &mut |_, _| {}).0, 0);
    }

    #[test]
    fn ring_config_checks() {
        assert!(RingConfig::default().check().is_ok());
        assert_eq!(RingConfig::default().ring_bytes(), 64 << 20);
        let bad = [
            RingConfig {
                block_size: 1000,
                ..RingConfig::default()
            },
            RingConfig {
                block_count: 0,
                ..RingConfig::default()
            },
            RingConfig {
                frame_size: 100,
                ..RingConfig::default()
            },
            RingConfig {
                frame_size: 48,
                ..RingConfig::default()
            },
            RingConfig {
                block_timeout: Duration::ZERO,
                ..RingConfig::default()
            },
        ];
        for r in bad {
            assert!(r.check().is_err(), "{r:?}");
        }
    }

    #[test]
    fn bad_names_and_missing_interfaces_are_clear() {
        let e = AfPacketSocket::open("", None, RingConfig::default()).unwrap_err();
        assert!(matches!(e, AfPacketError::BadInterfaceName { .. }), "{e}");
        let e =
            AfPacketSocket::open("a-name-far-too-long", None, RingConfig::default()).unwrap_err();
        assert!(matches!(e, AfPacketError::BadInterfaceName { .. }), "{e}");
        let e = AfPacketSocket::open("fpnosuchif0", None, RingConfig::default()).unwrap_err();
        assert!(matches!(e, AfPacketError::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("check `ip link`"), "{e}");
    }

    /// A classic-BPF interpreter for the instructions the fanout program uses, running on
    /// a network-layer packet the way the kernel does for `SKF_NET_OFF` loads.
    fn run(prog: &[libc::sock_filter], proto: u16, net: &[u8]) -> u32 {
        let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
        let load = |off: u32, size: usize| -> Option<u32> {
            let off = off.checked_sub(NET)? as usize;
            let b = net.get(off..off + size)?;
            Some(b.iter().fold(0u32, |v, &byte| (v << 8) | u32::from(byte)))
        };
        let mut pc = 0;
        loop {
            let i = prog[pc];
            pc += 1;
            let size = match i.code & 0x18 {
                W => 4,
                H => 2,
                _ => 1,
            };
            match i.code {
                c if c == LD | W | ABS && i.k == AD_PROTOCOL => a = u32::from(proto),
                c if c & 0x07 == LD && c & 0xe0 == ABS => match load(i.k, size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c & 0x07 == LD && c & 0xe0 == IND => match load(i.k.wrapping_add(x), size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == LD | MEM => a = m[i.k as usize],
                c if c == LDX | MEM => x = m[i.k as usize],
                c if c == ST => m[i.k as usize] = a,
                c if c == MISC | TAX => x = a,
                c if c == ALU | ADD | X => a = a.wrapping_add(x),
                c if c == ALU | XOR | X => a ^= x,
                c if c == ALU | AND | K => a &= i.k,
                c if c == ALU | LSH | K => a <<= i.k,
                c if c == ALU | RSH | K => a >>= i.k,
                c if c == ALU | MUL | K => a = a.wrapping_mul(i.k),
                c if c == JMP | JA => pc += i.k as usize,
                c if c == JMP | JEQ | K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                c if c == JMP | JSET | K => {
                    pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf })
                }
                c if c == RET | A => return a,
                c if c == RET | K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = next;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    #[test]
    fn fanout_program_is_valid_cbpf() {
        let prog = symmetric_fanout_program();
        assert!(prog.len() < 4096);
        // Last instruction returns; every jump lands inside the program.
        assert_eq!(prog.last().unwrap().code & 0x07, RET);
        for (pc, i) in prog.iter().enumerate() {
            if i.code & 0x07 == JMP {
                let reach = if i.code == JMP | JA {
                    i.k as usize
                } else {
                    usize::from(i.jt.max(i.jf))
                };
                assert!(pc + 1 + reach < prog.len(), "jump out at {pc}");
            }
        }
    }

    #[test]
    fn fanout_hash_is_symmetric() {
        let prog = symmetric_fanout_program();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buckets = [0u32; 4];
        for _ in 0..2000 {
            let (s, d) = ((rnd() as u32).to_be_bytes(), (rnd() as u32).to_be_bytes());
            let (sp, dp) = (rnd() as u16, rnd() as u16);
            for proto in [6u8, 17, 132] {
                let fwd = run(&prog, 0x0800, &ipv4(s, d, proto, sp, dp, 0));
                let rev = run(&prog, 0x0800, &ipv4(d, s, proto, dp, sp, 0));
                assert_eq!(fwd, rev);
                if proto == 6 {
                    buckets[(fwd % 4) as usize] += 1;
                }
            }
            // Ports matter for TCP; fragments and other protocols use addresses only.
            let other_port = run(&prog, 0x0800, &ipv4(s, d, 6, sp ^ 1, dp, 0));
            let tcp = run(&prog, 0x0800, &ipv4(s, d, 6, sp, dp, 0));
            assert_ne!(tcp, other_port);
            let first_frag = run(&prog, 0x0800, &ipv4(s, d, 6, sp, dp, 0x2000));
            let later_frag = run(&prog, 0x0800, &ipv4(d, s, 6, 0, 0, 0x0010));
            let icmp = run(&prog, 0x0800, &ipv4(d, s, 1, 0, 0, 0));
            assert_eq!(first_frag, later_frag);
            assert_eq!(first_frag, icmp);

            let mut s6 = [0u8; 16];
            let mut d6 = [0u8; 16];
            s6.iter_mut()
                .chain(d6.iter_mut())
                .for_each(|b| *b = rnd() as u8);
            let fwd = run(&prog, 0x86dd, &ipv6(s6, d6, 6, sp, dp));
            let rev = run(&prog, 0x86dd, &ipv6(d6, s6, 6, dp, sp));
            assert_eq!(fwd, rev);
            let ext = run(&prog, 0x86dd, &ipv6(s6, d6, 0, sp, dp));
            let ext_rev = run(&prog, 0x86dd, &ipv6(d6, s6, 0, dp, sp));
            assert_eq!(ext, ext_rev);
        }
        // Spread: every bucket gets a fair share.
        for b in buckets {
            assert!((400..600).contains(&b), "{buckets:?}");
        }
        // Non-IP goes to socket 0; a truncated IPv4 header gives 0 as the kernel does.
        assert_eq!(run(&prog, 0x0806, &[0u8; 28]), 0);
        assert_eq!(run(&prog, 0x0800, &[0x45, 0, 0, 0]), 0);
    }

    #[test]
    fn sequential_ports_spread_over_two_sockets() {
        // The live test's shape: one client address, consecutive ephemeral ports.
        let prog = symmetric_fanout_program();
        let mut counts = [0; 2];
        for port in 40_000u16..40_020 {
            let h = run(
                &prog,
                0x0800,
                &ipv4([10, 77, 0, 1], [10, 77, 0, 2], 6, port, 5000, 0),
            );
            counts[(h % 2) as usize] += 1;
        }
        assert!(counts[0] >= 4 && counts[1] >= 4, "{counts:?}");
    }
}
