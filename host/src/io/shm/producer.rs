//! The producer side: [`ShmProducer`] plays the kernel of N RX rings, copying each frame into
//! the slot at `tail` and publishing `tail` (every frame, or every `publish_every` frames);
//! [`ring_for`] picks a frame's ring.
//!
//! Must not: write a slot the consumer owns (`[head, tail)`), or trust the `head` it reads.

use std::sync::atomic::{AtomicU32, Ordering};

use super::region::ShmRegion;
use super::*;
use crate::io::netmap::layout as ring;
use crate::io::shard;
use crate::wire::LinkType;

/// The producer side: plays the kernel of N RX rings. Dropping it closes the region and
/// removes its file (see [`keep_file`](Self::keep_file)).
#[derive(Debug)]
pub struct ShmProducer {
    region: ShmRegion,
    /// Per ring: our tail, the last head we saw, frames refused as full.
    tails: Vec<u32>,
    heads: Vec<u32>,
    full: Vec<u64>,
    /// Per ring: frames written but not yet published (see `set_publish_every`).
    unpublished: Vec<u32>,
    publish_every: u32,
    remove_on_drop: bool,
}

impl ShmProducer {
    pub(super) fn new(region: ShmRegion) -> Self {
        let n = region.rings();
        ShmProducer {
            region,
            tails: vec![0; n],
            heads: vec![0; n],
            full: vec![0; n],
            unpublished: vec![0; n],
            publish_every: 1,
            remove_on_drop: true,
        }
    }

    /// Publishes the ring's `tail` once every `n` frames (at least 1; 1 is the default)
    /// instead of after each, as a NIC driver or netmap's txsync hands frames over in
    /// batches: a consumer that polls `tail` then takes the cache line from the producer
    /// once per batch, not once per frame (at 64 bytes that was the generator's limit:
    /// 8 → 25 Mpps). Frames still unpublished go out with [`flush`](Self::flush), when a
    /// ring is found full, and when the producer is dropped.
    pub fn set_publish_every(&mut self, n: u32) {
        self.publish_every = n.max(1);
        self.flush();
    }

    /// Publishes every frame written so far.
    pub fn flush(&mut self) {
        for ring in 0..self.tails.len() {
            if self.unpublished[ring] > 0 {
                self.publish(ring);
            }
        }
    }

    #[inline]
    fn publish(&mut self, ring: usize) {
        let off = self.region.layout.ring_offsets[ring] + ring::RING_TAIL;
        // SAFETY: the ring's tail field lies inside the mapping (layout), 4-aligned.
        #[allow(unsafe_code)]
        let tail_field = unsafe { &*(self.region.base.add(off) as *const AtomicU32) };
        tail_field.store(self.tails[ring], Ordering::Release);
        self.unpublished[ring] = 0;
    }

    /// The region.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// Leave the file in /dev/shm when dropped (it is still marked closed).
    pub fn keep_file(&mut self, keep: bool) {
        self.remove_on_drop = !keep;
    }

    /// Waits until a consumer polls every ring ([`ShmRing::attach`]), so that frames sent
    /// while it starts up are not counted as ring-full (benchmarks); false after `timeout`.
    pub fn wait_for_consumer(&self, timeout: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        while (self.region.attached() as usize) < self.tails.len() {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        true
    }

    /// Frames refused because ring `ring` was full.
    pub fn full_count(&self, ring: usize) -> u64 {
        self.full.get(ring).copied().unwrap_or(0)
    }

    /// The ring a frame belongs to: the symmetric hash of its TCP 4-tuple (Ethernet framing)
    /// modulo the ring count; 0 for anything that is not a decodable TCP segment.
    pub fn ring_for(&self, frame: &[u8]) -> usize {
        ring_for(frame, self.tails.len())
    }

    /// Queues `frame` on the ring chosen by [`ring_for`](Self::ring_for).
    #[inline]
    pub fn push_hashed(&mut self, frame: &[u8]) -> Result<usize, PushError> {
        let ring = self.ring_for(frame);
        self.push(ring, frame).map(|()| ring)
    }

    /// Copies `frame` into the slot at `tail` of ring `ring` and publishes it (release store
    /// of `tail`). [`PushError::Full`] (counted) when the consumer has not freed a slot.
    #[inline]
    pub fn push(&mut self, ring: usize, frame: &[u8]) -> Result<(), PushError> {
        self.push_inner(ring, frame, None)
    }

    /// As [`push_hashed`](Self::push_hashed), also writing `stamp` into the slot's `ptr`
    /// field (the frame's bytes are unchanged). The benchmarks stamp [`monotonic_ns`] at push
    /// time; a consumer reads it back with [`ShmRing::rx_batch_stamped`].
    #[inline]
    pub fn push_hashed_stamped(&mut self, frame: &[u8], stamp: u64) -> Result<usize, PushError> {
        let ring = self.ring_for(frame);
        self.push_inner(ring, frame, Some(stamp)).map(|()| ring)
    }

    /// As [`push`](Self::push), also writing `stamp` into the slot's `ptr` field.
    #[inline]
    pub fn push_stamped(&mut self, ring: usize, frame: &[u8], stamp: u64) -> Result<(), PushError> {
        self.push_inner(ring, frame, Some(stamp))
    }

    #[allow(unsafe_code)]
    #[inline(always)]
    fn push_inner(
        &mut self,
        ring: usize,
        frame: &[u8],
        stamp: Option<u64>,
    ) -> Result<(), PushError> {
        let rings = self.tails.len();
        if ring >= rings {
            return Err(PushError::NoSuchRing { ring, rings });
        }
        let l = &self.region.layout;
        if frame.len() > l.buf_size as usize {
            return Err(PushError::TooLarge {
                len: frame.len(),
                max: l.buf_size,
            });
        }
        let slots = l.slots;
        let ring_off = l.ring_offsets[ring];
        // SAFETY (for the pointer arithmetic and accesses below): ring_off, the ring's head and
        // tail fields, slot `tail` (< slots) and buffer ring*slots + tail all lie inside the
        // mapping by construction of `layout`, which the mapping's length was sized from; the
        // u32 ring fields are 4-aligned. The slot and buffer at `tail` belong to the producer
        // (they are outside the consumer's [head, tail)).
        let base = self.region.base;
        let tail = self.tails[ring];
        let next = if tail + 1 == slots { 0 } else { tail + 1 };
        if next == self.heads[ring] {
            // SAFETY: see above.
            let head_field =
                unsafe { &*(base.add(ring_off + ring::RING_HEAD) as *const AtomicU32) };
            let head = head_field.load(Ordering::Acquire);
            if head >= slots {
                return Err(PushError::Corrupt { ring, head, slots });
            }
            self.heads[ring] = head;
            if next == head {
                // The consumer can only free slots it has been shown.
                if self.unpublished[ring] > 0 {
                    self.publish(ring);
                }
                self.full[ring] += 1;
                self.region
                    .header_u64(OFF_FULL)
                    .fetch_add(1, Ordering::Relaxed);
                return Err(PushError::Full { ring });
            }
        }
        let idx = ring * slots as usize + tail as usize;
        // SAFETY: see above.
        unsafe {
            let buf = base.add(l.buf_offset(idx));
            std::ptr::copy_nonoverlapping(frame.as_ptr(), buf, frame.len());
            let slot = base.add(l.slot_offset(ring, tail as usize));
            slot.add(ring::SLOT_BUF_IDX)
                .cast::<u32>()
                .write_volatile(idx as u32);
            slot.add(ring::SLOT_LEN_FIELD)
                .cast::<u16>()
                .write_volatile(frame.len() as u16);
            if let Some(stamp) = stamp {
                // The slot is 16 bytes, 8-aligned (rings are 128-byte aligned, the slot array
                // starts at an 8-aligned offset): `ptr` at offset 8 is aligned.
                slot.add(SLOT_PTR).cast::<u64>().write_volatile(stamp);
            }
        }
        self.tails[ring] = next;
        self.unpublished[ring] += 1;
        if self.unpublished[ring] >= self.publish_every {
            self.publish(ring);
        }
        Ok(())
    }
}

impl Drop for ShmProducer {
    fn drop(&mut self) {
        self.flush();
        self.region
            .header_u32(OFF_STATE)
            .store(STATE_CLOSED, Ordering::Release);
        if self.remove_on_drop {
            let _ = std::fs::remove_file(&self.region.path);
        }
    }
}

/// The symmetric-hash shard of an Ethernet frame ([`shard::frame_shard`]): see
/// [`ShmProducer::ring_for`].
#[inline]
pub fn ring_for(frame: &[u8], rings: usize) -> usize {
    shard::frame_shard(LinkType::Ethernet, frame, rings)
}
