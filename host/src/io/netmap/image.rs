//! Building netmap images: `ImageLayout` places a `netmap_if`, its rings and one buffer pool,
//! and `write_image` writes a fresh image as netmap leaves it after registering. This is
//! the layout of a `shm` region ([`crate::io::shm`]) and of the in-memory images the unit
//! tests walk (the `testing` module, test builds only).
//!
//! Must not: be used to read an image (validation is [`super::region`]).

use netmap_sys::netmap::netmap_ring;

use super::layout::*;

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

pub(crate) fn put(mem: &mut [u8], off: usize, bytes: &[u8]) {
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
pub(crate) mod testing {
    use super::*;
    use crate::io::netmap::{HostRings, NetmapMem, RingError};

    /// A hand-built netmap image in 8-aligned heap memory.
    pub(crate) struct Image {
        pub(crate) words: Vec<u64>,
        pub(crate) layout: ImageLayout,
        /// Per TX ring: the kernel's `hwcur` (the next slot it transmits).
        pub(crate) hwcur: Vec<u32>,
    }

    impl Image {
        pub(crate) fn new(rings: u32, slots: u32, buf_size: u32) -> Self {
            Self::with_tx(0, rings, slots, buf_size)
        }
        pub(crate) fn with_tx(tx: u32, rx: u32, slots: u32, buf_size: u32) -> Self {
            let layout = ImageLayout::with_tx(0, tx, rx, slots, buf_size).unwrap();
            let mut words = vec![0u64; layout.total_len.div_ceil(8)];
            write_image(&mut Self::bytes_of(&mut words)[..layout.total_len], &layout);
            Image {
                words,
                layout,
                hwcur: vec![0; tx as usize],
            }
        }
        pub(crate) fn bytes_of(words: &mut [u64]) -> &mut [u8] {
            let len = words.len() * 8;
            // SAFETY: u8 has no alignment or validity requirements; same allocation and length.
            #[allow(unsafe_code)]
            unsafe {
                std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len)
            }
        }
        pub(crate) fn bytes(&mut self) -> &mut [u8] {
            let len = self.layout.total_len;
            &mut Self::bytes_of(&mut self.words)[..len]
        }
        pub(crate) fn mem(&mut self, host: HostRings) -> Result<NetmapMem, RingError> {
            let len = self.layout.total_len;
            let base = self.words.as_mut_ptr().cast::<u8>();
            // SAFETY: the Vec outlives the view in every test (the view is dropped first).
            #[allow(unsafe_code)]
            unsafe {
                NetmapMem::from_raw(base, len, self.layout.if_offset, host)
            }
        }
        pub(crate) fn u32_at(&mut self, off: usize) -> u32 {
            u32::from_ne_bytes(self.bytes()[off..off + 4].try_into().unwrap())
        }
        pub(crate) fn u16_at(&mut self, off: usize) -> u16 {
            u16::from_ne_bytes(self.bytes()[off..off + 2].try_into().unwrap())
        }
        pub(crate) fn set_u32(&mut self, off: usize, v: u32) {
            put(self.bytes(), off, &v.to_ne_bytes());
        }
        pub(crate) fn set_i64(&mut self, off: usize, v: i64) {
            put(self.bytes(), off, &v.to_ne_bytes());
        }
        /// Plays the kernel: fills the slot at `tail` with `frame`, advances `tail`.
        pub(crate) fn produce(&mut self, ring: usize, frame: &[u8]) {
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
        pub(crate) fn transmit(&mut self, ring: usize) -> Vec<Vec<u8>> {
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
}
