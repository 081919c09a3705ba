//! Replaying a capture file as a [`Source`]: one core's shard of a pcap or pcapng file,
//! read by every core (each keeps the flows whose symmetric hash falls on it; IP fragments
//! go to every core, see [`crate::flow::Config::replay_cores`]), optionally paced and looped.
//!
//! Owns the passes (each shifted in time after the previous one so that flows do not
//! collide), the pacing (sleeping before a batch that would be early) and the shard filter.
//! Must not: decode a frame twice (the decoding that picks the core is handed to the sink),
//! or stop at a damaged record before every pass was read (what came before it counts).

use std::time::{Duration, Instant};

use super::pcap::{CaptureError, CaptureFile, Packets};
use super::shard::decoded_shard;
use super::source::{Batch, Idle, Sink, Source, SourceError};
use crate::wire;

/// One core's replay of a capture.
pub struct PcapReplay<'a> {
    capture: &'a CaptureFile,
    packets: Packets<'a>,
    /// Passes left after this one.
    passes_left: u32,
    /// Added to the timestamps of this pass.
    shift: u64,
    shift_per_pass: u64,
    core: usize,
    cores: usize,
    /// Own frames per batch.
    batch: usize,
    /// Packets per second of the whole capture (0: flat out).
    pace: u64,
    started: Instant,
    /// Frames read, every core's.
    seen: u64,
    /// The last damaged record met, reported when every pass is done.
    error: Option<CaptureError>,
}

impl<'a> PcapReplay<'a> {
    /// Core `core` of `cores` reads `capture` `loops` times (at least once), `batch` frames of
    /// its own per batch, at `pace` packets per second of the whole capture (0: flat out).
    pub fn new(
        capture: &'a CaptureFile,
        loops: u32,
        pace: u64,
        core: usize,
        cores: usize,
        batch: usize,
    ) -> Self {
        // Looping shifts each pass after the previous one; a single pass needs no extra read.
        // At least the tombstones' lifetime apart, so that a connection replayed with its
        // own ISNs is a new connection, not a late copy of the closed one.
        let shift_per_pass = if loops > 1 {
            let (first, last) = time_span(capture);
            last.saturating_sub(first).max(crate::flow::TOMBSTONE_TTL) + 1_000_000_000
        } else {
            0
        };
        PcapReplay {
            capture,
            packets: capture.packets(),
            passes_left: loops.max(1) - 1,
            shift: 0,
            shift_per_pass,
            core,
            cores,
            batch: batch.max(1),
            pace,
            started: Instant::now(),
            seen: 0,
            error: None,
        }
    }

    /// Starts the next pass; false when there is none.
    fn next_pass(&mut self) -> bool {
        if self.passes_left == 0 {
            return false;
        }
        self.passes_left -= 1;
        self.shift += self.shift_per_pass;
        self.packets = self.capture.packets();
        true
    }
}

impl Source for PcapReplay<'_> {
    const IDLE: Idle = Idle::Never;
    const WALL_CLOCK: bool = false;

    /// Up to `batch` frames of this core's shard (and the other cores' frames in between,
    /// as time only); fewer at the end of a pass. After the last pass: the damaged record
    /// met, if any, else the end.
    fn next_batch<K: Sink>(&mut self, _now: u64, sink: &mut K) -> Result<Batch, SourceError> {
        if self.seen == 0 {
            // The pace counts from the first read, not from the opening (plugins load between).
            self.started = Instant::now();
        } else if self.pace > 0 {
            let due = Duration::from_secs_f64(self.seen as f64 / self.pace as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let mut own = 0;
        loop {
            let p = match self.packets.next() {
                Some(Ok(p)) => p,
                // A damaged record ends the pass (everything before it counts), as the end
                // of the file does; it is reported once every pass is done.
                Some(Err(e)) => {
                    self.error = Some(e);
                    self.next_pass();
                    return Ok(Batch::Frames(own));
                }
                // The end of a pass closes the batch; after the last one, the iterator
                // stays at its end and the next call reports it.
                None if own > 0 || self.passes_left > 0 => {
                    self.next_pass();
                    return Ok(Batch::Frames(own));
                }
                None => {
                    return match self.error.take() {
                        Some(e) => Err(e.into()),
                        None => Ok(Batch::End),
                    }
                }
            };
            let ts = p.ts_nanos + self.shift;
            self.seen += 1;
            let decoded = p.link.map(|l| wire::decode(l, p.data));
            // IP fragments go to every core: the ports that pick the flow's core are in the
            // first fragment only, so every core reassembles and keeps its own datagrams.
            if decoded_shard(&decoded, self.cores) != self.core
                && !matches!(decoded, Some(Ok(wire::Decoded::Fragment)))
            {
                sink.elsewhere(ts);
                continue;
            }
            sink.decoded(p.link, &decoded, p.data, ts);
            own += 1;
            if own == self.batch {
                return Ok(Batch::Frames(own));
            }
        }
    }
}

/// The first and last timestamps of a capture ((0, 0) when it has no readable packet).
fn time_span(capture: &CaptureFile) -> (u64, u64) {
    let mut first = u64::MAX;
    let mut last = 0;
    for p in capture.packets().map_while(Result::ok) {
        first = first.min(p.ts_nanos);
        last = last.max(p.ts_nanos);
    }
    if first == u64::MAX {
        (0, 0)
    } else {
        (first, last)
    }
}
