//! The consumer side: [`ShmConsumer`] holds a region's validated rings, [`ShmRing`] is one
//! of them for one worker and a [`Source`]: the netmap ring walk ([`RxRing::feed`], lookahead
//! included), the producer's slot stamps for latency sampling, and the producer's liveness
//! when the ring is empty.
//!
//! Must not: make a system call per batch (`kill(pid, 0)` runs every
//! [`LIVENESS_EVERY`]th empty poll only).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::region::ShmRegion;
use super::*;
use crate::io::netmap::{self as ring, RxRing};
use crate::io::source::{Batch, Idle, Sink, Source, SourceError};
use crate::wire::LinkType;

/// Empty polls between two checks of the producer's pid: the worker loop polls fully about
/// every 1.3 ms once idle, so a producer killed with `kill -9` is noticed within about 0.3 s.
pub const LIVENESS_EVERY: u32 = 16;

const CLOSED: &str = "closed the region";
const GONE: &str = "exited without closing the region";

/// The consumer side of a region: one validated netmap RX ring walker per ring.
#[derive(Debug)]
pub struct ShmConsumer {
    pub(super) region: Arc<ShmRegion>,
    pub(super) rings: Vec<ShmRing>,
}

impl ShmConsumer {
    /// The region.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// Number of rings.
    pub fn rings(&self) -> usize {
        self.rings.len()
    }

    /// Ring `ring`, e.g. to read [`ShmRing::available`].
    pub fn ring(&self, ring: usize) -> Option<&ShmRing> {
        self.rings.get(ring)
    }

    /// See [`ShmRing::rx_batch`].
    #[inline]
    pub fn rx_batch(&mut self, ring: usize, f: impl FnMut(&[u8])) -> Result<usize, ShmError> {
        let rings = self.rings.len();
        match self.rings.get_mut(ring) {
            Some(r) => r.rx_batch(f),
            None => Err(ShmError::Ring {
                path: self.region.path.clone(),
                source: RingError::NoSuchRing { ring, rings },
            }),
        }
    }

    /// One ring per worker (each keeps the mapping alive).
    pub fn into_rings(self) -> Vec<ShmRing> {
        self.rings
    }
}

/// One ring of a region, for one worker.
#[derive(Debug)]
pub struct ShmRing {
    pub(super) region: Arc<ShmRegion>,
    pub(super) ring: RxRing,
    /// Empty polls in a row (the producer's liveness is checked every [`LIVENESS_EVERY`]th).
    pub(super) empty_polls: u32,
    /// Corrupt slots skipped.
    pub(super) corrupt: u64,
    /// Whether this ring's consumer field holds this process's pid.
    pub(super) claimed: bool,
}

impl Drop for ShmRing {
    fn drop(&mut self) {
        if self.claimed {
            let me = std::process::id();
            let _ =
                self.consumer_field()
                    .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

impl ShmRing {
    /// The region.
    pub fn region(&self) -> &ShmRegion {
        &self.region
    }

    /// This ring's index.
    pub fn index(&self) -> usize {
        self.ring.index()
    }

    fn consumer_field(&self) -> &std::sync::atomic::AtomicU32 {
        self.region
            .header_u32(OFF_CONSUMERS + 4 * self.ring.index())
    }

    /// Claims the ring for this process: refused ([`ShmError::RingTaken`]) while another
    /// live process (or another consumer in this one) holds it; a dead holder's claim is
    /// taken over.
    pub(super) fn claim(&mut self) -> Result<(), ShmError> {
        let me = std::process::id();
        let field = self.consumer_field();
        let mut seen = 0;
        loop {
            match field.compare_exchange(seen, me, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.claimed = true;
                    return Ok(());
                }
                Err(holder) if holder == me || super::region::pid_alive(holder) => {
                    return Err(ShmError::RingTaken {
                        path: self.region.path.clone(),
                        ring: self.ring.index(),
                        pid: holder,
                    });
                }
                // A consumer that died without giving the ring back: take it over.
                Err(holder) => seen = holder,
            }
        }
    }

    /// Corrupt slots skipped so far.
    pub fn corrupt_slots(&self) -> u64 {
        self.corrupt
    }

    /// A walk stopped at a corrupt slot at `head`, or at a corrupt `tail`: a slot is skipped
    /// and counted (warned about at the first of this ring) and the walk goes on; a corrupt
    /// `tail` is returned.
    #[cold]
    fn skip_corrupt(&mut self, source: ring::RingError) -> Result<usize, ShmError> {
        if self.ring.available().is_err() {
            return Err(self.ring_err(source));
        }
        self.corrupt += 1;
        if self.corrupt == 1 {
            eprintln!(
                "flowpeek: warning: {}; the slot is skipped and the core goes on (counted as corrupt_slots in --stats; later ones on this ring are counted, not shown)",
                self.ring_err(source)
            );
        }
        self.ring.skip_one();
        // Frames after the slot come with the next batch.
        Ok(1)
    }

    /// Tells the producer this ring is being polled from now on (see
    /// [`ShmProducer::wait_for_consumer`]). Call once, when the consumer is ready.
    pub fn attach(&self) {
        self.region
            .header_u32(OFF_ATTACHED)
            .fetch_add(1, Ordering::Release);
    }

    /// Frames waiting.
    pub fn available(&self) -> Result<u32, ShmError> {
        self.ring.available().map_err(|source| ShmError::Ring {
            path: self.region.path.clone(),
            source,
        })
    }

    /// Hands every waiting frame to `f` and releases the slots ([`RxRing::rx_batch`]).
    /// When none is waiting, checks the producer: if it has closed the region or is gone and
    /// the ring is still empty after that, returns [`ShmError::ProducerExited`].
    #[inline]
    pub fn rx_batch(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize, ShmError> {
        let n = self
            .ring
            .rx_batch_indexed(|frame, _| f(frame))
            .map_err(|source| self.ring_err(source))?;
        self.after(n, |ring| ring.rx_batch_indexed(|frame, _| f(frame)))
    }

    /// As [`rx_batch`](Self::rx_batch), also passing each slot's `ptr` field: the stamp of
    /// [`ShmProducer::push_stamped`] (0 from a producer that does not stamp).
    #[inline]
    pub fn rx_batch_stamped(&mut self, mut f: impl FnMut(&[u8], u64)) -> Result<usize, ShmError> {
        let base = self.region.base;
        let slot0 = self.region.layout.slot_offset(self.ring.index(), 0);
        let mut walk = move |ring: &mut RxRing| {
            ring.rx_batch_indexed(|frame, i| {
                // SAFETY: i < num_slots (the walker validated it), so the slot lies inside the
                // mapping (the layout was checked against the file size); between head and
                // tail the slot belongs to the consumer; `ptr` is 8-aligned (see push_inner).
                #[allow(unsafe_code)]
                let stamp = unsafe {
                    base.add(slot0 + i as usize * ring::SLOT_LEN + SLOT_PTR)
                        .cast::<u64>()
                        .read_volatile()
                };
                f(frame, stamp)
            })
        };
        let n = walk(&mut self.ring).map_err(|source| self.ring_err(source))?;
        self.after(n, walk)
    }

    /// After a walk that handed over `n` frames: when `n` is 0, is the producer still there?
    /// Whether it closed the region is one load; whether it died is a `kill(pid, 0)` system
    /// call, asked every [`LIVENESS_EVERY`]th empty poll only (not each time a burst has been drained: that
    /// was one system call per burst). Once it is gone, `again` walks the ring a last time.
    #[inline(always)]
    fn after(
        &mut self,
        n: usize,
        again: impl FnOnce(&mut RxRing) -> Result<usize, ring::RingError>,
    ) -> Result<usize, ShmError> {
        if n > 0 {
            self.empty_polls = 0;
            return Ok(n);
        }
        self.empty_polls = self.empty_polls.wrapping_add(1);
        let closed = self.region.header_u32(OFF_STATE).load(Ordering::Acquire) == STATE_CLOSED;
        if !closed && self.empty_polls % LIVENESS_EVERY != 0 {
            return Ok(0);
        }
        self.producer_gone(again)
    }

    #[cold]
    fn producer_gone(
        &mut self,
        again: impl FnOnce(&mut RxRing) -> Result<usize, ring::RingError>,
    ) -> Result<usize, ShmError> {
        let how = match self.region.producer_status() {
            ProducerStatus::Running => return Ok(0),
            ProducerStatus::Closed => CLOSED,
            ProducerStatus::Gone => GONE,
        };
        // The state was loaded with acquire after the producer's last tail store: re-check.
        let n = again(&mut self.ring).map_err(|source| self.ring_err(source))?;
        if n > 0 {
            return Ok(n);
        }
        Err(ShmError::ProducerExited {
            path: self.region.path.clone(),
            pid: self.region.pid,
            how,
            ring: self.ring.index(),
        })
    }

    #[cold]
    fn ring_err(&self, source: ring::RingError) -> ShmError {
        ShmError::Ring {
            path: self.region.path.clone(),
            source,
        }
    }
}

impl Source for ShmRing {
    const IDLE: Idle = Idle::Spin;
    const WALL_CLOCK: bool = true;
    const STAMPS: bool = true;
    // A batch can be a handful of packets at moderate rates: per-batch work would be
    // per-packet work then.
    const SAFE_POINT_EVERY: u64 = 64;

    /// Tells the producer this ring is polled ([`ShmRing::attach`]).
    fn start(&mut self) {
        self.attach();
    }

    /// One acquire load of the ring's tail.
    #[inline]
    fn is_empty(&self) -> bool {
        matches!(self.ring.available(), Ok(0))
    }

    #[inline]
    fn next_batch<K: Sink>(&mut self, now: u64, sink: &mut K) -> Result<Batch, SourceError> {
        // Frames of a shm region are Ethernet frames.
        let link = Some(LinkType::Ethernet);
        let got = if K::STAMPS {
            match self.rx_batch_stamped(|frame, stamp| sink.stamped(link, frame, now, stamp)) {
                Err(ShmError::Ring { source, .. }) => self.skip_corrupt(source),
                got => got,
            }
        } else {
            match self.ring.feed(link, now, sink) {
                Ok(n) => self.after(n, |ring| ring.feed(link, now, sink)),
                Err(source) => self.skip_corrupt(source),
            }
        };
        match got {
            Ok(0) => Ok(Batch::Empty),
            Ok(n) => Ok(Batch::Frames(n)),
            // The producer finished and everything it sent was read: the input ended.
            Err(ShmError::ProducerExited { how: CLOSED, .. }) => Ok(Batch::End),
            // Gone without closing: frames it had not published are lost; an error.
            Err(e) => Err(e.into()),
        }
    }

    #[inline]
    fn corrupt_frames(&self) -> u64 {
        self.corrupt
    }

    #[inline]
    fn drops(&mut self) -> Option<u64> {
        Some(self.region.full_count())
    }
}
