//! Validating a netmap memory image: [`NetmapMem::from_raw`] checks the `netmap_if` and every
//! ring header once and builds the [`RxRing`] and [`TxRing`] walkers; [`RingError`] says what
//! was wrong, naming the ring by [`RingId`] and [`Direction`].
//!
//! Owns the checks that make every later access stay inside the region (the cached constant
//! fields of `RingView`); must not hand out a pointer it did not bound.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::layout::*;
use super::rx::RxRing;
use super::tx::TxRing;

/// Which way a ring carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A receive ring: the kernel (or the shm producer) fills it, this side reads it.
    Rx,
    /// A transmit ring: this side fills it, the kernel sends it.
    Tx,
}

impl Direction {
    /// How a field of a ring of this direction is named in messages: "tail" on an RX ring,
    /// "TX tail" on a TX ring (the words netmap users know from `pkt-gen`).
    pub fn prefix(self) -> &'static str {
        match self {
            Direction::Rx => "",
            Direction::Tx => "TX ",
        }
    }
}

/// Where in a netmap image a bad field was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingId {
    /// The `netmap_if` (its ring counts).
    If,
    /// Ring `index` among the hardware rings of direction `dir`.
    Ring {
        /// RX or TX.
        dir: Direction,
        /// The ring's index among the rings of its direction.
        index: usize,
    },
}

impl RingId {
    /// The RX ring `index`.
    pub fn rx(index: usize) -> RingId {
        RingId::Ring {
            dir: Direction::Rx,
            index,
        }
    }

    /// The TX ring `index`.
    pub fn tx(index: usize) -> RingId {
        RingId::Ring {
            dir: Direction::Tx,
            index,
        }
    }

    /// The prefix of this place's field names: "TX " on a TX ring, else nothing.
    fn field_prefix(&self) -> &'static str {
        match self {
            RingId::If => "",
            RingId::Ring { dir, .. } => dir.prefix(),
        }
    }
}

impl std::fmt::Display for RingId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RingId::If => f.write_str("netmap_if"),
            RingId::Ring { index, .. } => write!(f, "netmap ring {index}"),
        }
    }
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
        /// Which structure: "netmap_if", "ring 2 header", "TX ring 1 buffers", ...
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
    #[error("corrupt {ring}: {}{field} = {value} is out of range ({rule}); the producer or kernel broke the ring protocol, stop reading this ring", .ring.field_prefix())]
    Corrupt {
        /// The `netmap_if`, or the ring (with its direction).
        ring: RingId,
        /// The field: "tail", "num_slots", "slot 17 buf_idx", "ni_rx_rings", ... (on a TX
        /// ring the message says "TX tail").
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

pub(super) fn corrupt(
    ring: RingId,
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
/// It does not own the memory; the owner ([`crate::io::shm::ShmConsumer`],
/// [`crate::io::netmap::NetmapPort`], [`crate::io::netmap::NetmapTxPort`]) keeps the mapping alive
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
                    RingId::If,
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
pub(super) struct Region {
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

    /// Validates the header of ring `index` of direction `dir` at `ring_off`, and its slot
    /// and buffer areas.
    ///
    /// # Safety
    ///
    /// As for [`NetmapMem::from_raw`].
    #[allow(unsafe_code)]
    pub(super) unsafe fn ring(
        &self,
        dir: Direction,
        index: usize,
        ring_off: i128,
    ) -> Result<RingView, RingError> {
        let id = RingId::Ring { dir, index };
        let dir = dir.prefix();
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
                id,
                "num_slots",
                num_slots.into(),
                format!("2..={MAX_SLOTS}"),
            ));
        }
        if buf_size == 0 {
            return Err(corrupt(id, "nr_buf_size", 0, "must be non-zero"));
        }
        for (field, value) in [("head", head), ("cur", cur), ("tail", tail)] {
            if value >= num_slots {
                return Err(corrupt(
                    id,
                    field,
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
            id,
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
pub(super) struct RingView {
    /// The ring, for errors.
    pub(super) id: RingId,
    /// The ring's index among the rings of its direction.
    pub(super) index: usize,
    /// The `netmap_ring` header.
    pub(super) ring: NonNull<u8>,
    pub(super) num_slots: u32,
    pub(super) buf_size: u32,
    /// Start of buffer 0 (`ring + buf_ofs`).
    pub(super) bufs: NonNull<u8>,
    /// How many whole buffers fit between `bufs` and the end of the region.
    pub(super) nbufs: u64,
    /// `head` and `tail` when validated.
    pub(super) head: u32,
    pub(super) tail: u32,
}

impl RingView {
    /// One of the header's `u32` ring fields (RING_HEAD/CUR/TAIL).
    #[allow(unsafe_code)]
    #[inline(always)]
    pub(super) fn field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of RING_HEAD/CUR/TAIL, inside the validated 8-aligned header;
        // the mapping outlives self (from_raw's contract).
        unsafe { atomic_u32(self.ring.as_ptr().add(offset)) }
    }

    /// Slot `i` (< num_slots).
    #[allow(unsafe_code)]
    #[inline(always)]
    pub(super) fn slot(&self, i: u32) -> *mut u8 {
        debug_assert!(i < self.num_slots);
        // SAFETY: i < num_slots and the slot array was checked to lie in the region.
        unsafe { self.ring.as_ptr().add(RING_SLOTS + i as usize * SLOT_LEN) }
    }

    /// The buffer `buf_idx` names, checked to lie in the region (`what` names the field in
    /// the error: "slot 3 buf_idx").
    #[allow(unsafe_code)]
    #[inline(always)]
    pub(super) fn buffer(
        &self,
        buf_idx: u32,
        what: impl FnOnce() -> String,
    ) -> Result<*mut u8, RingError> {
        if u64::from(buf_idx) >= self.nbufs {
            return Err(corrupt(
                self.id,
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
    pub(super) fn dist(&self, from: u32, to: u32) -> u32 {
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
pub(super) unsafe fn atomic_u32<'a>(ptr: *mut u8) -> &'a AtomicU32 {
    // SAFETY: AtomicU32 has the size and alignment of u32; the caller guarantees the pointer is
    // aligned and valid. Every access by this process to these fields goes through atomics.
    unsafe { &*(ptr as *const AtomicU32) }
}
