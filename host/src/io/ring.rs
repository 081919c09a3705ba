//! Walking netmap memory: the receive-ring code shared by [`super::netmap`] and [`super::shm`].
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
//! # Validation
//!
//! The memory is written by another party, so nothing in it is trusted. [`NetmapMem::from_raw`]
//! checks every offset and size once (the `netmap_if` and ring headers, ring counts, the slot
//! array, the buffer area) and caches the constant fields (`num_slots`, `nr_buf_size`, the
//! buffer base and count) so that a later change to them cannot move a read out of the region.
//! On each batch the fields that legitimately change are checked before use: `tail` must be
//! below `num_slots`, and each slot's `buf_idx` must name a buffer inside the region and its
//! `len` must not exceed `nr_buf_size`. A violation is a [`RingError`], never a panic or an
//! out-of-bounds read. `num_slots` need not be a power of two (netmap does not require it).
//!
//! # Caveat
//!
//! Frames are lent straight from the shared memory. netmap's contract is that the other side
//! does not write a slot or its buffer while the consumer owns it; a producer that breaks that
//! contract can change the bytes of a frame while it is being read (the frame is then garbage,
//! but every access stays inside the mapping).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use netmap_sys::netmap::{netmap_if, netmap_ring, netmap_slot};

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

// netmap's layout on 64-bit targets (net/netmap.h): a slot is 16 bytes, a ring header 256
// (the `sem` array is aligned to NM_CACHE_ALIGN = 128, so slots start at 256), and the
// `netmap_if` header 56 bytes before `ring_ofs[]`. netmap_sys spells the alignment as padding;
// these assertions make a layout change in that crate a compile error.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(SLOT_LEN == 16);
    assert!(SLOT_BUF_IDX == 0);
    assert!(SLOT_LEN_FIELD == 4);
    assert!(std::mem::offset_of!(netmap_slot, flags) == 6);
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
        /// The RX ring index (`usize::MAX` for the `netmap_if`).
        ring: usize,
        /// The field: "tail", "num_slots", "slot 17 buf_idx", ...
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
}

fn corrupt(ring: usize, field: impl Into<String>, value: u64, rule: impl Into<String>) -> RingError {
    RingError::Corrupt {
        ring,
        field: field.into(),
        value,
        rule: rule.into(),
    }
}

/// A view over a netmap memory region: its `netmap_if` and validated RX rings.
///
/// It does not own the memory; the owner ([`super::shm::ShmConsumer`],
/// [`super::netmap::NetmapPort`]) keeps the mapping alive for as long as the view.
#[derive(Debug)]
pub struct NetmapMem {
    rx: Vec<Option<RxRing>>,
    tx_rings: u32,
}

impl NetmapMem {
    /// Validates the netmap image at `base..base + len` whose `netmap_if` is at `if_offset`,
    /// and builds a walker for each of its hardware RX rings.
    ///
    /// A `ring_ofs` entry of 0 marks a ring that this file descriptor did not register
    /// (netmap's convention); such a ring is kept as "not registered". Every other ring is
    /// validated: header, slot array and buffer area inside the region, `num_slots` in
    /// `2..=MAX_SLOTS`, `head`, `cur` and `tail` below `num_slots`, `nr_buf_size` non-zero.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be readable and writable memory that stays mapped for as long
    /// as the returned value (and the [`RxRing`]s taken from it) are used. It may be written
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
            return Err(RingError::Misaligned { addr: base as usize });
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
                return Err(corrupt(usize::MAX, field, value.into(), format!("at most {MAX_RINGS}")));
            }
        }
        let entries = u64::from(tx) + u64::from(htx) + u64::from(rx) + u64::from(hrx);
        region.check(
            "netmap_if ring_ofs[]",
            (nifp + IF_RING_OFS) as i128,
            entries * 8,
        )?;
        let mut rings = Vec::with_capacity(rx as usize);
        for i in 0..rx as usize {
            let entry = nifp + IF_RING_OFS + 8 * (tx as usize + htx as usize + i);
            // SAFETY: the ring_ofs[] array is inside the region (checked above), 8-aligned.
            let ofs = unsafe { region.base.add(entry).cast::<i64>().read_volatile() };
            if ofs == 0 {
                rings.push(None);
                continue;
            }
            let ring_off = nifp as i128 + i128::from(ofs);
            // SAFETY: forwarded from this function's contract.
            rings.push(Some(unsafe { RxRing::validate(region, i, ring_off)? }));
        }
        Ok(NetmapMem { rx: rings, tx_rings: tx })
    }

    /// Number of hardware RX rings the `netmap_if` describes (registered or not).
    pub fn rx_rings(&self) -> usize {
        self.rx.len()
    }

    /// Number of hardware TX rings the `netmap_if` describes.
    pub fn tx_rings(&self) -> u32 {
        self.tx_rings
    }

    /// The RX ring `ring`.
    pub fn ring(&self, ring: usize) -> Result<&RxRing, RingError> {
        match self.rx.get(ring) {
            Some(Some(r)) => Ok(r),
            Some(None) => Err(RingError::NotRegistered { ring }),
            None => Err(RingError::NoSuchRing { ring, rings: self.rx.len() }),
        }
    }

    /// The RX ring `ring`, mutably.
    pub fn ring_mut(&mut self, ring: usize) -> Result<&mut RxRing, RingError> {
        let rings = self.rx.len();
        match self.rx.get_mut(ring) {
            Some(Some(r)) => Ok(r),
            Some(None) => Err(RingError::NotRegistered { ring }),
            None => Err(RingError::NoSuchRing { ring, rings }),
        }
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
            return Err(RingError::Unaligned { what: what.to_owned(), offset });
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

/// One validated RX ring: its constant fields cached, its `head` owned by this side.
#[derive(Debug)]
pub struct RxRing {
    index: usize,
    /// The `netmap_ring` header.
    ring: NonNull<u8>,
    num_slots: u32,
    buf_size: u32,
    /// Start of buffer 0 (`ring + buf_ofs`).
    bufs: NonNull<u8>,
    /// How many whole buffers fit between `bufs` and the end of the region.
    nbufs: u64,
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
        let name = format!("ring {index} header");
        let off = region.check(&name, ring_off, RING_HEADER_LEN as u64)?;
        // SAFETY: the header is inside the region and 8-aligned (checked above).
        let (buf_ofs, num_slots, buf_size, head, cur, tail) = unsafe {
            (
                region.base.add(off + RING_BUF_OFS).cast::<i64>().read_volatile(),
                region.load_u32(off + RING_NUM_SLOTS),
                region.load_u32(off + RING_BUF_SIZE),
                region.load_u32(off + RING_HEAD),
                region.load_u32(off + RING_CUR),
                region.load_u32(off + RING_TAIL),
            )
        };
        if !(2..=MAX_SLOTS).contains(&num_slots) {
            return Err(corrupt(index, "num_slots", num_slots.into(), format!("2..={MAX_SLOTS}")));
        }
        if buf_size == 0 {
            return Err(corrupt(index, "nr_buf_size", 0, "must be non-zero"));
        }
        for (field, value) in [("head", head), ("cur", cur), ("tail", tail)] {
            if value >= num_slots {
                return Err(corrupt(index, field, value.into(), format!("must be < num_slots = {num_slots}")));
            }
        }
        region.check(
            &format!("ring {index} slots"),
            ring_off + RING_SLOTS as i128,
            u64::from(num_slots) * SLOT_LEN as u64,
        )?;
        let bufs_off = ring_off + i128::from(buf_ofs);
        if bufs_off < 0 || bufs_off > region.len as i128 {
            return Err(RingError::OutOfRegion {
                what: format!("ring {index} buffers (buf_ofs {buf_ofs})"),
                offset: bufs_off,
                size: u64::from(buf_size),
                region: region.len,
            });
        }
        let nbufs = (region.len as u64 - bufs_off as u64) / u64::from(buf_size);
        if nbufs == 0 {
            return Err(RingError::OutOfRegion {
                what: format!("ring {index} buffer 0"),
                offset: bufs_off,
                size: u64::from(buf_size),
                region: region.len,
            });
        }
        // SAFETY: both offsets are inside the region (checked), so the pointers are in bounds
        // and non-null (the base is a valid mapping).
        let (ring, bufs) = unsafe {
            (
                NonNull::new_unchecked(region.base.add(off)),
                NonNull::new_unchecked(region.base.add(bufs_off as usize)),
            )
        };
        Ok(RxRing {
            index,
            ring,
            num_slots,
            buf_size,
            bufs,
            nbufs,
            head,
        })
    }

    /// This ring's index among the RX rings.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of slots (`num_slots`).
    pub fn num_slots(&self) -> u32 {
        self.num_slots
    }

    /// Buffer size (`nr_buf_size`): the largest frame a slot can hold.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    #[allow(unsafe_code)]
    #[inline(always)]
    fn field(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of RING_HEAD/CUR/TAIL, inside the validated 8-aligned header;
        // the mapping outlives self (from_raw's contract).
        unsafe { atomic_u32(self.ring.as_ptr().add(offset)) }
    }

    /// Loads `tail` (acquire) and checks it.
    #[inline(always)]
    fn tail(&self) -> Result<u32, RingError> {
        let tail = self.field(RING_TAIL).load(Ordering::Acquire);
        if tail >= self.num_slots {
            return Err(corrupt(self.index, "tail", tail.into(), format!("must be < num_slots = {}", self.num_slots)));
        }
        Ok(tail)
    }

    /// Number of frames waiting (slots in `[head, tail)`).
    pub fn available(&self) -> Result<u32, RingError> {
        let tail = self.tail()?;
        Ok(if tail >= self.head {
            tail - self.head
        } else {
            tail + self.num_slots - self.head
        })
    }

    /// Reads slot `i` (< num_slots) and returns its frame, validated.
    #[allow(unsafe_code)]
    #[inline(always)]
    fn frame(&self, i: u32) -> Result<&[u8], RingError> {
        // SAFETY: i < num_slots and the slot array was checked to lie in the region; the slot
        // is ours (in [head, tail)) so the other side does not write it now.
        let slot = unsafe {
            self.ring
                .as_ptr()
                .add(RING_SLOTS + i as usize * SLOT_LEN)
                .cast::<netmap_slot>()
                .read_volatile()
        };
        if u64::from(slot.buf_idx) >= self.nbufs {
            return Err(corrupt(
                self.index,
                format!("slot {i} buf_idx"),
                slot.buf_idx.into(),
                format!("must be < {} (buffers in the region)", self.nbufs),
            ));
        }
        if u32::from(slot.len) > self.buf_size {
            return Err(corrupt(
                self.index,
                format!("slot {i} len"),
                slot.len.into(),
                format!("must be <= nr_buf_size = {}", self.buf_size),
            ));
        }
        let start = slot.buf_idx as usize * self.buf_size as usize;
        // SAFETY: buf_idx < nbufs, so start + buf_size <= the bytes after `bufs`, and
        // len <= buf_size; the buffer belongs to a slot we own until we release it, which
        // happens only after the borrow handed to the caller ends (see rx_batch).
        Ok(unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(start), usize::from(slot.len))
        })
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
        while i != tail {
            match self.frame(i) {
                Ok(frame) => f(frame, i),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            n += 1;
            i += 1;
            if i == self.num_slots {
                i = 0;
            }
        }
        if n > 0 {
            self.release(i);
        }
        result.map(|()| n)
    }

    /// Gives slots up to (not including) `to` back: `cur = head = to`, release ordering.
    #[inline(always)]
    fn release(&mut self, to: u32) {
        self.head = to;
        self.field(RING_CUR).store(to, Ordering::Release);
        self.field(RING_HEAD).store(to, Ordering::Release);
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
