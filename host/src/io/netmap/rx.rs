//! Receive rings: [`RxRing`] takes the frames of `[head, tail)` and gives the slots back, at
//! most [`MAX_BATCH`] per batch, either plainly ([`RxRing::rx_batch_indexed`]) or with
//! lookahead ([`RxRing::rx_batch_lookahead`]: frames shown [`LOOKAHEAD_FAR`] and
//! [`LOOKAHEAD_NEAR`] places ahead, so that the consumer can prefetch their flow state).
//! [`RxRing::feed`] picks between the two for a [`Sink`] once per batch: the one ring walk
//! behind both the shm and the netmap sources.
//!
//! Must not: allocate, lock or make a system call per batch; trust `tail` or a slot.

use std::sync::atomic::Ordering;

use netmap_sys::netmap::netmap_slot;

use super::layout::*;
use super::region::{corrupt, Direction, Region, RingError, RingView};
use crate::io::source::Sink;
use crate::wire::LinkType;

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
    pub(super) unsafe fn validate(
        region: Region,
        index: usize,
        ring_off: i128,
    ) -> Result<Self, RingError> {
        // SAFETY: forwarded from this function's contract.
        let v = unsafe { region.ring(Direction::Rx, index, ring_off)? };
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
                self.v.id,
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
                self.v.id,
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

    /// Hands every frame available to `sink` as a frame of link type `link` stamped `now`,
    /// and releases the slots: with
    /// lookahead ([`rx_batch_lookahead`](Self::rx_batch_lookahead)) when
    /// [`Sink::lookahead`] says so for this batch, else plainly
    /// ([`rx_batch_indexed`](Self::rx_batch_indexed)). The one walk of the shm and netmap
    /// sources: what a benchmark measures on shm is what runs on a netmap port.
    #[inline]
    pub fn feed<K: Sink>(
        &mut self,
        link: Option<LinkType>,
        now: u64,
        sink: &mut K,
    ) -> Result<usize, RingError> {
        if sink.lookahead() {
            self.rx_batch_lookahead(|step| match step {
                Step::Far(f) => sink.far(link, f),
                Step::Near(f) => sink.near(link, f),
                Step::Frame(f, _) => sink.frame(link, f, now),
            })
        } else {
            self.rx_batch_indexed(|f, _| sink.frame(link, f, now))
        }
    }

    /// Gives the slot at `head` back without reading it (a corrupt slot the consumer skips);
    /// nothing when the ring is empty.
    pub fn skip_one(&mut self) {
        if let Ok(tail) = self.tail() {
            if self.head != tail {
                self.release((self.head + 1) % self.v.num_slots);
            }
        }
    }

    /// Gives slots up to (not including) `to` back: `cur = head = to`, release ordering.
    #[inline(always)]
    fn release(&mut self, to: u32) {
        self.head = to;
        self.v.field(RING_CUR).store(to, Ordering::Release);
        self.v.field(RING_HEAD).store(to, Ordering::Release);
    }
}

impl super::NetmapMem {
    /// [`RxRing::feed`] on each of `rings` in turn (frames of link type `link`); returns the
    /// frames handed over. Stops at
    /// the first corrupt ring (the frames before it were handed over and released).
    #[inline]
    pub fn feed<K: Sink>(
        &mut self,
        rings: &[usize],
        link: Option<LinkType>,
        now: u64,
        sink: &mut K,
    ) -> Result<usize, RingError> {
        let mut got = 0;
        for &r in rings {
            got += self.ring_mut(r)?.feed(link, now, sink)?;
        }
        Ok(got)
    }
}
