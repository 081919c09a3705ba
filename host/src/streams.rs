//! `flowpeek streams`: reassembles every TCP connection of a capture and reports, per
//! direction, the bytes a reader of that direction would see, with their SHA-256.
//!
//! The report is built the way any monitor would build it: a [`StreamHasher`] monitor
//! subscribes to `NewData` and `ConnEnd` and reads each side with `peek` as data arrives,
//! so streams of any length go through a bounded buffer. The JSON record is written by
//! [`flowpeek_plugin_api::records`], the writer the streamhash plugin uses too, so that the
//! two agree byte for byte by construction.

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use flowpeek_plugin_api::records::{self, DirectionFields, StreamFields};
use sha2::{Digest, Sha256};

use crate::flow::{
    BufferRequest, Config, Cx, Detail, EndReason, Engine, Event, EventKind, EventSide, FlowHandle,
    Hook, Monitor, PeekError, Side, Stats, Subscriptions,
};
use crate::io::pcap::{CaptureError, CaptureFile};

/// Packets handed to the engine between two `end_batch` calls (a ring sync's worth).
pub const BATCH: usize = 32;

/// What a reader of one direction saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionRecord {
    /// Bytes delivered in order.
    pub bytes: u64,
    /// SHA-256 of those bytes, lower-case hex (empty when not computed: `--no-sha256`).
    pub sha256: String,
    /// CRC-32 (IEEE) of those bytes, to compare with other reassemblers' reports.
    pub crc32: u32,
    /// Bytes never seen (gaps skipped).
    pub missing: u64,
    /// Bytes received more than once (retransmitted or overlapping).
    pub overlap: u64,
}

/// One connection of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// The client's address.
    pub client: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// First packet (ns since the epoch).
    pub start: u64,
    /// Last packet (ns).
    pub end: u64,
    /// How it ended: `fin`, `rst`, `timeout`, `eof` or `evicted`.
    pub close: &'static str,
    /// Picked up mid-stream (no SYN seen).
    pub partial: bool,
    /// Client → server.
    pub c2s: DirectionRecord,
    /// Server → client.
    pub s2c: DirectionRecord,
    /// Creation order, for sorting.
    pub serial: u64,
}

impl DirectionRecord {
    fn fields(&self) -> DirectionFields<'_> {
        DirectionFields {
            bytes: self.bytes,
            missing: self.missing,
            overlap: self.overlap,
            sha256: (!self.sha256.is_empty()).then_some(self.sha256.as_str()),
            crc32: Some(self.crc32),
            xxh3: None,
        }
    }
}

impl StreamRecord {
    /// The record as one JSON object (no trailing newline): see
    /// [`StreamFields::to_json`].
    pub fn to_json(&self) -> String {
        StreamFields {
            client: self.client,
            server: self.server,
            start: self.start,
            end: self.end,
            close: self.close,
            partial: self.partial,
            c2s: self.c2s.fields(),
            s2c: self.s2c.fields(),
        }
        .to_json()
    }
}

struct Direction {
    sha: Option<Box<Sha256>>,
    crc: crc32fast::Hasher,
    bytes: u64,
    lost: u64,
}

impl Direction {
    fn new(sha256: bool) -> Direction {
        Direction {
            sha: sha256.then(|| Box::new(Sha256::new())),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            lost: 0,
        }
    }
}

/// Set in a flow's user value once its first side has ended.
const FIRST_SIDE_ENDED: u64 = 1 << 63;

struct Live {
    dirs: [Direction; 2],
}

/// The monitor behind `flowpeek streams`: hashes both directions of every flow.
pub struct StreamHasher {
    live: Vec<Option<Live>>,
    free: Vec<usize>,
    scratch: Box<[u8]>,
    done: Rc<RefCell<Vec<StreamRecord>>>,
    buffer: u32,
    sha256: bool,
}

impl StreamHasher {
    /// A hasher asking for `buffer` bytes of receive buffer per side; finished records
    /// are appended to `done`.
    pub fn new(buffer: u32, done: Rc<RefCell<Vec<StreamRecord>>>) -> StreamHasher {
        StreamHasher {
            live: Vec::new(),
            free: Vec::new(),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            done,
            buffer,
            sha256: true,
        }
    }

    /// Whether to compute SHA-256 as well as CRC-32 (on by default).
    pub fn with_sha256(mut self, on: bool) -> StreamHasher {
        self.sha256 = on;
        self
    }

    fn entry(&mut self, cx: &mut Cx<'_>, h: FlowHandle) -> Option<usize> {
        let v = cx.user_value(h).ok()? & !FIRST_SIDE_ENDED;
        if v != 0 {
            return Some(v as usize - 1);
        }
        let live = Live {
            dirs: [Direction::new(self.sha256), Direction::new(self.sha256)],
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.live[i] = Some(live);
                i
            }
            None => {
                self.live.push(Some(live));
                self.live.len() - 1
            }
        };
        cx.set_user_value(h, idx as u64 + 1).ok()?;
        Some(idx)
    }

    fn drain(&mut self, cx: &mut Cx<'_>, h: FlowHandle, side: Side, idx: usize) {
        let Some(live) = self.live[idx].as_mut() else {
            return;
        };
        let d = &mut live.dirs[side.index()];
        loop {
            match cx.peek(h, side, &mut self.scratch) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(sha) = &mut d.sha {
                        sha.update(&self.scratch[..n]);
                    }
                    d.crc.update(&self.scratch[..n]);
                    d.bytes += n as u64;
                }
                Err(PeekError::Lost(n)) => d.lost += n,
                Err(PeekError::Errno(_)) => break,
            }
        }
    }
}

impl Monitor for StreamHasher {
    fn name(&self) -> &str {
        "streams"
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with(EventKind::ConnEnd, Hook::Snd)
            .with_buffers(BufferRequest::AtLeast(self.buffer))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let EventSide::One(side) = ev.side else {
            return;
        };
        let Some(idx) = self.entry(cx, ev.flow) else {
            return;
        };
        self.drain(cx, ev.flow, side, idx);
        if let (EventKind::ConnEnd, Detail::End(reason)) = (ev.kind, ev.detail) {
            self.finish_side(cx, ev.flow, idx, reason);
        }
    }
}

impl StreamHasher {
    /// Each side gets its own `ConnEnd`; the second one completes the record.
    fn finish_side(&mut self, cx: &mut Cx<'_>, h: FlowHandle, idx: usize, reason: EndReason) {
        let v = cx.user_value(h).unwrap_or(0);
        if v & FIRST_SIDE_ENDED == 0 {
            let _ = cx.set_user_value(h, v | FIRST_SIDE_ENDED);
            return;
        }
        let Some(live) = self.live[idx].take() else {
            return;
        };
        self.free.push(idx);
        let (Ok((client, server)), Ok(times), Ok(partial)) =
            (cx.addresses(h), cx.flow_times(h), cx.is_partial(h))
        else {
            return;
        };
        let info = |s: Side| cx.buffer_info(h, s).ok();
        let dir = |d: Direction, s: Side| {
            let overlap = info(s).map_or(0, |i| i.overlap);
            DirectionRecord {
                bytes: d.bytes,
                sha256: d
                    .sha
                    .map_or_else(String::new, |sha| records::hex(&sha.finalize())),
                crc32: d.crc.finalize(),
                missing: d.lost,
                overlap,
            }
        };
        let [cli, svr] = live.dirs;
        self.done.borrow_mut().push(StreamRecord {
            client,
            server,
            start: times.start,
            end: times.last,
            close: records::close_name(Some(reason)),
            partial,
            // The server side's buffer holds what the client sent.
            c2s: dir(svr, Side::Server),
            s2c: dir(cli, Side::Client),
            serial: times.serial,
        });
    }
}

/// Settings of a `streams` run.
#[derive(Clone, Debug)]
pub struct StreamsOptions {
    /// Engine settings.
    pub engine: Config,
    /// Receive buffer per side (bytes).
    pub buffer: u32,
    /// Compute SHA-256 as well as CRC-32.
    pub sha256: bool,
}

/// The result of a `streams` run.
#[derive(Debug)]
pub struct StreamsReport {
    /// One record per connection, in order of connection start.
    pub records: Vec<StreamRecord>,
    /// The engine's counters.
    pub stats: Stats,
    /// Capture records that could not be read (the run kept everything before them).
    pub capture_error: Option<CaptureError>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Reassembles every connection of the capture at `path`. `progress` is called now and then
/// with (bytes read, file size).
pub fn run(
    path: &Path,
    opts: &StreamsOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<StreamsReport, CaptureError> {
    let started = Instant::now();
    let capture = CaptureFile::open(path)?;
    let done = Rc::new(RefCell::new(Vec::new()));
    let hasher = StreamHasher::new(opts.buffer, Rc::clone(&done)).with_sha256(opts.sha256);
    // The hasher asks for the configured capacity, so freed buffers are pooled and reused
    // instead of allocated (and zeroed) for every connection.
    let cfg = Config {
        buffer_capacity: opts.buffer,
        ..opts.engine.clone()
    };
    let mut engine = Engine::new(cfg, vec![Box::new(hasher)]);
    let mut capture_error = None;
    let mut in_batch = 0;
    let mut n: u64 = 0;
    for pkt in capture.packets() {
        match pkt {
            Ok(p) => {
                engine.on_frame(p.link, p.data, p.ts_nanos);
                in_batch += 1;
                if in_batch == BATCH {
                    engine.end_batch();
                    in_batch = 0;
                }
                n += 1;
                if n % (1 << 16) == 0 {
                    progress(p.offset, capture.len_bytes());
                }
            }
            Err(e) => {
                capture_error = Some(e);
                break;
            }
        }
    }
    engine.finish(EndReason::Eof);
    let stats = engine.stats().clone();
    drop(engine);
    let mut records = std::mem::take(&mut *done.borrow_mut());
    records.sort_by_key(|r| r.serial);
    Ok(StreamsReport {
        records,
        stats,
        capture_error,
        elapsed: started.elapsed(),
    })
}

/// Writes the report: JSON lines, or a table a person can read.
pub fn write_report(out: &mut impl Write, report: &StreamsReport, json: bool) -> io::Result<()> {
    if json {
        for r in &report.records {
            writeln!(out, "{}", r.to_json())?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<44} {:<44} {:>7} {:>12} {:>12} {:>8} {:>8}  c2s sha256",
        "client", "server", "close", "c2s bytes", "s2c bytes", "missing", "overlap"
    )?;
    for r in &report.records {
        writeln!(
            out,
            "{:<44} {:<44} {:>7} {:>12} {:>12} {:>8} {:>8}  {}{}",
            r.client.to_string(),
            r.server.to_string(),
            r.close,
            r.c2s.bytes,
            r.s2c.bytes,
            r.c2s.missing + r.s2c.missing,
            r.c2s.overlap + r.s2c.overlap,
            r.c2s.sha256.get(..16).unwrap_or("-"),
            if r.partial { "  (partial)" } else { "" }
        )?;
    }
    Ok(())
}
