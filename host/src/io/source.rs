//! The packet source contract: what every source (pcap replay, shm, netmap, AF_PACKET; AF_XDP
//! later) gives the per-core loop of [`crate::worker`], and what the loop gives back.
//!
//! A [`Source`] hands over one batch at a time ([`Source::next_batch`]): it lends each frame
//! to a [`Sink`] with its link type and timestamp and releases the batch's slots (or blocks, or file
//! position) before it returns, so a frame never outlives the call. Its constants say how the
//! loop waits when it is idle ([`Idle`]), whether the loop's clock stamps the frames, and how
//! many batches go between two reload safe points. A source that can see frames ahead (the
//! ring walkers) asks [`Sink::lookahead`] once per batch and, when told yes, shows frames
//! [`Sink::far`] and [`Sink::near`] before handing them over, so that the engine's state for
//! frame `k + FAR` is on its way while frame `k` is processed.
//!
//! Everything is generic: the loop is compiled once per source and sink, and nothing is
//! dispatched dynamically per packet. What this module must not do: read a clock, touch the
//! engine, or decide anything per packet that could be decided per batch.

use crate::io::afpacket::AfPacketError;
use crate::io::netmap::NetmapError;
use crate::io::pcap::CaptureError;
use crate::io::shm::ShmError;
use crate::wire::{DecodeError, Decoded, LinkType};

/// Why a source could not be opened or stopped delivering: the error of the source itself,
/// whose message names the file, region or port and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A capture file.
    #[error(transparent)]
    Pcap(#[from] CaptureError),
    /// A shared-memory region.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// A netmap port.
    #[error(transparent)]
    Netmap(#[from] NetmapError),
    /// An AF_PACKET socket.
    #[error(transparent)]
    AfPacket(#[from] AfPacketError),
}

/// How the loop waits while a source has nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Asking is cheap ([`Source::is_empty`]: one atomic load): the loop spins, then naps,
    /// and runs a full empty batch (timers, liveness) now and then. Shared-memory rings.
    Spin,
    /// The loop calls [`Source::wait`] (a system call with a timeout) before every batch;
    /// the kernel wakes it when frames arrive. netmap ports, AF_PACKET sockets.
    Blocks,
    /// Never empty before its end: a file.
    Never,
}

/// What one [`Source::next_batch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// This many frames went to the sink (a file source may say 0 at the end of a pass).
    Frames(usize),
    /// Nothing was waiting: the loop runs the engine's timers on wall-clock time.
    Empty,
    /// The input ended (end of file, the producer finished): the loop stops.
    End,
}

/// Where a source puts frames: implemented by the worker loop over its engine.
///
/// Frames are lent for the duration of the call only.
pub trait Sink {
    /// Whether the source wants the producer's per-slot stamps ([`Sink::stamped`]); a
    /// constant so that the walk reading them is compiled only for the sink that asks.
    const STAMPS: bool = false;

    /// Whether this batch is worth walking with lookahead (asked once per batch).
    fn lookahead(&self) -> bool;

    /// A frame [`crate::io::netmap::LOOKAHEAD_FAR`] places ahead: a hint, it comes again.
    fn far(&mut self, link: Option<LinkType>, frame: &[u8]);

    /// A frame [`crate::io::netmap::LOOKAHEAD_NEAR`] places ahead: a hint, it comes again.
    fn near(&mut self, link: Option<LinkType>, frame: &[u8]);

    /// The frame to process now, of link type `link` (`None`: one flowpeek does not decode),
    /// captured at `ts` (ns since the Unix epoch). The link type is passed with each frame so
    /// that a source whose link type is a constant (the rings: Ethernet) lets the decoder's
    /// choice be made at compile time.
    fn frame(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64);

    /// As [`frame`](Self::frame), with the producer's stamp of the slot (CLOCK_MONOTONIC ns,
    /// 0 when the producer does not stamp); only called when [`Sink::STAMPS`] is set.
    #[inline]
    fn stamped(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64, stamp: u64) {
        let _ = stamp;
        self.frame(link, frame, ts);
    }

    /// A frame the source has already decoded (to pick its core): processed as is, so it is
    /// decoded once.
    fn decoded(
        &mut self,
        link: Option<LinkType>,
        decoded: &Option<Result<Decoded<'_>, DecodeError>>,
        frame: &[u8],
        ts: u64,
    );

    /// A frame of another core's shard (a capture read by every core): only its time counts.
    fn elsewhere(&mut self, ts: u64);
}

/// A packet source, read by one core.
pub trait Source {
    /// How the loop waits when this source is idle.
    const IDLE: Idle;

    /// Whether the loop stamps the frames with the wall clock (read once per batch): true for
    /// rings, whose slots carry no time; false for sources whose frames carry their capture
    /// time.
    const WALL_CLOCK: bool;

    /// Whether [`Sink::stamped`] gets real producer stamps (latency sampling).
    const STAMPS: bool = false;

    /// Batches between two reload safe points (plugin poll, counters) while frames stream;
    /// an empty batch is always a safe point. Above 1 where a batch can be a handful of
    /// packets, so that per-batch work does not become per-packet work.
    const SAFE_POINT_EVERY: u64 = 1;

    /// Called once, on the worker's thread, when the loop is about to poll.
    #[inline]
    fn start(&mut self) {}

    /// [`Idle::Spin`] sources: whether nothing is waiting, as cheaply as possible (an error
    /// counts as not empty, so that the next batch reports it).
    #[inline]
    fn is_empty(&self) -> bool {
        false
    }

    /// [`Idle::Blocks`] sources: waits up to `timeout` for frames (an interrupted wait is not
    /// an error).
    #[inline]
    fn wait(&mut self, timeout: std::time::Duration) -> Result<(), SourceError> {
        let _ = timeout;
        Ok(())
    }

    /// Hands the waiting frames (at most a bounded batch) to `sink` and releases them. `now`
    /// is the loop's wall clock, the timestamp of ring frames.
    fn next_batch<K: Sink>(&mut self, now: u64, sink: &mut K) -> Result<Batch, SourceError>;

    /// Frames lost before this source (ring full, kernel drops), when it counts them; asked
    /// at safe points.
    #[inline]
    fn drops(&mut self) -> Option<u64> {
        None
    }
}
