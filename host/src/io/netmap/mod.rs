//! netmap: the memory layout, the ring walkers and the port.
//!
//! Owns everything about netmap memory, whoever maps it: [`layout`] (the `netmap_sys` types
//! pinned to netmap's offsets), [`region`] (validating an image: [`NetmapMem`], and
//! [`RingError`]), [`rx`] ([`RxRing`] reads receive rings, with the lookahead the workers use),
//! [`tx`] ([`TxRing`] fills transmit rings), [`image`] (building an image: the `shm` file
//! format and the unit tests) and [`port`] (the real `/dev/netmap` port, [`NetmapPort`] and
//! [`NetmapTxPort`]). [`super::shm`] walks its rings with this very code.
//!
//! Must not: trust the memory (another process or the kernel writes it), allocate or make a
//! system call per batch on the ring walk, or decode frames past what the lookahead needs.
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

pub mod image;
pub mod layout;
pub mod port;
pub mod region;
pub mod rx;
pub mod tx;

#[cfg(test)]
mod tests;

pub use layout::{HostRings, IF_HEADER_LEN, MAX_RINGS, MAX_SLOTS, RING_HEADER_LEN, SLOT_LEN};
pub use port::{NetmapError, NetmapPort, NetmapTxPort, Pipe, PortSpec, MAX_IFNAME, NETMAP_DEVICE};
pub use region::{Direction, NetmapMem, RingError, RingId};
pub use rx::{RxRing, Step, LOOKAHEAD_FAR, LOOKAHEAD_FRAME, LOOKAHEAD_NEAR, MAX_BATCH};
pub use tx::TxRing;
