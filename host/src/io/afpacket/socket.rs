//! The AF_PACKET socket: [`AfPacketSocket::open`] (socket, `TPACKET_V3` ring, bind, fanout),
//! [`AfPacketSocket::poll_batch`] (wait, then hand out every frame of the filled blocks and
//! give the blocks back), and the [`Source`] the workers read. The module doc of
//! [`super`] says what is captured and how fanout keeps both directions together.
//!
//! Must not: copy or allocate per packet, or read past a block the kernel described.

use std::ffi::CString;
use std::io;
use std::mem::{self, offset_of};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::Duration;

use std::time::Instant;

use super::bpf::symmetric_fanout_program;
use super::sys;
use super::*;
use crate::io::source::{Batch, Idle, Sink, Source, SourceError};
use crate::wire::LinkType;

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
    /// When [`Source::drops`] last read the kernel's counters.
    drops_read: Option<Instant>,
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
            drops_read: None,
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
        self.wait_ready(timeout)?;
        Ok(self.deliver_ready(&mut f))
    }

    /// Waits up to `timeout` unless the next block is filled already; the socket's pending
    /// error, if any.
    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
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
        Ok(())
    }

    /// Hands out the frames of the filled blocks (at most one ring's worth) and gives the
    /// blocks back.
    #[inline]
    fn deliver_ready(&mut self, f: &mut impl FnMut(&[u8], u64)) -> usize {
        let mut delivered = 0;
        for _ in 0..self.block_count {
            if !self.block_ready(self.current) {
                break;
            }
            delivered += self.deliver_block(self.current, f);
            self.release_block(self.current);
            self.current = (self.current + 1) % self.block_count;
        }
        delivered
    }

    fn receive_err(&self, source: io::Error) -> SourceError {
        AfPacketError::Receive {
            ifname: self.ifname.clone(),
            source,
        }
        .into()
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

impl Source for AfPacketSocket {
    const IDLE: Idle = Idle::Blocks;
    const WALL_CLOCK: bool = false;

    fn wait(&mut self, timeout: Duration) -> Result<(), SourceError> {
        match self.wait_ready(timeout) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(self.receive_err(e)),
            _ => Ok(()),
        }
    }

    /// The frames of every filled block, with the kernel's timestamps.
    #[inline]
    fn next_batch<K: Sink>(&mut self, _now: u64, sink: &mut K) -> Result<Batch, SourceError> {
        let link = self.link;
        match self.deliver_ready(&mut |frame, ts| sink.frame(link, frame, ts)) {
            0 => Ok(Batch::Empty),
            n => Ok(Batch::Frames(n)),
        }
    }

    /// The kernel's drop counter, read at most once a second (reading it is a system call).
    fn drops(&mut self) -> Option<u64> {
        if self
            .drops_read
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.drops_read = Some(Instant::now());
        self.stats().ok().map(|st| st.drops)
    }
}

impl Drop for AfPacketSocket {
    fn drop(&mut self) {
        sys::munmap_ring(self.ring, self.ring_len);
        // The descriptor closes when `fd` drops.
    }
}

#[cfg(test)]
mod tests {
    use super::super::bpf::{AD_PROTOCOL, NET};
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
}
