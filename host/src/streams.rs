//! `flowpeek streams`: reassembles every TCP connection of a capture and reports, per
//! direction, the bytes a reader of that direction would see, with their SHA-256.
//!
//! The report is built the way any monitor would build it: a [`StreamHasher`] monitor
//! subscribes to `NewData` and `ConnEnd` and reads each side with `peek` as data arrives,
//! so streams of any length go through a bounded buffer; it also takes `Error`, to mark a
//! record whose side was refused a buffer (`buffer_refused`, its unstored bytes missing). The JSON record is written by
//! [`flowpeek_plugin_api::records`], the writer the streamhash plugin uses too, so that the
//! two agree byte for byte by construction; it appends to the caller's reused buffer
//! ([`StreamRecord::write_json`]), no JSON tree. Fields and their order: docs/records.md.
//! With [`StreamsOptions::write`] the hasher also hands every chunk it reads, and every gap,
//! to [`crate::stream_files`] (`--write`), and the record names each direction's file and
//! lists its gaps.
//!
//! The inputs are read sequentially, in bounded memory, by [`crate::io::stream`] (files,
//! stdin, pipes, compressed captures, several in a row) on a thread of its own; `cores`
//! workers each run an engine with a hasher over their shard of the connections (the
//! symmetric hash of `run`), and the calling thread merges their records
//! ([`run_inputs`]). The hasher reads each side in place ([`Cx::read`]): the
//! bytes are hashed straight from the receive buffer, not copied out first.
//!
//! Records are written as the run goes, not held to the end: flows complete in end order
//! but are numbered in start order (the `serial`: the index of the packet that created
//! the flow), so a [`Reorder`] window keeps completed records until no core can still
//! complete an earlier-started one, and emits them in start order. The window is bounded
//! ([`REORDER_WINDOW`] records): when it is full, the earliest completed record is
//! emitted even though an earlier-started connection (a long-lived one) is still open;
//! that one is emitted when it completes, out of start order (counted in
//! [`StreamsSummary::out_of_order`]). A stop request (SIGINT, SIGTERM) ends the read; the
//! engines then finish with the usual end reason and every record is flushed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowpeek_plugin_api::records::{self, DirectionFields, Gap, StreamFields};
use sha2::{Digest, Sha256};

use crate::flow::{
    BufferRequest, Config, Cx, Detail, EndReason, Engine, ErrorKind, Event, EventKind, EventSide,
    FlowHandle, Hook, Monitor, PeekError, Side, Stats, Subscriptions,
};
use crate::io::pcap::CaptureError;
use crate::io::shard::Route;
use crate::io::stream::{fan_out, ChunkFeed, ChunkReader, InputSpec, Progress};
use crate::stream_files::{DirFile, DirName, FilesError, StreamFiles, WriteOptions};

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
    /// With `--write`: the file of this direction (relative to the directory), `None` if
    /// the direction carried nothing.
    pub file: Option<String>,
    /// With `--write`: the gaps (at most [`crate::stream_files::MAX_GAPS`]) and how many
    /// more there were.
    pub gaps: Option<(Vec<Gap>, u64)>,
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
    /// A side was refused a buffer (or its growth) by `buffer_memory`: the bytes not
    /// stored are counted in that direction's `missing`.
    pub buffer_refused: bool,
    /// Client → server.
    pub c2s: DirectionRecord,
    /// Server → client.
    pub s2c: DirectionRecord,
    /// Start order, for sorting: the index (counted over every input of the run) of the
    /// packet that created the connection, the same for any number of cores.
    pub serial: u64,
    /// With `--write`: the run's first write error, on every record completed after it
    /// (their files are incomplete); the caller reports it and stops.
    pub file_error: Option<FilesError>,
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
            file: self.file.as_deref(),
            gaps: self
                .gaps
                .as_ref()
                .map(|(g, dropped)| (g.as_slice(), *dropped)),
        }
    }
}

impl StreamRecord {
    /// The record as one JSON object (no trailing newline): see
    /// [`StreamFields::write_json`].
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(320);
        self.write_json(&mut s);
        s
    }

    /// Appends the record as one JSON object (no newline) to `out`, a buffer the caller
    /// reuses: no JSON tree, no allocation once it has grown (docs/records.md).
    pub fn write_json(&self, out: &mut String) {
        self.fields().write_json(out);
    }

    /// The flow id of the record (`uid`): see [`records::flow_uid`].
    pub fn uid(&self) -> u64 {
        records::flow_uid(self.client, self.server, self.start)
    }

    fn fields(&self) -> StreamFields<'_> {
        StreamFields {
            client: self.client,
            server: self.server,
            start: self.start,
            end: self.end,
            close: self.close,
            partial: self.partial,
            buffer_refused: self.buffer_refused,
            c2s: self.c2s.fields(),
            s2c: self.s2c.fields(),
        }
    }
}

struct Direction {
    sha: Option<Box<Sha256>>,
    crc: crc32fast::Hasher,
    bytes: u64,
    lost: u64,
    /// This direction's buffer was refused by the budget.
    refused: bool,
    /// With `--write`: its file.
    file: Option<Box<DirFile>>,
}

impl Direction {
    fn new(sha256: bool, write: bool) -> Direction {
        Direction {
            sha: sha256.then(|| Box::new(Sha256::new())),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
            lost: 0,
            refused: false,
            file: write.then(Box::default),
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
    done: Rc<RefCell<Vec<StreamRecord>>>,
    buffer: u32,
    sha256: bool,
    /// With `--write`: the files.
    files: Option<StreamFiles>,
    /// With `--write`: where the bytes are copied out to go to the hashes and the file.
    scratch: Vec<u8>,
}

impl StreamHasher {
    /// A hasher asking for `buffer` bytes of receive buffer per side; finished records
    /// are appended to `done`.
    pub fn new(buffer: u32, done: Rc<RefCell<Vec<StreamRecord>>>) -> StreamHasher {
        StreamHasher {
            live: Vec::new(),
            free: Vec::new(),
            done,
            buffer,
            sha256: true,
            files: None,
            scratch: Vec::new(),
        }
    }

    /// Writes each direction to a file too (`streams --write`).
    pub fn with_files(mut self, opts: Option<WriteOptions>) -> StreamHasher {
        self.files = opts.map(StreamFiles::new);
        self.scratch = if self.files.is_some() {
            vec![0; 64 * 1024]
        } else {
            Vec::new()
        };
        self
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
        let write = self.files.is_some();
        let live = Live {
            dirs: [
                Direction::new(self.sha256, write),
                Direction::new(self.sha256, write),
            ],
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
            if self.files.is_some() {
                // --write: the bytes go to the direction's file too, so they are copied out.
                match cx.peek(h, side, &mut self.scratch) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(sha) = &mut d.sha {
                            sha.update(&self.scratch[..n]);
                        }
                        d.crc.update(&self.scratch[..n]);
                        d.bytes += n as u64;
                        if let (Some(files), Some(f)) = (&mut self.files, &mut d.file) {
                            files.data(f, &self.scratch[..n], || dir_name(cx, h, side));
                        }
                    }
                    Err(PeekError::Lost(n)) => {
                        d.lost += n;
                        if let (Some(files), Some(f)) = (&mut self.files, &mut d.file) {
                            files.gap(f, n, || dir_name(cx, h, side));
                        }
                    }
                    Err(PeekError::Errno(_)) => break,
                }
                continue;
            }
            // Hashed straight from the receive buffer: no copy.
            match cx.read(h, side, usize::MAX) {
                Ok(([], _)) => break,
                Ok((x, y)) => {
                    for bytes in [x, y] {
                        if let Some(sha) = &mut d.sha {
                            sha.update(bytes);
                        }
                        d.crc.update(bytes);
                    }
                    d.bytes += (x.len() + y.len()) as u64;
                }
                Err(PeekError::Lost(n)) => d.lost += n,
                Err(PeekError::Errno(_)) => break,
            }
        }
    }
}

/// The name parts of the direction held by `side`'s buffer (what the other side sent).
fn dir_name(cx: &Cx<'_>, h: FlowHandle, side: Side) -> Option<DirName> {
    let (client, server) = cx.addresses(h).ok()?;
    let t = cx.flow_times(h).ok()?;
    let c2s = side == Side::Server;
    let (sender, receiver) = if c2s {
        (client, server)
    } else {
        (server, client)
    };
    Some(DirName {
        sender,
        receiver,
        uid: records::flow_uid(client, server, t.start),
        serial: t.serial,
        c2s,
    })
}

impl Monitor for StreamHasher {
    fn name(&self) -> &str {
        "streams"
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with(EventKind::ConnEnd, Hook::Snd)
            .with(EventKind::Error, Hook::None)
            .with_buffers(BufferRequest::AtLeast(self.buffer))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let EventSide::One(side) = ev.side else {
            return;
        };
        let Some(idx) = self.entry(cx, ev.flow) else {
            return;
        };
        if ev.kind == EventKind::Error {
            if ev.detail == Detail::Error(ErrorKind::OutOfBufferMemory) {
                if let Some(live) = self.live[idx].as_mut() {
                    live.dirs[side.index()].refused = true;
                }
            }
            return;
        }
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
        let files = &mut self.files;
        let mut dir = |mut d: Direction, s: Side| {
            let out = d
                .file
                .take()
                .zip(files.as_mut())
                .map(|(f, files)| files.close(*f));
            let i = info(s);
            let overlap = i.map_or(0, |i| i.overlap);
            // The engine counts the bytes a refused side could not store as missing; a
            // reader never saw them, so the record must not claim them.
            let missing = if d.refused {
                d.lost.max(i.map_or(0, |i| i.missing))
            } else {
                d.lost
            };
            DirectionRecord {
                bytes: d.bytes,
                sha256: d
                    .sha
                    .map_or_else(String::new, |sha| records::hex(&sha.finalize())),
                crc32: d.crc.finalize(),
                missing,
                overlap,
                file: out.as_ref().and_then(|o| o.name.clone()),
                gaps: out.map(|o| (o.gaps, o.gaps_dropped)),
            }
        };
        let [cli, svr] = live.dirs;
        let buffer_refused = cli.refused || svr.refused;
        self.done.borrow_mut().push(StreamRecord {
            client,
            server,
            start: times.start,
            end: times.last,
            close: records::close_name(Some(reason)),
            partial,
            buffer_refused,
            // The server side's buffer holds what the client sent.
            c2s: dir(svr, Side::Server),
            s2c: dir(cli, Side::Client),
            serial: times.serial,
            file_error: self.files.as_ref().and_then(|f| f.error().cloned()),
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
    /// Write each direction to a file (`--write`); the directory must exist
    /// ([`crate::stream_files::prepare_dir`]).
    pub write: Option<WriteOptions>,
}

/// Completed records a [`Reorder`] keeps, at most, waiting for an earlier-started one.
/// About 400 bytes each: some 25 MiB when full.
pub const REORDER_WINDOW: usize = 1 << 16;

/// Puts completed records back in start order (by `serial`), keeping at most `window` of
/// them. A record goes out once no record that may still come can start before it: the
/// caller says so with [`Reorder::release`] (the earliest start any core may still
/// complete). When the window is full the earliest record goes out anyway; a record that
/// completes after a later-started one went out is emitted at once, out of start order
/// (counted).
#[derive(Debug)]
pub struct Reorder {
    waiting: BTreeMap<u64, StreamRecord>,
    /// The last serial emitted.
    last: Option<u64>,
    window: usize,
    out_of_order: u64,
}

impl Reorder {
    /// An empty window of `window` records (at least 1).
    pub fn new(window: usize) -> Reorder {
        Reorder {
            waiting: BTreeMap::new(),
            last: None,
            window: window.max(1),
            out_of_order: 0,
        }
    }

    /// Takes a completed record; `emit` gets the records the full window pushes out.
    pub fn push<E>(
        &mut self,
        r: StreamRecord,
        emit: &mut impl FnMut(&StreamRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.last.is_some_and(|l| r.serial < l) {
            // Its turn was given away when the window was full.
            self.out_of_order += 1;
            return emit(&r);
        }
        self.waiting.insert(r.serial, r);
        while self.waiting.len() > self.window {
            self.pop(emit)?;
        }
        Ok(())
    }

    fn pop<E>(&mut self, emit: &mut impl FnMut(&StreamRecord) -> Result<(), E>) -> Result<(), E> {
        if let Some((serial, r)) = self.waiting.pop_first() {
            self.last = Some(serial);
            emit(&r)?;
        }
        Ok(())
    }

    /// Emits, in order, every record that started before `watermark` (no record still
    /// to come starts before it).
    pub fn release<E>(
        &mut self,
        watermark: u64,
        emit: &mut impl FnMut(&StreamRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        while self
            .waiting
            .first_key_value()
            .is_some_and(|(&s, _)| s < watermark)
        {
            self.pop(emit)?;
        }
        Ok(())
    }

    /// Emits everything still waiting, in order (the end of the run).
    pub fn flush<E>(
        &mut self,
        emit: &mut impl FnMut(&StreamRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        self.release(u64::MAX, emit)?;
        self.release(u64::MAX, emit)
    }

    /// Records emitted after a later-started one because the window was full.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// No record waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// What a `streams` run did, besides the records it emitted.
#[derive(Debug)]
pub struct StreamsSummary {
    /// Records emitted.
    pub records: u64,
    /// The engine's counters (summed over the cores).
    pub stats: Stats,
    /// The first input error: records of an input that could not be read to its end
    /// (every packet before the damage was processed), or of an input that could not be
    /// opened while others could.
    pub capture_error: Option<CaptureError>,
    /// The run was stopped (signal) before the end of the capture.
    pub stopped: bool,
    /// Records emitted out of start order because the reorder window was full.
    pub out_of_order: u64,
    /// Records marked `buffer_refused`.
    pub refused_records: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// The result of a `streams` run collected in memory ([`run`]).
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

/// Why a streaming run failed.
#[derive(Debug)]
pub enum StreamsError {
    /// The capture could not be opened.
    Capture(CaptureError),
    /// Writing a record failed (the run stopped there); the summary so far.
    Write(io::Error, Box<StreamsSummary>),
}

/// Reassembles every connection of the capture at `path` on one core, collecting the
/// records (for tests and callers that want them all). `progress` is called now and then
/// with (bytes read, file size).
pub fn run(
    path: &Path,
    opts: &StreamsOptions,
    progress: impl FnMut(u64, u64),
) -> Result<StreamsReport, CaptureError> {
    run_cores(&[InputSpec::Path(path.to_path_buf())], opts, 1, progress)
}

/// As [`run`], over `inputs` one after the other, on `cores` cores.
pub fn run_cores(
    inputs: &[InputSpec],
    opts: &StreamsOptions,
    cores: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<StreamsReport, CaptureError> {
    let mut records = Vec::new();
    let never = AtomicBool::new(false);
    let total: u64 = inputs.iter().filter_map(InputSpec::size).sum();
    let sum = run_inputs(
        inputs,
        opts,
        cores,
        &never,
        |r: &StreamRecord| -> io::Result<()> {
            records.push(r.clone());
            Ok(())
        },
        |p: &Progress| progress(p.bytes.load(Ordering::Relaxed), total),
    )
    .map_err(|e| match e {
        StreamsError::Capture(e) => e,
        StreamsError::Write(..) => unreachable!("collecting does not fail"),
    })?;
    records.sort_by_key(|r| r.serial);
    Ok(StreamsReport {
        records,
        stats: sum.stats,
        capture_error: sum.capture_error,
        elapsed: sum.elapsed,
    })
}

/// Reassembles every connection of the capture at `path` on one core, handing each
/// record to `emit` as soon as the [`Reorder`] window lets it go: see [`run_inputs`].
pub fn run_streaming(
    path: &Path,
    opts: &StreamsOptions,
    stop: &AtomicBool,
    emit: impl FnMut(&StreamRecord) -> io::Result<()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<StreamsSummary, StreamsError> {
    let spec = InputSpec::Path(path.to_path_buf());
    let total = spec.size().unwrap_or(0);
    run_inputs(&[spec], opts, 1, stop, emit, |p: &Progress| {
        progress(p.bytes.load(Ordering::Relaxed), total)
    })
}

/// Checks, before anything runs, what can be checked without consuming an input: that
/// every named input exists, is not a directory and, for a regular file, starts like a
/// capture (after decompression). Stdin, pipes and FIFOs are checked as they are read.
pub fn probe(spec: &InputSpec) -> Result<(), CaptureError> {
    let InputSpec::Path(path) = spec else {
        return Ok(());
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => CaptureError::NotFound { path: path.clone() },
        io::ErrorKind::PermissionDenied => CaptureError::PermissionDenied {
            path: path.clone(),
            op: "reading its metadata",
            source: e,
        },
        _ => CaptureError::Io {
            path: path.clone(),
            op: "reading its metadata",
            source: e,
        },
    })?;
    if meta.is_dir() {
        return Err(CaptureError::IsDirectory { path: path.clone() });
    }
    if !meta.is_file() {
        return Ok(());
    }
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (reader, _) = crate::io::stream::open(spec, &counter)?;
    let mut head = Vec::with_capacity(64);
    reader
        .take(64)
        .read_to_end(&mut head)
        .map_err(|e| CaptureError::Io {
            path: path.clone(),
            op: "reading its first bytes",
            source: e,
        })?;
    crate::io::pcap::Framer::detect(&head, path).map(drop)
}

/// Whether `e`, met after `packets` packets, says the input could not be opened as a
/// capture at all (rather than that it was damaged after its header: a warning).
pub fn unopenable(e: &CaptureError, packets: u64) -> bool {
    match e {
        CaptureError::Truncated { offset, .. } | CaptureError::Corrupt { offset, .. } => {
            packets == 0 && *offset == 0
        }
        CaptureError::Shrank { .. } => false,
        _ => packets == 0,
    }
}

/// What a core sends the merger: the records it completed, and the earliest start
/// (serial) of any record it may still complete.
struct CoreBatch {
    records: Vec<StreamRecord>,
    watermark: u64,
    core: usize,
}

/// Reassembles every connection of `inputs` (read one after the other, sequentially, in
/// bounded memory: [`crate::io::stream`]) on `cores` cores, handing each record to `emit`
/// in start order as soon as the [`Reorder`] window lets it go.
///
/// Every core sees every packet and keeps the flows whose symmetric hash falls on it, as
/// `run` does ([`crate::io::shard`]); the reader routes each packet once as it frames it
/// ([`Route`]), so a core decodes only its own packets. Foreign packets only move its clock
/// (when processing them would have: [`crate::flow::moves_clock`]), and every core
/// closes its batches at the same packets, so timers fire at the same packet times
/// whatever the number of cores. A record's `serial` is the index (over every input) of
/// the packet that created its connection: the records, and their order, are the same
/// for any `cores` (as long as no per-core limit such as `--buffer-memory` or
/// `--max-flows` is reached, those being per core).
///
/// `stop` (set by a signal handler) ends the read early; the engines still finish, so open
/// flows get their records. A failing `emit` stops the run. `progress` is called about ten
/// times a second with the reader's counters.
pub fn run_inputs(
    inputs: &[InputSpec],
    opts: &StreamsOptions,
    cores: usize,
    stop: &AtomicBool,
    mut emit: impl FnMut(&StreamRecord) -> io::Result<()>,
    mut progress: impl FnMut(&Progress),
) -> Result<StreamsSummary, StreamsError> {
    let started = Instant::now();
    // --write keeps one writer and its names (the numbered suffixes of a reused 4-tuple):
    // one core.
    let cores = if opts.write.is_some() {
        1
    } else {
        cores.max(1)
    };
    if let [only] = inputs {
        probe(only).map_err(StreamsError::Capture)?;
    } else {
        for spec in inputs {
            probe(spec).map_err(StreamsError::Capture)?;
        }
    }
    // The hasher asks for the configured capacity, so freed buffers are pooled and reused
    // instead of allocated (and zeroed) for every connection.
    let base_cfg = Config {
        buffer_capacity: opts.buffer,
        replay_cores: if cores > 1 { cores } else { 0 },
        ..opts.engine.clone()
    };
    let halt = AtomicBool::new(false);
    let skipped = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::sync_channel::<CoreBatch>(4 * cores);
    // Each core takes its sender: when every core has ended (or panicked), the merger's
    // channel disconnects.
    let senders: Vec<Mutex<Option<SyncSender<CoreBatch>>>> =
        (0..cores).map(|_| Mutex::new(Some(tx.clone()))).collect();
    drop(tx);
    let reader = routed_reader(inputs, cores, &base_cfg);
    let body = |core: usize, feed: ChunkFeed| -> Stats {
        let tx = senders[core].lock().ok().and_then(|mut s| s.take());
        let done = Rc::new(RefCell::new(Vec::new()));
        let hasher = StreamHasher::new(opts.buffer, Rc::clone(&done))
            .with_sha256(opts.sha256)
            .with_files(opts.write.clone());
        let cfg = Config {
            core: core as u8,
            ..base_cfg.clone()
        };
        let mut engine = Engine::new(cfg, vec![Box::new(hasher)]);
        // The serial (packet index) of every open flow, by the engine's own serial.
        let mut open: BTreeMap<u64, u64> = BTreeMap::new();
        let mut created = 0u64;
        let mut next = 0u64;
        let collect = |open: &mut BTreeMap<u64, u64>, next: u64| -> CoreBatch {
            let mut records: Vec<StreamRecord> = done.borrow_mut().drain(..).collect();
            for r in &mut records {
                r.serial = open.remove(&r.serial).unwrap_or(next);
            }
            CoreBatch {
                records,
                watermark: open.first_key_value().map_or(next, |(_, &g)| g),
                core,
            }
        };
        let mut gone = false;
        feed.for_each(|chunk| {
            if !gone && (stop.load(Ordering::Relaxed) || halt.load(Ordering::Relaxed)) {
                // Stopped: the chunks already read are not processed.
                gone = true;
                skipped.store(true, Ordering::Relaxed);
            }
            if gone {
                return;
            }
            for (k, p) in chunk.packets.iter().enumerate() {
                let g = chunk.first + k as u64;
                let frame = chunk.frame(p);
                if cores == 1 {
                    engine.on_frame(p.link, frame, p.ts);
                } else {
                    engine.on_routed(chunk.route(k), core, cores, p.link, frame, p.ts);
                }
                let now_created = engine.stats().flows_created;
                while created < now_created {
                    open.insert(created, g);
                    created += 1;
                }
                if g % BATCH as u64 == BATCH as u64 - 1 {
                    engine.end_batch();
                }
            }
            next = chunk.first + chunk.packets.len() as u64;
            let batch = collect(&mut open, next);
            gone = tx.as_ref().map_or(true, |tx| tx.send(batch).is_err());
        });
        engine.finish(EndReason::Eof);
        let mut last = collect(&mut open, u64::MAX);
        last.watermark = u64::MAX;
        if let Some(tx) = &tx {
            let _ = tx.send(last);
        }
        engine.stats().clone()
    };
    let merge = |p: &Progress| {
        let mut finals = 0;
        let mut reorder = Reorder::new(REORDER_WINDOW);
        let mut marks = vec![0u64; cores];
        let (mut records, mut refused) = (0u64, 0u64);
        let mut write_error = None;
        let mut last_tick = Instant::now();
        let mut counted = |r: &StreamRecord| -> io::Result<()> {
            records += 1;
            refused += u64::from(r.buffer_refused);
            emit(r)
        };
        loop {
            let msg = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => Some(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if stop.load(Ordering::Relaxed) {
                halt.store(true, Ordering::Relaxed);
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                progress(p);
            }
            let Some(msg) = msg else { continue };
            if write_error.is_some() {
                // Keep draining so that the cores finish; nothing more is written.
                continue;
            }
            marks[msg.core] = msg.watermark;
            if msg.watermark == u64::MAX {
                finals += 1;
            }
            let mark = marks.iter().copied().min().unwrap_or(0);
            let result = msg
                .records
                .into_iter()
                .try_for_each(|r| reorder.push(r, &mut counted))
                .and_then(|()| reorder.release(mark, &mut counted));
            if let Err(e) = result {
                write_error = Some(e);
                halt.store(true, Ordering::Relaxed);
            }
            if finals == cores {
                break;
            }
        }
        if write_error.is_none() {
            write_error = reorder.flush(&mut counted).err();
        }
        (records, refused, reorder.out_of_order(), write_error)
    };
    let (results, read, merged) = fan_out(reader, cores, &halt, body, merge);
    let (records, refused_records, out_of_order, write_error) = merged;
    let mut stats = Stats::default();
    for s in results.iter().flatten() {
        stats.merge(s);
    }
    if results.iter().any(Result::is_err) {
        // A core panicked: its flows' records are missing. Say so rather than pass off a
        // partial report as whole.
        return Err(StreamsError::Write(
            io::Error::other("a core's thread panicked; its connections are missing"),
            Box::new(StreamsSummary {
                records,
                stats,
                capture_error: read.error,
                stopped: false,
                out_of_order,
                refused_records,
                elapsed: started.elapsed(),
            }),
        ));
    }
    if inputs.len() == 1
        && read
            .error
            .as_ref()
            .is_some_and(|e| unopenable(e, read.packets))
    {
        // The only input (stdin, a pipe: not checked before the run) is not a capture.
        if let Some(e) = read.error {
            return Err(StreamsError::Capture(e));
        }
    }
    let summary = StreamsSummary {
        records,
        stats,
        capture_error: read.error,
        stopped: (read.stopped || skipped.load(Ordering::Relaxed)) && stop.load(Ordering::Relaxed),
        out_of_order,
        refused_records,
        elapsed: started.elapsed(),
    };
    match write_error {
        Some(e) => Err(StreamsError::Write(e, Box::new(summary))),
        None => Ok(summary),
    }
}

/// A reader of `inputs` for `cores` cores whose engines run with `cfg`: with more than one
/// core it routes every packet ([`Route`]) as it frames it, so that each core decodes only
/// its own packets.
pub(crate) fn routed_reader(inputs: &[InputSpec], cores: usize, cfg: &Config) -> ChunkReader {
    let reader = ChunkReader::new(inputs.to_vec());
    if cores <= 1 {
        return reader;
    }
    let cfg = cfg.clone();
    reader.with_routes(Box::new(move |link, frame| {
        Route::of(link, frame, cores, &cfg)
    }))
}

/// Widest the table gets: every line, header and rows, IPv4 or IPv6.
pub const TABLE_WIDTH: usize = 120;

/// Width of the client and server columns; a longer address (IPv6) puts the addresses
/// on a line of their own, the numbers on the next.
const ADDR: usize = 21;

/// The table's header, two lines (no final newline): the directions over their columns,
/// then the column names. `flags`: `P` picked up mid-stream (partial), `R` a buffer was
/// refused (`buffer_refused`), `-` neither.
pub fn table_header() -> String {
    let dir = |d: &str| format!("{:-^29}", format!(" {d} "));
    format!(
        "{:<w$} {:<w$} {:<7} {} {}\n{:<w$} {:<w$} {:<7} {:>11} {:>8} {:>8} {:>11} {:>8} {:>8} {}",
        "",
        "",
        "",
        dir("client to server"),
        dir("server to client"),
        "client",
        "server",
        "close",
        "bytes",
        "missing",
        "overlap",
        "bytes",
        "missing",
        "overlap",
        "flags",
        w = ADDR
    )
}

/// One record as table rows (no final newline): one line, or two when an address is
/// wider than its column. Never wider than [`TABLE_WIDTH`].
pub fn table_row(r: &StreamRecord) -> String {
    let (client, server) = (r.client.to_string(), r.server.to_string());
    let flags = match (r.partial, r.buffer_refused) {
        (true, true) => "PR",
        (true, false) => "P",
        (false, true) => "R",
        (false, false) => "-",
    };
    let numbers = format!(
        "{:<7} {:>11} {:>8} {:>8} {:>11} {:>8} {:>8} {}",
        r.close,
        r.c2s.bytes,
        r.c2s.missing,
        r.c2s.overlap,
        r.s2c.bytes,
        r.s2c.missing,
        r.s2c.overlap,
        flags
    );
    if client.len() <= ADDR && server.len() <= ADDR {
        format!("{client:<ADDR$} {server:<ADDR$} {numbers}")
    } else {
        format!("{client} {server}\n{:<w$} {numbers}", "", w = 2 * ADDR + 1)
    }
}

/// Writes the report: JSON lines, or a table a person can read.
pub fn write_report(out: &mut impl Write, report: &StreamsReport, json: bool) -> io::Result<()> {
    if json {
        for r in &report.records {
            writeln!(out, "{}", r.to_json())?;
        }
        return Ok(());
    }
    writeln!(out, "{}", table_header())?;
    for r in &report.records {
        writeln!(out, "{}", table_row(r))?;
    }
    Ok(())
}
