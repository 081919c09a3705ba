//! Transmit rings: [`TxRing`] copies frames into the buffers of `[cur, tail)`, and
//! [`TxRing::publish`] hands them to the kernel (`head = cur`); the port's sync sends them.
//!
//! Must not: write a slot or buffer the kernel owns, or a frame longer than a buffer.

use std::sync::atomic::Ordering;

use netmap_sys::netmap::NS_REPORT;

use super::layout::*;
use super::region::{corrupt, Direction, Region, RingError, RingView};

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
    pub(super) unsafe fn validate(
        region: Region,
        index: usize,
        ring_off: i128,
    ) -> Result<Self, RingError> {
        // SAFETY: forwarded from this function's contract.
        let v = unsafe { region.ring(Direction::Tx, index, ring_off)? };
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
                self.v.id,
                "tail",
                tail.into(),
                format!("must be < num_slots = {}", self.v.num_slots),
            ));
        }
        if self.v.dist(self.head, tail) < self.v.dist(self.head, self.cur) {
            return Err(corrupt(
                self.v.id,
                "tail",
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
        let dst = self.v.buffer(buf_idx, || format!("slot {i} buf_idx"))?;
        let (d, s) = (dst as usize, frame.as_ptr() as usize);
        if d < s + frame.len() && s < d + frame.len() {
            // Only a corrupt image can do this (the caller passed a frame lent from this
            // region, e.g. an RX buffer, and this slot names that same buffer); writing would
            // change the bytes of a live shared borrow.
            return Err(corrupt(
                self.v.id,
                format!("slot {i} buf_idx"),
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
