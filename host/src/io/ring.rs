//! Walking netmap memory: the ring code shared by [`super::netmap`] and [`super::shm`]:
//! [`RxRing`] reads receive rings, [`TxRing`] fills transmit rings.
//!
//! A netmap memory region holds one `netmap_if` (found by its offset in the region), which
//! lists the offsets of its rings (`ring_ofs[]`, relative to the `netmap_if`); each
//! `netmap_ring` is followed by its `num_slots` slots, and each slot names a buffer by index
//! (`buf_idx`) from the ring's buffer base (`ring + buf_ofs`, buffers `nr_buf_size` bytes
//! apart). The layout types are those of the `netmap_sys` crate; the unit tests pin them to
//! netmap's documented offsets and sizes.
//!
//! # Ownership (netmap's rules)
//!
//! On a receive ring the slots `[head, tail)` belong to the consumer (this code) and the rest
//! to the kernel (or, on `shm`, to the producer process). The consumer loads `tail` with
//! acquire ordering, reads the slots it owns, and gives them back by storing `cur` and then
//! `head` (= the `tail` it saw) with release ordering. [`RxRing::rx_batch`] does exactly that:
//! one acquire load, the frames, two release stores; no allocation and no system call.
//!
//! On a transmit ring it is the other way round: the slots `[head, tail)` belong to userspace
//! and are free to fill (the kernel keeps at least one slot, so an empty TX ring has
//! `tail = head - 1` and a full one `tail = head`). [`TxRing::push`] writes a frame into the
//! buffer of slot `cur` (its `buf_idx`, `len`) and advances `cur`; [`TxRing::publish`] hands
//! the frames over by storing `cur` and `head` (= `cur`) with release ordering; the next
//! `NIOCTXSYNC` (or `poll`) transmits them and moves `tail` on as the port sends them.
//!
//! # Validation
//!
//! The memory is written by another party, so nothing in it is trusted. [`NetmapMem::from_raw`]
//! checks every offset and size once (the `netmap_if` and ring headers, ring counts, the slot
//! array, the buffer area) and caches the constant fields (`num_slots`, `nr_buf_size`, the
//! buffer base and count) so that a later change to them cannot move a read out of the region.
//! On each batch the fields that legitimately change are checked before use: `tail` must be
//! below `num_slots`, and each slot's `buf_idx` must name a buffer inside the region and its
//! `len` must not exceed `nr_buf_size` (on a TX ring, `tail` must also not fall among the
//! slots written since the last publish, and a frame longer than `nr_buf_size` is refused). A violation is a [`RingError`], never a panic or an
//! out-of-bounds read. `num_slots` need not be a power of two (netmap does not require it).
//!
//! # Caveat
//!
//! Frames are lent straight from the shared memory. netmap's contract is that the other side
//! does not write a slot or its buffer while the consumer owns it; a producer that breaks that
//! contract can change the bytes of a frame while it is being read (the frame is then garbage,
//! but every access stays inside the mapping). Likewise a kernel (or corrupt image) that
//! reads a TX buffer while it is being filled sends garbage, but every write stays inside the
//! mapping.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use netmap_sys::netmap::{netmap_if, netmap_ring, netmap_slot, NS_REPORT};

/// Size of a `netmap_if` header before its `ring_ofs[]` array (bytes).
pub const IF_HEADER_LEN: usize = std::mem::size_of::<netmap_if>();
/// Size of a `netmap_ring` header before its slots (bytes).
pub const RING_HEADER_LEN: usize = std::mem::size_of::<netmap_ring>();
/// Size of one `netmap_slot` (bytes).
pub const SLOT_LEN: usize = std::mem::size_of::<netmap_slot>();

/// Largest ring count per direction accepted in a `netmap_if` (netmap allows far fewer).
pub const MAX_RINGS: u32 = 1024;
/// Largest `num_slots` accepted (netmap's own maximum is 16384 per ring; generous here).
pub const MAX_SLOTS: u32 = 1 << 20;

// Byte offsets inside the layout types, used for atomic views and for building images.
pub(crate) const IF_TX_RINGS: usize = std::mem::offset_of!(netmap_if, ni_tx_rings);
pub(crate) const IF_RX_RINGS: usize = std::mem::offset_of!(netmap_if, ni_rx_rings);
/// `ni_spare1[0]`: `ni_host_tx_rings` in netmap API 14 and later.
pub(crate) const IF_HOST_TX_RINGS: usize = std::mem::offset_of!(netmap_if, ni_spare1);
/// `ni_spare1[1]`: `ni_host_rx_rings` in netmap API 14 and later.
pub(crate) const IF_HOST_RX_RINGS: usize = IF_HOST_TX_RINGS + 4;
pub(crate) const IF_RING_OFS: usize = std::mem::offset_of!(netmap_if, ring_ofs);
pub(crate) const RING_BUF_OFS: usize = std::mem::offset_of!(netmap_ring, buf_ofs);
pub(crate) const RING_NUM_SLOTS: usize = std::mem::offset_of!(netmap_ring, num_slots);
pub(crate) const RING_BUF_SIZE: usize = std::mem::offset_of!(netmap_ring, nr_buf_size);
pub(crate) const RING_HEAD: usize = std::mem::offset_of!(netmap_ring, head);
pub(crate) const RING_CUR: usize = std::mem::offset_of!(netmap_ring, cur);
pub(crate) const RING_TAIL: usize = std::mem::offset_of!(netmap_ring, tail);
pub(crate) const RING_SLOTS: usize = std::mem::offset_of!(netmap_ring, slot);
pub(crate) const SLOT_BUF_IDX: usize = std::mem::offset_of!(netmap_slot, buf_idx);
pub(crate) const SLOT_LEN_FIELD: usize = std::mem::offset_of!(netmap_slot, len);
pub(crate) const SLOT_FLAGS: usize = std::mem::offset_of!(netmap_slot, flags);

// netmap's layout on 64-bit targets (net/netmap.h): a slot is 16 bytes, a ring header 256
// (the `sem` array is aligned to NM_CACHE_ALIGN = 128, so slots start at 256), and the
// `netmap_if` header 56 bytes before `ring_ofs[]`. netmap_sys spells the alignment as padding;
// these assertions make a layout change in that crate a compile error.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(SLOT_LEN == 16);
    assert!(SLOT_BUF_IDX == 0);
    assert!(SLOT_LEN_FIELD == 4);
    assert!(SLOT_FLAGS == 6);
    assert!(std::mem::offset_of!(netmap_slot, ptr) == 8);
    assert!(RING_BUF_OFS == 0);
    assert!(RING_NUM_SLOTS == 8);
    assert!(RING_BUF_SIZE == 12);
    assert!(std::mem::offset_of!(netmap_ring, ringid) == 16);
    assert!(std::mem::offset_of!(netmap_ring, dir) == 18);
    assert!(RING_HEAD == 20);
    assert!(RING_CUR == 24);
    assert!(RING_TAIL == 28);
    assert!(std::mem::offset_of!(netmap_ring, flags) == 32);
    assert!(std::mem::offset_of!(netmap_ring, ts) == 40);
    assert!(std::mem::offset_of!(netmap_ring, sem) == 128);
    assert!(RING_SLOTS == 256);
    assert!(RING_HEADER_LEN == 256);
    assert!(IF_TX_RINGS == 24);
    assert!(IF_RX_RINGS == 28);
    assert!(std::mem::offset_of!(netmap_if, ni_bufs_head) == 32);
    assert!(IF_HOST_TX_RINGS == 36);
    assert!(IF_RING_OFS == 56);
    assert!(IF_HEADER_LEN == 56);
};

/// How many host (software) rings sit between the hardware TX and RX entries of `ring_ofs[]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostRings {
    /// Read `ni_host_tx_rings` / `ni_host_rx_rings` (netmap API 14 and later, and `shm`).
    FromIf,
    /// Netmap before API 14: one host ring each way, always (the fields read as 0 there).
    Legacy,
    /// `FromIf` when either field is non-zero, else `Legacy`: right for a kernel of either age.
    Auto,
}

/// Why a netmap memory image was refused, or why a batch stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The region's base address is not 8-byte aligned.
    #[error("netmap memory at {addr:#x} is not 8-byte aligned; map it with mmap (page aligned)")]
    Misaligned {
        /// The base address.
        addr: usize,
    },
    /// A structure (or its offset) does not lie inside the region.
    #[error("corrupt netmap memory: {what} at offset {offset} (+{size} bytes) lies outside the {region}-byte region; the producer wrote a bad image or the region is not netmap memory")]
    OutOfRegion {
        /// Which structure: "netmap_if", "ring 2 header", ...
        what: String,
        /// Its offset from the start of the region (may be negative).
        offset: i128,
        /// Its size.
        size: u64,
        /// The region's length.
        region: usize,
    },
    /// A structure's offset is not aligned for its fields.
    #[error("corrupt netmap memory: {what} at offset {offset} is not 8-byte aligned")]
    Unaligned {
        /// Which structure.
        what: String,
        /// Its offset from the start of the region.
        offset: i128,
    },
    /// A field of a ring or of the `netmap_if` holds an impossible value.
    #[error("corrupt netmap ring {ring}: {field} = {value} is out of range ({rule}); the producer or kernel broke the ring protocol, stop reading this ring")]
    Corrupt {
        /// The ring index (`usize::MAX` for the `netmap_if`): an RX ring, or a TX ring when
        /// `field` starts with "TX ".
        ring: usize,
        /// The field: "tail", "num_slots", "slot 17 buf_idx", "TX tail", ...
        field: String,
        /// The value found.
        value: u64,
        /// What it must satisfy.
        rule: String,
    },
    /// An RX ring index beyond the rings of this region.
    #[error("no RX ring {ring}: this region has {rings} RX ring(s) (0..{rings})")]
    NoSuchRing {
        /// The index asked for.
        ring: usize,
        /// How many there are.
        rings: usize,
    },
    /// The ring exists but this port did not register it (its `ring_ofs` is 0).
    #[error("RX ring {ring} is not registered on this port (netmap:IF-K binds one ring); open netmap:IF to get all rings")]
    NotRegistered {
        /// The index asked for.
        ring: usize,
    },
    /// A TX ring index beyond the rings of this region.
    #[error("no TX ring {ring}: this port has {rings} TX ring(s) (0..{rings})")]
    NoSuchTxRing {
        /// The index asked for.
        ring: usize,
        /// How many there are.
        rings: usize,
    },
    /// The TX ring exists but this port did not register it (its `ring_ofs` is 0).
    #[error("TX ring {ring} is not registered on this port (netmap:IF-K binds one ring); open netmap:IF to get all rings")]
    TxNotRegistered {
        /// The index asked for.
        ring: usize,
    },
    /// A frame longer than a TX ring's buffers.
    #[error("a {len}-byte frame does not fit TX ring {ring}, whose buffers hold {max} bytes (nr_buf_size); send smaller frames, or load netmap with a larger buf_size")]
    TooLarge {
        /// The TX ring.
        ring: usize,
        /// The frame's length.
        len: usize,
        /// The largest frame the ring takes.
        max: usize,
    },
}

fn corrupt(
    ring: usize,
    field: impl Into<String>,
    value: u64,
    rule: impl Into<String>,
) -> RingError {
    RingError::Corrupt {
        ring,
        field: field.into(),
        value,
        rule: rule.into(),
    }
}

/// A view over a netmap memory region: its `netmap_if` and validated RX and TX rings.
///
/// It does not own the memory; the owner ([`super::shm::ShmConsumer`],
/// [`super::netmap::NetmapPort`], [`super::netmap::NetmapTxPort`]) keeps the mapping alive
/// for as long as the view.
#[derive(Debug)]
pub struct NetmapMem {
    rx: Vec<Option<RxRing>>,
    tx: Vec<Option<TxRing>>,
}

impl NetmapMem {
    /// Validates the netmap image at `base..base + len` whose `netmap_if` is at `if_offset`,
    /// and builds a walker for each of its hardware RX and TX rings.
    ///
    /// `ring_ofs[]` lists the hardware TX rings first (`ni_tx_rings`), then the host TX
    /// rings, then the hardware RX rings (`ni_rx_rings`), then the host RX rings. A
    /// `ring_ofs` entry of 0 marks a ring that this file descriptor did not register
    /// (netmap's convention); such a ring is kept as "not registered". Every other ring is
    /// validated: header, slot array and buffer area inside the region, `num_slots` in
    /// `2..=MAX_SLOTS`, `head`, `cur` and `tail` below `num_slots`, `nr_buf_size` non-zero.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be readable and writable memory that stays mapped for as long
    /// as the returned value (and the [`RxRing`]s and [`TxRing`]s taken from it) are used. It may be written
    /// concurrently by another thread, process or the kernel: it is only accessed through raw
    /// pointers and atomics.
    #[allow(unsafe_code)]
    pub unsafe fn from_raw(
        base: *mut u8,
        len: usize,
        if_offset: usize,
        host: HostRings,
    ) -> Result<Self, RingError> {
        if base as usize % 8 != 0 {
            return Err(RingError::Misaligned {
                addr: base as usize,
            });
        }
        let region = Region { base, len };
        region.check("netmap_if", if_offset as i128, IF_HEADER_LEN as u64)?;
        let nifp = if_offset;
        // SAFETY: the netmap_if header is inside the region (checked above) and the offsets
        // are 4-aligned (nifp is 8-aligned); the caller guarantees the memory is mapped.
        let (tx, rx, htx, hrx) = unsafe {
            (
                region.load_u32(nifp + IF_TX_RINGS),
                region.load_u32(nifp + IF_RX_RINGS),
                region.load_u32(nifp + IF_HOST_TX_RINGS),
                region.load_u32(nifp + IF_HOST_RX_RINGS),
            )
        };
        let (htx, hrx) = match host {
            HostRings::FromIf => (htx, hrx),
            HostRings::Legacy => (1, 1),
            HostRings::Auto if htx != 0 || hrx != 0 => (htx, hrx),
            HostRings::Auto => (1, 1),
        };
        for (field, value) in [
            ("ni_tx_rings", tx),
            ("ni_rx_rings", rx),
            ("ni_host_tx_rings", htx),
            ("ni_host_rx_rings", hrx),
        ] {
            if value > MAX_RINGS {
                return Err(corrupt(
                    usize::MAX,
                    field,
                    value.into(),
                    format!("at most {MAX_RINGS}"),
                ));
            }
        }
        let entries = u64::from(tx) + u64::from(htx) + u64::from(rx) + u64::from(hrx);
        region.check(
            "netmap_if ring_ofs[]",
            (nifp + IF_RING_OFS) as i128,
            entries * 8,
        )?;
        // Entry `e` of ring_ofs[], as an offset from the start of the region; None for 0.
        let ring_at = |e: usize| {
            // SAFETY: e < entries, and the ring_ofs[] array is inside the region (checked
            // above) and 8-aligned (nifp and IF_RING_OFS are).
            let ofs = unsafe {
                region
                    .base
                    .add(nifp + IF_RING_OFS + 8 * e)
                    .cast::<i64>()
                    .read_volatile()
            };
            (ofs != 0).then(|| nifp as i128 + i128::from(ofs))
        };
        let mut rings = Vec::with_capacity(rx as usize);
        for i in 0..rx as usize {
            rings.push(match ring_at(tx as usize + htx as usize + i) {
                // SAFETY: forwarded from this function's contract.
                Some(off) => Some(unsafe { RxRing::validate(region, i, off)? }),
                None => None,
            });
        }
        let mut tx_rings = Vec::with_capacity(tx as usize);
        for i in 0..tx as usize {
            tx_rings.push(match ring_at(i) {
                // SAFETY: forwarded from this function's contract.
                Some(off) => Some(unsafe { TxRing::validate(region, i, off)? }),
                None => None,
            });
        }
        Ok(NetmapMem {
            rx: rings,
            tx: tx_rings,
        })
    }

    /// Number of hardware RX rings the `netmap_if` describes (registered or not).
    pub fn rx_rings(&self) -> usize {
        self.rx.len()
    }

    /// Number of hardware TX rings the `netmap_if` describes (registered or not).
    pub fn tx_rings(&self) -> u32 {
        self.tx.len() as u32
    }

    /// The TX ring `ring`.
    pub fn tx_ring(&self, ring: usize) -> Result<&TxRing, RingError> {
        let rings = self.tx.len();
        let slot = self
            .tx
            .get(ring)
            .ok_or(RingError::NoSuchTxRing { ring, rings })?;
        slot.as_ref().ok_or(RingError::TxNotRegistered { ring })
    }

    /// The TX ring `ring`, mutably.
    pub fn tx_ring_mut(&mut self, ring: usize) -> Result<&mut TxRing, RingError> {
        let rings = self.tx.len();
        let slot = self
            .tx
            .get_mut(ring)
            .ok_or(RingError::NoSuchTxRing { ring, rings })?;
        slot.as_mut().ok_or(RingError::TxNotRegistered { ring })
    }

    /// Takes the TX rings out of the view (one per sender thread); `None` for unregistered
    /// ones. The RX rings are dropped.
    pub fn into_tx_rings(self) -> Vec<Option<TxRing>> {
        self.tx
    }

    /// The RX ring `ring`.
    pub fn ring(&self, ring: usize) -> Result<&RxRing, RingError> {
        let rings = self.rx.len();
        let slot = self
            .rx
            .get(ring)
            .ok_or(RingError::NoSuchRing { ring, rings })?;
        slot.as_ref().ok_or(RingError::NotRegistered { ring })
    }

    /// The RX ring `ring`, mutably.
    pub fn ring_mut(&mut self, ring: usize) -> Result<&mut RxRing, RingError> {
        let rings = self.rx.len();
        let slot = self
            .rx
            .get_mut(ring)
            .ok_or(RingError::NoSuchRing { ring, rings })?;
        slot.as_mut().ok_or(RingError::NotRegistered { ring })
    }

    /// Takes the RX rings out of the view (one per worker); `None` for unregistered ones.
    pub fn into_rings(self) -> Vec<Option<RxRing>> {
        self.rx
    }

    /// Hands every frame available on RX ring `ring` to `f`, then releases the slots.
    /// See [`RxRing::rx_batch`].
    #[inline]
    pub fn rx_batch(&mut self, ring: usize, f: impl FnMut(&[u8])) -> Result<usize, RingError> {
        self.ring_mut(ring)?.rx_batch(f)
    }
}

/// The region being validated: base and length.
#[derive(Clone, Copy)]
struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    /// Checks that `offset..offset + size` lies in the region and `offset` is 8-aligned.
    fn check(&self, what: &str, offset: i128, size: u64) -> Result<usize, RingError> {
        let end = offset + i128::from(size);
        if offset < 0 || end > self.len as i128 {
            return Err(RingError::OutOfRegion {
                what: what.to_owned(),
                offset,
                size,
                region: self.len,
            });
        }
        if offset % 8 != 0 {
            return Err(RingError::Unaligned {
                what: what.to_owned(),
                offset,
            });
        }
        Ok(offset as usize)
    }

    /// # Safety
    ///
    /// `offset..offset + 4` must be inside the region, 4-aligned, and the region mapped.
    #[allow(unsafe_code)]
    unsafe fn load_u32(&self, offset: usize) -> u32 {
        // SAFETY: per this function's contract; u32 fields are read through AtomicU32 because
        // the other side may write them concurrently.
        unsafe { atomic_u32(self.base.add(offset)) }.load(Ordering::Acquire)
    }

    /// Validates the ring header at `ring_off` (an RX ring when `dir` is "", a TX ring when
    /// it is "TX "; `dir` prefixes the names in errors) and its slot and buffer areas.
    ///
    /// # Safety
    ///
    /// As for [`NetmapMem::from_raw`].
    #[allow(unsafe_code)]
    unsafe fn ring(&self, dir: &str, index: usize, ring_off: i128) -> Result<RingView, RingError> {
        let name = format!("{dir}ring {index} header");
        let off = self.check(&name, ring_off, RING_HEADER_LEN as u64)?;
        // SAFETY: the header is inside the region and 8-aligned (checked above); the caller
        // guarantees the memory is mapped.
        let (buf_ofs, num_slots, buf_size, head, cur, tail) = unsafe {
            (
                self.base
                    .add(off + RING_BUF_OFS)
                    .cast::<i64>()
                    .read_volatile(),
                self.load_u32(off + RING_NUM_SLOTS),
                self.load_u32(off + RING_BUF_SIZE),
                self.load_u32(off + RING_HEAD),
                self.load_u32(off + RING_CUR),
                self.load_u32(off + RING_TAIL),
            )
        };
        if !(2..=MAX_SLOTS).contains(&num_slots) {
            return Err(corrupt(
                index,
                format!("{dir}num_slots"),
                num_slots.into(),
                format!("2..={MAX_SLOTS}"),
            ));
        }
        if buf_size == 0 {
            return Err(corrupt(
                index,
                format!("{dir}nr_buf_size"),
                0,
                "must be non-zero",
            ));
        }
        for (field, value) in [("head", head), ("cur", cur), ("tail", tail)] {
            if value >= num_slots {
                return Err(corrupt(
                    index,
                    format!("{dir}{field}"),
                    value.into(),
                    format!("must be < num_slots = {num_slots}"),
                ));
            }
        }
        self.check(
            &format!("{dir}ring {index} slots"),
            ring_off + RING_SLOTS as i128,
            u64::from(num_slots) * SLOT_LEN as u64,
        )?;
        let bufs_off = ring_off + i128::from(buf_ofs);
        if bufs_off < 0 || bufs_off > self.len as i128 {
            return Err(RingError::OutOfRegion {
                what: format!("{dir}ring {index} buffers (buf_ofs {buf_ofs})"),
                offset: bufs_off,
                size: u64::from(buf_size),
                region: self.len,
            });
        }
        let nbufs = (self.len as u64 - bufs_off as u64) / u64::from(buf_size);
        if nbufs == 0 {
            return Err(RingError::OutOfRegion {
                what: format!("{dir}ring {index} buffer 0"),
                offset: bufs_off,
                size: u64::from(buf_size),
                region: self.len,
            });
        }
        // SAFETY: both offsets are inside the region (checked), so the pointers are in bounds
        // and non-null (the base is a valid mapping).
        let (ring, bufs) = unsafe {
            (
                NonNull::new_unchecked(self.base.add(off)),
                NonNull::new_unchecked(self.base.add(bufs_off as usize)),
            )
        };
        Ok(RingView {
            index,
            ring,
            num_slots,
            buf_size,
            bufs,
            nbufs,
            head,
            tail,
        })
    }
}

/// What [`Region::ring`] validated: the constant fields of a ring and where they point,
/// shared by [`RxRing`] and [`TxRing`].
#[derive(Debug)]
struct RingView {
    /// The ring's index among the rings of its direction.
    index: usize,
    /// The `netmap_ring` header.
    ring: NonNull<u8>,
    num_slots: u32,
    buf_size: u32,
    /// Start of buffer 0 (`ring + buf_ofs`).
    bufs: NonNull<u8>,
    /// How many whole buffers fit between `bufs` and the end of the region.
    nbufs: u64,
    /// `head` and `tail` when validated.
    head: u32,
    tail: u32,
}

impl RingView {
    /// One of the header's `u32` ring fields (RING_HEAD/CUR/TAIL).
    #[allow(unsafe_code)]
    #[inline(always)]
    fn field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of RING_HEAD/CUR/TAIL, inside the validated 8-aligned header;
        // the mapping outlives self (from_raw's contract).
        unsafe { atomic_u32(self.ring.as_ptr().add(offset)) }
    }

    /// Slot `i` (< num_slots).
    #[allow(unsafe_code)]
    #[inline(always)]
    fn slot(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.num_slots);
        // SAFETY: i < num_slots and the slot array was checked to lie in the region.
        unsafe { self.ring.as_ptr().add(RING_SLOTS + i as usize * SLOT_LEN) }
    }

    /// The buffer `buf_idx` names, checked to lie in the region (`what` names the field in
    /// the error: "slot 3 buf_idx", "TX slot 3 buf_idx").
    #[allow(unsafe_code)]
    #[inline(always)]
    fn buffer(&self, buf_idx: u32, what: impl FnOnce() -> String) -> Result<*mut u8, RingError> {
        if u64::from(buf_idx) >= self.nbufs {
            return Err(corrupt(
                self.index,
                what(),
                buf_idx.into(),
                format!("must be < {} (buffers in the region)", self.nbufs),
            ));
        }
        // SAFETY: buf_idx < nbufs, so start + buf_size <= the bytes after `bufs`.
        Ok(unsafe {
            self.bufs
                .as_ptr()
                .add(buf_idx as usize * self.buf_size as usize)
        })
    }

    /// Slots from `from` to `to`, going round the ring.
    #[inline(always)]
    fn dist(&self, from: u32, to: u32) -> u32 {
        if to >= from {
            to - from
        } else {
            to + self.num_slots - from
        }
    }
}

/// An atomic view of the `u32` at `ptr`.
///
/// # Safety
///
/// `ptr` must be 4-aligned and valid for reads and writes for `'a`.
#[allow(unsafe_code)]
#[inline(always)]
unsafe fn atomic_u32<'a>(ptr: *mut u8) -> &'a AtomicU32 {
    // SAFETY: AtomicU32 has the size and alignment of u32; the caller guarantees the pointer is
    // aligned and valid. Every access by this process to these fields goes through atomics.
    unsafe { &*(ptr as *const AtomicU32) }
}

/// Slots handed out per batch before they are given back to the producer.
pub const MAX_BATCH: usize = 256;

/// How far ahead [`RxRing::rx_batch_lookahead`] shows frames: [`Step::Far`] (start loading
/// the flow's index entry) and [`Step::Near`] (start loading the flow). (A third stage that
/// loaded the receive buffers cost more than it saved: 8.0 → 7.3 Mpps at 1M flows; distances 4/2, 6/3, 8/4, 12/6 and 16/8 gave 10.2, 10.4, 11.1–12.2, 12.7 and 12.9.)
pub const LOOKAHEAD_FAR: u32 = 12;
/// See [`LOOKAHEAD_FAR`].
pub const LOOKAHEAD_NEAR: u32 = 6;
/// How far ahead [`RxRing::rx_batch_lookahead`] starts loading a frame's first cache line
/// itself: the producer wrote it from another core, so reading its headers for
/// [`Step::Far`] would otherwise wait for the line to cross over.
pub const LOOKAHEAD_FRAME: u32 = 24;
/// How far ahead [`RxRing::rx_batch_indexed`] starts loading frames.
const FRAME_AHEAD: u32 = 8;

/// What [`RxRing::rx_batch_lookahead`] hands over.
#[derive(Debug)]
pub enum Step<'a> {
    /// A frame [`LOOKAHEAD_FAR`] places ahead (a hint; it comes again).
    Far(&'a [u8]),
    /// A frame [`LOOKAHEAD_NEAR`] places ahead (a hint; it comes again).
    Near(&'a [u8]),
    /// The frame to process now, with its slot index.
    Frame(&'a [u8], u32),
}

impl<'a> Step<'a> {
    #[inline(always)]
    fn hint(distance: u32, frame: &'a [u8]) -> Step<'a> {
        if distance == LOOKAHEAD_FAR {
            Step::Far(frame)
        } else {
            Step::Near(frame)
        }
    }
}

/// One validated RX ring: its constant fields cached, its `head` owned by this side.
#[derive(Debug)]
pub struct RxRing {
    v: RingView,
    /// Our copy of `head` (we are its only writer).
    head: u32,
}

// SAFETY: an RxRing is a set of pointers into a shared mapping whose owner keeps it alive (see
// NetmapMem::from_raw); it touches the shared fields only through atomics and the slots it owns
// under the ring protocol, so moving it to another thread (one worker per ring) is sound.
#[allow(unsafe_code)]
unsafe impl Send for RxRing {}

impl RxRing {
    /// Validates the ring header at `ring_off` and its slot and buffer areas.
    ///
    /// # Safety
    ///
    /// As for [`NetmapMem::from_raw`].
    #[allow(unsafe_code)]
    unsafe fn validate(region: Region, index: usize, ring_off: i128) -> Result<Self, RingError> {
        // SAFETY: forwarded from this function's contract.
        let v = unsafe { region.ring("", index, ring_off)? };
        Ok(RxRing { head: v.head, v })
    }

    /// This ring's index among the RX rings.
    pub fn index(&self) -> usize {
        self.v.index
    }

    /// Number of slots (`num_slots`).
    pub fn num_slots(&self) -> u32 {
        self.v.num_slots
    }

    /// Buffer size (`nr_buf_size`): the largest frame a slot can hold.
    pub fn buf_size(&self) -> u32 {
        self.v.buf_size
    }

    /// Loads `tail` (acquire) and checks it.
    #[inline(always)]
    fn tail(&self) -> Result<u32, RingError> {
        let tail = self.v.field(RING_TAIL).load(Ordering::Acquire);
        if tail >= self.v.num_slots {
            return Err(corrupt(
                self.v.index,
                "tail",
                tail.into(),
                format!("must be < num_slots = {}", self.v.num_slots),
            ));
        }
        Ok(tail)
    }

    /// Number of frames waiting (slots in `[head, tail)`).
    pub fn available(&self) -> Result<u32, RingError> {
        let tail = self.tail()?;
        Ok(self.v.dist(self.head, tail))
    }

    /// Starts loading the first cache line of slot `i`'s frame (a hint: an invalid slot is
    /// skipped here and reported when the frame is read).
    #[allow(unsafe_code)]
    #[inline(always)]
    fn prefetch_frame(&self, i: u32) {
        if let Ok(frame) = self.frame(i) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `frame` is a validated slice of the mapping (it may be empty: its
            // pointer is still inside the buffer area); a prefetch reads nothing
            // architecturally and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    frame.as_ptr().cast(),
                );
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = frame;
        }
    }

    /// Reads slot `i` (< num_slots) and returns its frame, validated.
    #[allow(unsafe_code)]
    #[inline(always)]
    fn frame(&self, i: u32) -> Result<&[u8], RingError> {
        // SAFETY: i < num_slots and the slot array was checked to lie in the region; the slot
        // is ours (in [head, tail)) so the other side does not write it now.
        let slot = unsafe { self.v.slot(i).cast::<netmap_slot>().read_volatile() };
        let buf = self
            .v
            .buffer(slot.buf_idx, || format!("slot {i} buf_idx"))?;
        if u32::from(slot.len) > self.v.buf_size {
            return Err(corrupt(
                self.v.index,
                format!("slot {i} len"),
                slot.len.into(),
                format!("must be <= nr_buf_size = {}", self.v.buf_size),
            ));
        }
        // SAFETY: `buf` starts a buffer of buf_size bytes inside the region and len <=
        // buf_size; the buffer belongs to a slot we own until we release it, which happens
        // only after the borrow handed to the caller ends (see rx_batch).
        Ok(unsafe { std::slice::from_raw_parts(buf, usize::from(slot.len)) })
    }

    /// Hands every frame available (slots `head..tail`) to `f` in ring order, then releases
    /// them (`head = cur = tail`, release ordering). Returns the number of frames.
    ///
    /// On a corrupt slot the frames before it are released and the error is returned; the
    /// bad slot stays at `head`, so the next call reports it again.
    #[inline]
    pub fn rx_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, RingError> {
        self.rx_batch_indexed(|frame, _| f(frame))
    }

    /// As [`rx_batch`](Self::rx_batch), also passing each frame's slot index.
    #[inline]
    pub fn rx_batch_indexed(&mut self, mut f: impl FnMut(&[u8], u32)) -> Result<usize, RingError> {
        let tail = self.tail()?;
        let mut i = self.head;
        let mut n = 0usize;
        let mut result = Ok(());
        // The frames were just written by the producer on another core: start pulling each
        // one over FRAME_AHEAD frames before it is read (17.5 instead of 11.5 Mpps through
        // the no-op plugin at 64 bytes).
        let avail = (tail + self.v.num_slots - self.head) % self.v.num_slots;
        for k in 0..avail.min(FRAME_AHEAD) {
            self.prefetch_frame((self.head + k) % self.v.num_slots);
        }
        // At most MAX_BATCH slots before they go back: a consumer that held the whole ring
        // would make the producer wait for it, and the two would take turns instead of
        // running side by side.
        while i != tail && n < MAX_BATCH {
            if (n as u32) + FRAME_AHEAD < avail {
                self.prefetch_frame((i + FRAME_AHEAD) % self.v.num_slots);
            }
            match self.frame(i) {
                Ok(frame) => f(frame, i),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            n += 1;
            i += 1;
            if i == self.v.num_slots {
                i = 0;
            }
        }
        if n > 0 {
            self.release(i);
        }
        result.map(|()| n)
    }

    /// As [`rx_batch_indexed`](Self::rx_batch_indexed), with lookahead: before frame `k`
    /// is handed over as [`Step::Frame`], frame `k + FAR` is shown as [`Step::Far`] and frame
    /// `k + NEAR` as [`Step::Near`] (when the batch has them), so that the consumer can
    /// start loading their state into the cache while it works on frame `k`.
    #[inline]
    pub fn rx_batch_lookahead(&mut self, mut f: impl FnMut(Step<'_>)) -> Result<usize, RingError> {
        let tail = self.tail()?;
        let n = self.v.num_slots;
        let avail = ((tail + n - self.head) % n).min(MAX_BATCH as u32);
        let at = |k: u32| (self.head + k) % n;
        for k in 0..avail.min(LOOKAHEAD_FRAME) {
            self.prefetch_frame(at(k));
        }
        // The first frames have no earlier frame to be hinted from: hint them now.
        for d in [LOOKAHEAD_FAR, LOOKAHEAD_NEAR] {
            for k in 0..avail.min(d) {
                if let Ok(fr) = self.frame(at(k)) {
                    f(Step::hint(d, fr));
                }
            }
        }
        let mut done = 0u32;
        let mut result = Ok(());
        while done < avail {
            if done + LOOKAHEAD_FRAME < avail {
                self.prefetch_frame(at(done + LOOKAHEAD_FRAME));
            }
            for d in [LOOKAHEAD_FAR, LOOKAHEAD_NEAR] {
                if done + d < avail {
                    if let Ok(fr) = self.frame(at(done + d)) {
                        f(Step::hint(d, fr));
                    }
                }
            }
            let i = at(done);
            match self.frame(i) {
                Ok(frame) => f(Step::Frame(frame, i)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            done += 1;
        }
        if done > 0 {
            self.release(at(done));
        }
        result.map(|()| done as usize)
    }

    /// Gives slots up to (not including) `to` back: `cur = head = to`, release ordering.
    #[inline(always)]
    fn release(&mut self, to: u32) {
        self.head = to;
        self.v.field(RING_CUR).store(to, Ordering::Release);
        self.v.field(RING_HEAD).store(to, Ordering::Release);
    }
}

/// One validated TX ring: its constant fields cached, its `head` and `cur` owned by this side.
///
/// The slots `[cur, tail)` are free to fill; the frames in `[head, cur)` are written but not
/// yet handed to the kernel. [`push`](Self::push) fills slot `cur`, [`publish`](Self::publish)
/// moves `head` up to `cur`, and the owner's `NIOCTXSYNC` (or `poll`) sends them.
#[derive(Debug)]
pub struct TxRing {
    v: RingView,
    /// `head` as last published (we are its only writer).
    head: u32,
    /// The next slot to fill.
    cur: u32,
    /// The last `tail` loaded (it only moves forward, so `[cur, tail)` stays free).
    tail: u32,
}

// SAFETY: as for RxRing: pointers into a mapping its owner keeps alive, shared fields touched
// only through atomics, and only the slots and buffers this side owns under the ring protocol
// are written; moving it to another thread (one sender per ring) is sound.
#[allow(unsafe_code)]
unsafe impl Send for TxRing {}

impl TxRing {
    /// Validates the ring header at `ring_off` and its slot and buffer areas. `cur` starts
    /// at `head` (nothing written yet).
    ///
    /// # Safety
    ///
    /// As for [`NetmapMem::from_raw`].
    #[allow(unsafe_code)]
    unsafe fn validate(region: Region, index: usize, ring_off: i128) -> Result<Self, RingError> {
        // SAFETY: forwarded from this function's contract.
        let v = unsafe { region.ring("TX ", index, ring_off)? };
        Ok(TxRing {
            head: v.head,
            cur: v.head,
            tail: v.tail,
            v,
        })
    }

    /// This ring's index among the TX rings.
    pub fn index(&self) -> usize {
        self.v.index
    }

    /// Number of slots (`num_slots`).
    pub fn num_slots(&self) -> u32 {
        self.v.num_slots
    }

    /// Buffer size (`nr_buf_size`).
    pub fn buf_size(&self) -> u32 {
        self.v.buf_size
    }

    /// The largest frame a slot takes: `nr_buf_size`, at most 65535 (`len` is 16 bits).
    pub fn max_frame(&self) -> usize {
        self.v.buf_size.min(u32::from(u16::MAX)) as usize
    }

    /// Frames written since the last [`publish`](Self::publish) (slots `[head, cur)`).
    pub fn pending(&self) -> u32 {
        self.v.dist(self.head, self.cur)
    }

    /// Loads `tail` (acquire) and checks it: below `num_slots`, and not among the slots
    /// written since the last publish (the kernel cannot take back slots it was not given).
    #[inline]
    fn load_tail(&mut self) -> Result<u32, RingError> {
        let tail = self.v.field(RING_TAIL).load(Ordering::Acquire);
        if tail >= self.v.num_slots {
            return Err(corrupt(
                self.v.index,
                "TX tail",
                tail.into(),
                format!("must be < num_slots = {}", self.v.num_slots),
            ));
        }
        if self.v.dist(self.head, tail) < self.v.dist(self.head, self.cur) {
            return Err(corrupt(
                self.v.index,
                "TX tail",
                tail.into(),
                format!(
                    "must not fall among the slots {}..{} written since the last publish",
                    self.head, self.cur
                ),
            ));
        }
        self.tail = tail;
        Ok(tail)
    }

    /// Free slots (`[cur, tail)`), with a fresh load of `tail`.
    pub fn space(&mut self) -> Result<u32, RingError> {
        let tail = self.load_tail()?;
        Ok(self.v.dist(self.cur, tail))
    }

    /// Slots the kernel still holds beyond the one it always keeps: frames published and not
    /// yet sent (netmap's `nm_tx_pending`). 0 once the port has sent everything published.
    pub fn in_flight(&mut self) -> Result<u32, RingError> {
        let tail = self.load_tail()?;
        Ok(self.v.num_slots - 1 - self.v.dist(self.head, tail))
    }

    /// Writes `frame` into the buffer of slot `cur` (`len` = its length, `flags` = 0) and
    /// advances `cur`; the kernel sees it after [`publish`](Self::publish) and a sync.
    /// `Ok(false)` when the ring is full (`cur == tail` after a fresh load of `tail`).
    ///
    /// A frame longer than [`max_frame`](Self::max_frame) is [`RingError::TooLarge`]; a
    /// slot whose `buf_idx` names no buffer in the region, or a `tail` that moved backwards,
    /// is [`RingError::Corrupt`] (nothing is written).
    #[allow(unsafe_code)]
    #[inline]
    pub fn push(&mut self, frame: &[u8]) -> Result<bool, RingError> {
        let max = self.max_frame();
        if frame.len() > max {
            return Err(RingError::TooLarge {
                ring: self.v.index,
                len: frame.len(),
                max,
            });
        }
        if self.cur == self.tail && self.space()? == 0 {
            return Ok(false);
        }
        let i = self.cur;
        let slot = self.v.slot(i);
        // SAFETY: slot i is in the validated slot array, 8-aligned (the ring header is and
        // RING_SLOTS and SLOT_LEN are multiples of 8), so its 4-byte buf_idx is aligned; it
        // lies in [cur, tail), which belongs to this side.
        let buf_idx = unsafe { slot.add(SLOT_BUF_IDX).cast::<u32>().read_volatile() };
        let dst = self.v.buffer(buf_idx, || format!("TX slot {i} buf_idx"))?;
        let (d, s) = (dst as usize, frame.as_ptr() as usize);
        if d < s + frame.len() && s < d + frame.len() {
            // Only a corrupt image can do this (the caller passed a frame lent from this
            // region, e.g. an RX buffer, and this slot names that same buffer); writing would
            // change the bytes of a live shared borrow.
            return Err(corrupt(
                self.v.index,
                format!("TX slot {i} buf_idx"),
                buf_idx.into(),
                "must not name the buffer the frame is read from",
            ));
        }
        // SAFETY: dst..dst + frame.len() lies in the buffer (len <= max <= buf_size), inside
        // the mapping, and does not overlap `frame` (checked above); the buffer belongs to
        // slot i, which this side owns until it publishes it. The slot's len (u16 at 4) and
        // flags (u16 at 6) are aligned.
        unsafe {
            std::ptr::copy_nonoverlapping(frame.as_ptr(), dst, frame.len());
            slot.add(SLOT_LEN_FIELD)
                .cast::<u16>()
                .write_volatile(frame.len() as u16);
            slot.add(SLOT_FLAGS).cast::<u16>().write_volatile(0);
        }
        self.cur = if i + 1 == self.v.num_slots { 0 } else { i + 1 };
        Ok(true)
    }

    /// Pushes `frames` in order until the ring is full; returns how many were written (a
    /// prefix of `frames`). Publish them with [`publish`](Self::publish).
    #[inline]
    pub fn push_batch(&mut self, frames: &[&[u8]]) -> Result<usize, RingError> {
        for (n, frame) in frames.iter().enumerate() {
            if !self.push(frame)? {
                return Ok(n);
            }
        }
        Ok(frames.len())
    }

    /// Hands the frames written since the last publish to the kernel: marks the last one
    /// `NS_REPORT` (so that the port reports its completion, as pkt-gen does, and `poll`
    /// wakes up), then stores `cur` and `head` (= `cur`) with release ordering. No system
    /// call: the owner's next `NIOCTXSYNC` or `poll` transmits them. Returns how many frames
    /// were published.
    #[allow(unsafe_code)]
    #[inline]
    pub fn publish(&mut self) -> u32 {
        let n = self.pending();
        if n == 0 {
            return 0;
        }
        let last = if self.cur == 0 {
            self.v.num_slots - 1
        } else {
            self.cur - 1
        };
        // SAFETY: slot `last` (< num_slots) is in [head, cur): written by this side and not
        // yet given to the kernel; its flags (u16 at 6) are aligned.
        unsafe {
            self.v
                .slot(last)
                .add(SLOT_FLAGS)
                .cast::<u16>()
                .write_volatile(NS_REPORT)
        };
        self.v.field(RING_CUR).store(self.cur, Ordering::Release);
        self.v.field(RING_HEAD).store(self.cur, Ordering::Release);
        self.head = self.cur;
        n
    }
}

/// Where everything goes in a netmap image built by [`write_image`]: one `netmap_if` with
/// `tx_rings` TX rings and `rings` RX rings (no host rings; `shm` regions have RX rings only),
/// then the rings (128-byte aligned, TX rings first), then one buffer pool (page aligned).
/// Buffer `t * slots + slot` is initially attached to slot `slot` of TX ring `t`, buffer
/// `(tx_rings + r) * slots + slot` to slot `slot` of RX ring `r`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageLayout {
    pub(crate) if_offset: usize,
    /// RX rings.
    pub(crate) rings: u32,
    pub(crate) tx_rings: u32,
    pub(crate) slots: u32,
    pub(crate) buf_size: u32,
    /// Offsets of the RX rings.
    pub(crate) ring_offsets: Vec<usize>,
    /// Offsets of the TX rings.
    pub(crate) tx_ring_offsets: Vec<usize>,
    pub(crate) bufs_offset: usize,
    pub(crate) total_len: usize,
}

fn align_up(x: usize, a: usize) -> Option<usize> {
    Some(x.checked_add(a - 1)? / a * a)
}

impl ImageLayout {
    /// The layout of an image with `rings` RX rings (and no TX ring) starting at `start`
    /// (8-aligned), or `None` on overflow: the layout of a `shm` region.
    pub(crate) fn new(start: usize, rings: u32, slots: u32, buf_size: u32) -> Option<Self> {
        Self::with_tx(start, 0, rings, slots, buf_size)
    }

    /// As [`new`](Self::new), with `tx_rings` TX rings before the RX rings.
    pub(crate) fn with_tx(
        start: usize,
        tx_rings: u32,
        rings: u32,
        slots: u32,
        buf_size: u32,
    ) -> Option<Self> {
        let all = (tx_rings as usize).checked_add(rings as usize)?;
        let if_offset = align_up(start, 8)?;
        let if_end = if_offset.checked_add(IF_HEADER_LEN.checked_add(all.checked_mul(8)?)?)?;
        let ring_len = align_up(
            RING_HEADER_LEN.checked_add((slots as usize).checked_mul(SLOT_LEN)?)?,
            128,
        )?;
        let first = align_up(if_end, 128)?;
        let mut offsets = (0..all)
            .map(|i| first.checked_add(i.checked_mul(ring_len)?))
            .collect::<Option<Vec<_>>>()?;
        let ring_offsets = offsets.split_off(tx_rings as usize);
        let rings_end = first.checked_add(all.checked_mul(ring_len)?)?;
        let bufs_offset = align_up(rings_end, 4096)?;
        let pool = all
            .checked_mul(slots as usize)?
            .checked_mul(buf_size as usize)?;
        let total_len = bufs_offset.checked_add(pool)?;
        Some(ImageLayout {
            if_offset,
            rings,
            tx_rings,
            slots,
            buf_size,
            ring_offsets,
            tx_ring_offsets: offsets,
            bufs_offset,
            total_len,
        })
    }

    /// Offset of slot `slot` of RX ring `ring`.
    pub(crate) fn slot_offset(&self, ring: usize, slot: usize) -> usize {
        self.ring_offsets[ring] + RING_SLOTS + slot * SLOT_LEN
    }

    /// Offset of slot `slot` of TX ring `ring`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn tx_slot_offset(&self, ring: usize, slot: usize) -> usize {
        self.tx_ring_offsets[ring] + RING_SLOTS + slot * SLOT_LEN
    }

    /// Offset of buffer `idx`.
    pub(crate) fn buf_offset(&self, idx: usize) -> usize {
        self.bufs_offset + idx * self.buf_size as usize
    }
}

fn put(mem: &mut [u8], off: usize, bytes: &[u8]) {
    mem[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Writes a fresh netmap image into `mem`, which must be `layout.total_len` bytes: the
/// `netmap_if`, empty TX rings as netmap leaves them after registering (`head = cur = 0`,
/// `tail = slots - 1`: every slot but one free), empty RX rings (`head = cur = tail = 0`),
/// each slot attached to its buffer.
pub(crate) fn write_image(mem: &mut [u8], layout: &ImageLayout) {
    let nifp = layout.if_offset;
    let name = b"flowpeek-shm";
    put(mem, nifp, name);
    put(mem, nifp + IF_TX_RINGS, &layout.tx_rings.to_ne_bytes());
    put(mem, nifp + IF_RX_RINGS, &layout.rings.to_ne_bytes());
    put(mem, nifp + IF_HOST_TX_RINGS, &0u32.to_ne_bytes());
    put(mem, nifp + IF_HOST_RX_RINGS, &0u32.to_ne_bytes());
    // ring_ofs[] and buffers: TX rings first, then RX rings. NR_TX = 0, NR_RX = 1.
    let tx = layout.tx_ring_offsets.iter().map(|&r| (r, 0u16));
    let rx = layout.ring_offsets.iter().map(|&r| (r, 1u16));
    for (entry, (ring, dir)) in tx.chain(rx).enumerate() {
        let ofs = ring as i64 - nifp as i64;
        put(mem, nifp + IF_RING_OFS + 8 * entry, &ofs.to_ne_bytes());
        let buf_ofs = layout.bufs_offset as i64 - ring as i64;
        put(mem, ring + RING_BUF_OFS, &buf_ofs.to_ne_bytes());
        put(mem, ring + RING_NUM_SLOTS, &layout.slots.to_ne_bytes());
        put(mem, ring + RING_BUF_SIZE, &layout.buf_size.to_ne_bytes());
        let id = if dir == 0 {
            entry
        } else {
            entry - layout.tx_rings as usize
        };
        put(
            mem,
            ring + std::mem::offset_of!(netmap_ring, ringid),
            &(id as u16).to_ne_bytes(),
        );
        put(
            mem,
            ring + std::mem::offset_of!(netmap_ring, dir),
            &dir.to_ne_bytes(),
        );
        let tail = if dir == 0 { layout.slots - 1 } else { 0 };
        put(mem, ring + RING_HEAD, &0u32.to_ne_bytes());
        put(mem, ring + RING_CUR, &0u32.to_ne_bytes());
        put(mem, ring + RING_TAIL, &tail.to_ne_bytes());
        for s in 0..layout.slots as usize {
            let idx = (entry * layout.slots as usize + s) as u32;
            let so = ring + RING_SLOTS + s * SLOT_LEN;
            put(mem, so + SLOT_BUF_IDX, &idx.to_ne_bytes());
            put(mem, so + SLOT_LEN_FIELD, &0u16.to_ne_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built netmap image in 8-aligned heap memory.
    struct Image {
        words: Vec<u64>,
        layout: ImageLayout,
        /// Per TX ring: the kernel's `hwcur` (the next slot it transmits).
        hwcur: Vec<u32>,
    }

    impl Image {
        fn new(rings: u32, slots: u32, buf_size: u32) -> Self {
            Self::with_tx(0, rings, slots, buf_size)
        }
        fn with_tx(tx: u32, rx: u32, slots: u32, buf_size: u32) -> Self {
            let layout = ImageLayout::with_tx(0, tx, rx, slots, buf_size).unwrap();
            let mut words = vec![0u64; layout.total_len.div_ceil(8)];
            write_image(&mut Self::bytes_of(&mut words)[..layout.total_len], &layout);
            Image {
                words,
                layout,
                hwcur: vec![0; tx as usize],
            }
        }
        fn bytes_of(words: &mut [u64]) -> &mut [u8] {
            let len = words.len() * 8;
            // SAFETY: u8 has no alignment or validity requirements; same allocation and length.
            #[allow(unsafe_code)]
            unsafe {
                std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len)
            }
        }
        fn bytes(&mut self) -> &mut [u8] {
            let len = self.layout.total_len;
            &mut Self::bytes_of(&mut self.words)[..len]
        }
        fn mem(&mut self, host: HostRings) -> Result<NetmapMem, RingError> {
            let len = self.layout.total_len;
            let base = self.words.as_mut_ptr().cast::<u8>();
            // SAFETY: the Vec outlives the view in every test (the view is dropped first).
            #[allow(unsafe_code)]
            unsafe {
                NetmapMem::from_raw(base, len, self.layout.if_offset, host)
            }
        }
        fn u32_at(&mut self, off: usize) -> u32 {
            u32::from_ne_bytes(self.bytes()[off..off + 4].try_into().unwrap())
        }
        fn u16_at(&mut self, off: usize) -> u16 {
            u16::from_ne_bytes(self.bytes()[off..off + 2].try_into().unwrap())
        }
        fn set_u32(&mut self, off: usize, v: u32) {
            put(self.bytes(), off, &v.to_ne_bytes());
        }
        fn set_i64(&mut self, off: usize, v: i64) {
            put(self.bytes(), off, &v.to_ne_bytes());
        }
        /// Plays the kernel: fills the slot at `tail` with `frame`, advances `tail`.
        fn produce(&mut self, ring: usize, frame: &[u8]) {
            let r = self.layout.ring_offsets[ring];
            let tail = self.u32_at(r + RING_TAIL);
            let so = self.layout.slot_offset(ring, tail as usize);
            let idx = self.u32_at(so + SLOT_BUF_IDX) as usize;
            let bo = self.layout.buf_offset(idx);
            put(self.bytes(), bo, frame);
            put(
                self.bytes(),
                so + SLOT_LEN_FIELD,
                &(frame.len() as u16).to_ne_bytes(),
            );
            let n = self.layout.slots;
            self.set_u32(r + RING_TAIL, (tail + 1) % n);
        }
        /// Plays the kernel's txsync on TX ring `ring`: sends the slots from its `hwcur` up to
        /// the `head` userspace published (returned in order), then gives them all back
        /// (`tail = head - 1`).
        fn transmit(&mut self, ring: usize) -> Vec<Vec<u8>> {
            let r = self.layout.tx_ring_offsets[ring];
            let n = self.layout.slots;
            let head = self.u32_at(r + RING_HEAD);
            let mut sent = Vec::new();
            while self.hwcur[ring] != head {
                let so = self.layout.tx_slot_offset(ring, self.hwcur[ring] as usize);
                let idx = self.u32_at(so + SLOT_BUF_IDX) as usize;
                let len = usize::from(self.u16_at(so + SLOT_LEN_FIELD));
                let bo = self.layout.buf_offset(idx);
                sent.push(self.bytes()[bo..bo + len].to_vec());
                self.hwcur[ring] = (self.hwcur[ring] + 1) % n;
            }
            self.set_u32(r + RING_TAIL, (head + n - 1) % n);
            sent
        }
    }

    fn collect(mem: &mut NetmapMem, ring: usize) -> Result<Vec<(Vec<u8>, u32)>, RingError> {
        let mut out = Vec::new();
        mem.ring_mut(ring)?
            .rx_batch_indexed(|f, i| out.push((f.to_vec(), i)))?;
        Ok(out)
    }

    #[test]
    fn layout_matches_netmap_h() {
        // Also asserted at compile time; kept here so the numbers show in test output.
        assert_eq!(SLOT_LEN, 16);
        assert_eq!(RING_HEADER_LEN, 256);
        assert_eq!(RING_SLOTS, 256);
        assert_eq!((RING_HEAD, RING_CUR, RING_TAIL), (20, 24, 28));
        assert_eq!(IF_RING_OFS, 56);
    }

    #[test]
    fn walks_slots_and_releases() {
        let mut img = Image::new(2, 8, 128);
        img.produce(1, b"hello");
        img.produce(1, b"world!");
        img.produce(0, b"zero");
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!(mem.rx_rings(), 2);
        assert_eq!(mem.ring(1).unwrap().available().unwrap(), 2);
        let got = collect(&mut mem, 1).unwrap();
        assert_eq!(got, vec![(b"hello".to_vec(), 0), (b"world!".to_vec(), 1)]);
        let got0 = collect(&mut mem, 0).unwrap();
        assert_eq!(got0, vec![(b"zero".to_vec(), 0)]);
        drop(mem);
        let r1 = img.layout.ring_offsets[1];
        assert_eq!(img.u32_at(r1 + RING_HEAD), 2);
        assert_eq!(img.u32_at(r1 + RING_CUR), 2);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!(collect(&mut mem, 1).unwrap(), vec![]);
    }

    #[test]
    fn wraps_around_non_power_of_two() {
        let mut img = Image::new(1, 5, 64);
        let mut next = 0u32;
        let mut seen = Vec::new();
        for round in 0..7 {
            // Fill up to 4 (num_slots - 1) frames per round, which moves head/tail round the ring.
            let k = 1 + round % 4;
            for _ in 0..k {
                img.produce(0, &next.to_le_bytes());
                next += 1;
            }
            let mut mem = img.mem(HostRings::FromIf).unwrap();
            for (f, _) in collect(&mut mem, 0).unwrap() {
                seen.push(u32::from_le_bytes(f.try_into().unwrap()));
            }
        }
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn lookahead_shows_frames_ahead_and_hands_each_over_once() {
        // 11 slots, batches of up to 10 frames, round after round across the wrap.
        let mut img = Image::new(1, 11, 64);
        let mut next = 0u32;
        let mut frames = Vec::new();
        for round in 0..9u32 {
            let k = 1 + (round * 3) % 10;
            for _ in 0..k {
                img.produce(0, &next.to_le_bytes());
                next += 1;
            }
            let mut mem = img.mem(HostRings::FromIf).unwrap();
            let mut steps = Vec::new();
            let n = mem
                .ring_mut(0)
                .unwrap()
                .rx_batch_lookahead(|s| {
                    steps.push(match s {
                        Step::Far(f) => ('F', u32::from_le_bytes(f.try_into().unwrap())),
                        Step::Near(f) => ('N', u32::from_le_bytes(f.try_into().unwrap())),
                        Step::Frame(f, _) => ('P', u32::from_le_bytes(f.try_into().unwrap())),
                    })
                })
                .unwrap();
            assert_eq!(n, k as usize);
            let processed: Vec<u32> = steps.iter().filter(|s| s.0 == 'P').map(|s| s.1).collect();
            let first = next - k;
            assert_eq!(processed, (first..next).collect::<Vec<_>>());
            frames.extend(processed);
            // Every frame was hinted (far and near) before it was processed.
            for p in first..next {
                let at = steps.iter().position(|s| *s == ('P', p)).unwrap();
                for kind in ['F', 'N'] {
                    let hint = steps.iter().position(|s| *s == (kind, p));
                    assert!(hint.is_some_and(|h| h < at), "{kind} {p}: {steps:?}");
                }
            }
            // The lookahead is bounded: a hint is never more than FAR frames early.
            for (i, s) in steps.iter().enumerate() {
                if s.0 != 'P' {
                    let done = steps[..i].iter().filter(|x| x.0 == 'P').count() as u32;
                    assert!(s.1 - first <= done + LOOKAHEAD_FAR, "{steps:?}");
                }
            }
        }
        assert_eq!(frames, (0..next).collect::<Vec<_>>());
    }

    #[test]
    fn legacy_and_auto_host_rings() {
        // An API-11 style netmap_if: 1 TX ring, 1 host TX ring, 1 RX ring; fields read as 0.
        let mut img = Image::new(1, 4, 64);
        let nifp = img.layout.if_offset;
        let ring = img.layout.ring_offsets[0] as i64;
        // ring_ofs[] = [tx0, host tx, rx0, host rx]; room exists (the rings start 128-aligned).
        img.set_u32(nifp + IF_TX_RINGS, 1);
        img.set_i64(nifp + IF_RING_OFS, ring);
        img.set_i64(nifp + IF_RING_OFS + 8, ring);
        img.set_i64(nifp + IF_RING_OFS + 16, ring);
        img.set_i64(nifp + IF_RING_OFS + 24, ring);
        img.produce(0, b"x");
        let mut mem = img.mem(HostRings::Auto).unwrap();
        assert_eq!(mem.tx_rings(), 1);
        assert_eq!(collect(&mut mem, 0).unwrap().len(), 1);
    }

    #[test]
    fn unregistered_ring_is_reported() {
        let mut img = Image::new(3, 4, 64);
        let nifp = img.layout.if_offset;
        img.set_i64(nifp + IF_RING_OFS + 8, 0);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!(
            mem.rx_batch(1, |_| {}),
            Err(RingError::NotRegistered { ring: 1 })
        );
        assert_eq!(
            mem.rx_batch(3, |_| {}),
            Err(RingError::NoSuchRing { ring: 3, rings: 3 })
        );
        assert_eq!(mem.rx_batch(2, |_| {}), Ok(0));
    }

    fn refused(img: &mut Image) -> String {
        img.mem(HostRings::FromIf).unwrap_err().to_string()
    }

    #[test]
    fn corrupt_headers_are_refused() {
        let fresh = || Image::new(2, 8, 128);
        let mut img = fresh();
        let r0 = img.layout.ring_offsets[0];
        let nifp = img.layout.if_offset;

        img.set_u32(r0 + RING_NUM_SLOTS, 0);
        assert!(
            refused(&mut img).contains("num_slots = 0"),
            "{}",
            refused(&mut img)
        );

        let mut img = fresh();
        img.set_u32(r0 + RING_NUM_SLOTS, 1 << 19);
        assert!(refused(&mut img).contains("ring 0 slots"));

        let mut img = fresh();
        img.set_u32(r0 + RING_TAIL, 8);
        assert!(refused(&mut img).contains("tail = 8"));

        let mut img = fresh();
        img.set_u32(r0 + RING_HEAD, 9);
        assert!(refused(&mut img).contains("head = 9"));

        let mut img = fresh();
        img.set_u32(r0 + RING_BUF_SIZE, 0);
        assert!(refused(&mut img).contains("nr_buf_size"));

        let mut img = fresh();
        img.set_i64(nifp + IF_RING_OFS, 1 << 40);
        assert!(refused(&mut img).contains("outside"));

        let mut img = fresh();
        img.set_i64(nifp + IF_RING_OFS, -64);
        assert!(refused(&mut img).contains("outside"));

        let mut img = fresh();
        img.set_i64(nifp + IF_RING_OFS, r0 as i64 + 4);
        assert!(refused(&mut img).contains("aligned"));

        let mut img = fresh();
        img.set_i64(r0 + RING_BUF_OFS, i64::MAX);
        assert!(refused(&mut img).contains("buffers"));

        let mut img = fresh();
        img.set_u32(nifp + IF_RX_RINGS, u32::MAX);
        assert!(refused(&mut img).contains("ni_rx_rings"));

        let mut img = fresh();
        img.set_u32(nifp + IF_RX_RINGS, 1000);
        assert!(refused(&mut img).contains("ring_ofs"));

        let mut img = fresh();
        let len = img.layout.total_len;
        let base = img.words.as_mut_ptr().cast::<u8>();
        // SAFETY: the region is inside the Vec; a misaligned base is refused before any read.
        #[allow(unsafe_code)]
        let err = unsafe { NetmapMem::from_raw(base.add(1), len - 1, 0, HostRings::FromIf) };
        assert!(matches!(err, Err(RingError::Misaligned { .. })));
    }

    #[test]
    fn corrupt_slots_and_tail_are_errors_not_ub() {
        let mut img = Image::new(1, 8, 128);
        img.produce(0, b"good");
        img.produce(0, b"bad-index");
        img.produce(0, b"later");
        let so = img.layout.slot_offset(0, 1);
        img.set_u32(so + SLOT_BUF_IDX, 1_000_000);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let mut got = Vec::new();
        let err = mem.rx_batch(0, |f| got.push(f.to_vec())).unwrap_err();
        assert_eq!(got, vec![b"good".to_vec()]);
        assert!(
            err.to_string().contains("slot 1 buf_idx = 1000000"),
            "{err}"
        );
        // The good frame was released, the bad slot stays at head.
        assert_eq!(mem.ring(0).unwrap().available().unwrap(), 2);
        drop(mem);

        let mut img = Image::new(1, 8, 128);
        img.produce(0, b"x");
        let so = img.layout.slot_offset(0, 0);
        put(img.bytes(), so + SLOT_LEN_FIELD, &129u16.to_ne_bytes());
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let err = mem.rx_batch(0, |_| {}).unwrap_err();
        assert!(err.to_string().contains("len = 129"), "{err}");
        drop(mem);

        // tail corrupted after validation.
        let mut img = Image::new(1, 8, 128);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let r0 = img.layout.ring_offsets[0];
        img.set_u32(r0 + RING_TAIL, 77);
        let err = mem.rx_batch(0, |_| {}).unwrap_err();
        assert!(err.to_string().contains("tail = 77"), "{err}");
    }

    #[test]
    fn shm_layout_has_rx_rings_only() {
        // The shm file format: these offsets are what ShmRegion writes and reads.
        let l = ImageLayout::new(4096, 2, 8, 64).unwrap();
        assert_eq!(l, ImageLayout::with_tx(4096, 0, 2, 8, 64).unwrap());
        assert_eq!(l.tx_rings, 0);
        assert!(l.tx_ring_offsets.is_empty());
        assert_eq!(l.if_offset, 4096);
        assert_eq!(l.ring_offsets, vec![4224, 4608]);
        assert_eq!(l.bufs_offset, 8192);
        assert_eq!(l.total_len, 8192 + 2 * 8 * 64);
        let mut img = Image::new(2, 8, 64);
        assert_eq!(img.u32_at(IF_TX_RINGS), 0);
        let mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!((mem.tx_rings(), mem.rx_rings()), (0, 2));
        assert_eq!(
            mem.tx_ring(0).unwrap_err(),
            RingError::NoSuchTxRing { ring: 0, rings: 0 }
        );
    }

    #[test]
    fn tx_frames_land_in_their_slots_and_publish() {
        let mut img = Image::with_tx(2, 1, 8, 128);
        img.produce(0, b"rx frame");
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!((mem.tx_rings(), mem.rx_rings()), (2, 1));
        let tx = mem.tx_ring_mut(1).unwrap();
        assert_eq!(tx.index(), 1);
        assert_eq!(
            (tx.num_slots(), tx.buf_size(), tx.max_frame()),
            (8, 128, 128)
        );
        // An empty TX ring: every slot but the one the kernel keeps is free.
        assert_eq!(tx.space().unwrap(), 7);
        assert_eq!(tx.in_flight().unwrap(), 0);
        assert_eq!(tx.push(b"hello"), Ok(true));
        assert_eq!(tx.push(b"world!"), Ok(true));
        assert_eq!(tx.pending(), 2);
        assert_eq!(tx.space().unwrap(), 5);
        drop(mem);
        // Not published yet: the kernel sees nothing.
        let r1 = img.layout.tx_ring_offsets[1];
        assert_eq!(img.u32_at(r1 + RING_HEAD), 0);
        assert_eq!(img.transmit(1), Vec::<Vec<u8>>::new());

        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(1).unwrap();
        assert_eq!(tx.push(b"hello"), Ok(true));
        assert_eq!(tx.push(b"world!"), Ok(true));
        assert_eq!(tx.publish(), 2);
        assert_eq!(tx.publish(), 0);
        assert_eq!(tx.pending(), 0);
        assert_eq!(tx.in_flight().unwrap(), 2);
        // The RX side of the same image is untouched.
        let got = collect(&mut mem, 0).unwrap();
        assert_eq!(got, vec![(b"rx frame".to_vec(), 0)]);
        drop(mem);
        assert_eq!(img.u32_at(r1 + RING_HEAD), 2);
        assert_eq!(img.u32_at(r1 + RING_CUR), 2);
        let r0 = img.layout.tx_ring_offsets[0];
        assert_eq!(img.u32_at(r0 + RING_HEAD), 0);
        for (s, frame) in [(0usize, &b"hello"[..]), (1, &b"world!"[..])] {
            let so = img.layout.tx_slot_offset(1, s);
            // TX ring 1's slots carry buffers 8..16.
            assert_eq!(img.u32_at(so + SLOT_BUF_IDX), 8 + s as u32);
            assert_eq!(usize::from(img.u16_at(so + SLOT_LEN_FIELD)), frame.len());
            let bo = img.layout.buf_offset(8 + s);
            assert_eq!(&img.bytes()[bo..bo + frame.len()], frame);
        }
        // The last slot of the batch asks for a completion report, as pkt-gen does.
        let flags = |img: &mut Image, s| img.u16_at(img.layout.tx_slot_offset(1, s) + SLOT_FLAGS);
        assert_eq!((flags(&mut img, 0), flags(&mut img, 1)), (0, NS_REPORT));
        assert_eq!(img.transmit(1), vec![b"hello".to_vec(), b"world!".to_vec()]);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(1).unwrap();
        assert_eq!(tx.in_flight().unwrap(), 0);
        assert_eq!(tx.space().unwrap(), 7);
    }

    #[test]
    fn tx_full_ring_refuses_until_the_kernel_gives_slots_back() {
        let mut img = Image::with_tx(1, 0, 4, 64);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        assert_eq!(tx.push_batch(&refs), Ok(3));
        assert_eq!(tx.push(&frames[3]), Ok(false));
        assert_eq!(tx.publish(), 3);
        // head == tail: full until the kernel transmits.
        assert_eq!(tx.space(), Ok(0));
        assert_eq!(tx.push(&frames[3]), Ok(false));
        assert_eq!(tx.in_flight(), Ok(3));
        drop(mem);
        let r = img.layout.tx_ring_offsets[0];
        assert_eq!(img.u32_at(r + RING_HEAD), img.u32_at(r + RING_TAIL));
        assert_eq!(img.transmit(0), frames[..3].to_vec());
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        assert_eq!(tx.space(), Ok(3));
        assert_eq!(tx.push_batch(&refs[3..]), Ok(2));
        tx.publish();
        drop(mem);
        assert_eq!(img.transmit(0), frames[3..].to_vec());
    }

    #[test]
    fn tx_wraps_around_non_power_of_two() {
        let mut img = Image::with_tx(1, 1, 5, 64);
        let mut next = 0u32;
        let mut sent = Vec::new();
        for round in 0..9 {
            // 1 to 4 (num_slots - 1) frames per round: head and tail go round the ring.
            let k = 1 + round % 4;
            let mut mem = img.mem(HostRings::FromIf).unwrap();
            let tx = mem.tx_ring_mut(0).unwrap();
            assert_eq!(tx.space(), Ok(4));
            for _ in 0..k {
                assert_eq!(tx.push(&next.to_le_bytes()), Ok(true));
                next += 1;
            }
            assert_eq!(tx.publish(), k);
            assert_eq!(tx.in_flight(), Ok(k));
            drop(mem);
            for f in img.transmit(0) {
                sent.push(u32::from_le_bytes(f.try_into().unwrap()));
            }
        }
        assert_eq!(sent, (0..next).collect::<Vec<_>>());
        // The ring went round several times: head is where the frames sent put it.
        let r = img.layout.tx_ring_offsets[0];
        assert_eq!(img.u32_at(r + RING_HEAD), next % 5);
    }

    #[test]
    fn tx_wraps_within_one_ring_view() {
        // The same, with one long-lived walker and the kernel moving tail behind it.
        let mut img = Image::with_tx(1, 0, 3, 64);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let r = img.layout.tx_ring_offsets[0];
        let mut sent = Vec::new();
        for i in 0..7u8 {
            let tx = mem.tx_ring_mut(0).unwrap();
            assert_eq!(tx.push(&[i; 3]), Ok(true));
            assert_eq!(tx.publish(), 1);
            // Play the kernel: slot `i % 3` sent, tail moves to head - 1.
            let head = img.u32_at(r + RING_HEAD);
            assert_eq!(head, u32::from(i + 1) % 3);
            let so = img.layout.tx_slot_offset(0, usize::from(i % 3));
            let idx = img.u32_at(so + SLOT_BUF_IDX) as usize;
            let bo = img.layout.buf_offset(idx);
            sent.push(img.bytes()[bo]);
            img.set_u32(r + RING_TAIL, (head + 2) % 3);
        }
        assert_eq!(mem.tx_ring_mut(0).unwrap().in_flight(), Ok(0));
        assert_eq!(sent, (0..7).collect::<Vec<u8>>());
    }

    #[test]
    fn tx_frame_larger_than_a_buffer_is_refused() {
        let mut img = Image::with_tx(1, 0, 4, 128);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        let err = tx.push(&[0u8; 129]).unwrap_err();
        assert_eq!(
            err,
            RingError::TooLarge {
                ring: 0,
                len: 129,
                max: 128
            }
        );
        assert!(err.to_string().contains("nr_buf_size"), "{err}");
        assert_eq!(tx.pending(), 0);
        assert_eq!(tx.push(&[0u8; 128]), Ok(true));
    }

    #[test]
    fn tx_corrupt_headers_are_refused() {
        let fresh = || Image::with_tx(2, 1, 8, 128);
        let mut img = fresh();
        let t1 = img.layout.tx_ring_offsets[1];
        let nifp = img.layout.if_offset;

        img.set_u32(t1 + RING_HEAD, 9);
        assert!(
            refused(&mut img).contains("TX head = 9"),
            "{}",
            refused(&mut img)
        );

        let mut img = fresh();
        img.set_u32(t1 + RING_TAIL, 8);
        assert!(refused(&mut img).contains("TX tail = 8"));

        let mut img = fresh();
        img.set_u32(t1 + RING_NUM_SLOTS, 1);
        assert!(refused(&mut img).contains("TX num_slots = 1"));

        let mut img = fresh();
        img.set_u32(t1 + RING_BUF_SIZE, 0);
        assert!(refused(&mut img).contains("TX nr_buf_size"));

        let mut img = fresh();
        img.set_i64(nifp + IF_RING_OFS + 8, 1 << 40);
        let e = refused(&mut img);
        assert!(
            e.contains("TX ring 1 header") && e.contains("outside"),
            "{e}"
        );

        let mut img = fresh();
        img.set_i64(t1 + RING_BUF_OFS, i64::MIN);
        assert!(refused(&mut img).contains("TX ring 1 buffers"));

        let mut img = fresh();
        img.set_u32(nifp + IF_TX_RINGS, 5000);
        assert!(refused(&mut img).contains("ni_tx_rings"));

        // An unregistered TX ring is kept as such.
        let mut img = fresh();
        img.set_i64(nifp + IF_RING_OFS, 0);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!(
            mem.tx_ring_mut(0).unwrap_err(),
            RingError::TxNotRegistered { ring: 0 }
        );
        assert_eq!(
            mem.tx_ring(2).unwrap_err(),
            RingError::NoSuchTxRing { ring: 2, rings: 2 }
        );
        assert!(mem.tx_ring(1).is_ok());
        assert_eq!(mem.into_tx_rings().len(), 2);
    }

    #[test]
    fn tx_corrupt_tail_and_buf_idx_are_errors_not_ub() {
        // tail beyond the ring, after validation.
        let mut img = Image::with_tx(1, 0, 8, 128);
        let r = img.layout.tx_ring_offsets[0];
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        img.set_u32(r + RING_TAIL, 99);
        let err = mem.tx_ring_mut(0).unwrap().space().unwrap_err();
        assert!(err.to_string().contains("TX tail = 99"), "{err}");
        drop(mem);

        // tail moved back among the slots written since the last publish.
        let mut img = Image::with_tx(1, 0, 4, 128);
        let r = img.layout.tx_ring_offsets[0];
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        assert_eq!(tx.push(b"a"), Ok(true));
        assert_eq!(tx.push(b"b"), Ok(true));
        img.set_u32(r + RING_TAIL, 1);
        let tx = mem.tx_ring_mut(0).unwrap();
        let err = tx.space().unwrap_err();
        assert!(err.to_string().contains("TX tail = 1"), "{err}");
        assert!(err.to_string().contains("written since"), "{err}");
        drop(mem);

        // head == tail with nothing written is a full ring, not corruption.
        let mut img = Image::with_tx(1, 0, 4, 128);
        let r = img.layout.tx_ring_offsets[0];
        img.set_u32(r + RING_TAIL, 0);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!(mem.tx_ring_mut(0).unwrap().push(b"x"), Ok(false));
        drop(mem);

        // A slot naming a buffer past the region: refused, nothing written, cur stays.
        let mut img = Image::with_tx(1, 0, 8, 128);
        let so = img.layout.tx_slot_offset(0, 0);
        img.set_u32(so + SLOT_BUF_IDX, 1_000_000);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        let err = tx.push(b"frame").unwrap_err();
        assert!(
            err.to_string().contains("TX slot 0 buf_idx = 1000000"),
            "{err}"
        );
        assert_eq!(tx.pending(), 0);
        assert_eq!(tx.publish(), 0);
        drop(mem);
        assert_eq!(img.u16_at(so + SLOT_LEN_FIELD), 0);

        // The last whole buffer of the region is in bounds.
        let mut img = Image::with_tx(1, 0, 4, 64);
        let last = (img.layout.total_len - img.layout.bufs_offset) / 64 - 1;
        let so = img.layout.tx_slot_offset(0, 0);
        img.set_u32(so + SLOT_BUF_IDX, last as u32);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let tx = mem.tx_ring_mut(0).unwrap();
        assert_eq!(tx.push(&[9u8; 64]), Ok(true));
        tx.publish();
        drop(mem);
        assert_eq!(img.transmit(0), vec![vec![9u8; 64]]);
    }

    #[test]
    fn tx_frame_read_from_the_slot_buffer_is_refused() {
        // A frame lent from this very region (an RX buffer, say) whose TX slot names the
        // same buffer: writing would change a live shared borrow, so it is refused.
        let mut img = Image::with_tx(1, 1, 4, 64);
        let so = img.layout.tx_slot_offset(0, 0);
        let rx_buf = 4; // RX ring 0, slot 0.
        img.set_u32(so + SLOT_BUF_IDX, rx_buf);
        let bo = img.layout.buf_offset(rx_buf as usize);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        let base = img.words.as_mut_ptr().cast::<u8>();
        // SAFETY: bo + 16 is inside the image, which outlives this slice; nothing writes
        // those bytes while it lives (the push below is refused).
        #[allow(unsafe_code)]
        let lent = unsafe { std::slice::from_raw_parts(base.add(bo + 8), 16) };
        let tx = mem.tx_ring_mut(0).unwrap();
        let err = tx.push(lent).unwrap_err();
        assert!(
            err.to_string().contains("must not name the buffer"),
            "{err}"
        );
        assert_eq!(tx.pending(), 0);
    }

    #[test]
    fn buffer_at_end_of_region_is_in_bounds() {
        let mut img = Image::new(1, 4, 64);
        let last = (img.layout.total_len - img.layout.bufs_offset) / 64 - 1;
        img.produce(0, &[7u8; 64]);
        let so = img.layout.slot_offset(0, 0);
        img.set_u32(so + SLOT_BUF_IDX, last as u32);
        let mut mem = img.mem(HostRings::FromIf).unwrap();
        assert_eq!(mem.rx_batch(0, |f| assert_eq!(f.len(), 64)).unwrap(), 1);
    }
}
