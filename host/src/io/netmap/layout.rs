//! netmap's memory layout: the sizes and field offsets of `netmap_if`, `netmap_ring` and
//! `netmap_slot` (the types of the `netmap_sys` crate), pinned at compile time to netmap's
//! documented 64-bit layout, and how many host rings a `netmap_if` lists.
//!
//! Owns numbers only: no memory is read here (that is [`super::region`]).

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
