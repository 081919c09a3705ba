//! Captures read sequentially, in bounded memory: files, `-` (standard input), pipes and
//! FIFOs, gzip / zstd / xz compressed captures (recognised by their magic number, whatever
//! their name), and several of them one after the other as one run.
//!
//! A [`ChunkReader`] reads the stream with `read` into a chunk of [`CHUNK`] bytes, frames
//! the records it holds ([`Framer`]) into [`PacketRef`]s, and carries the bytes of a record
//! cut by the end of the chunk over to the next one (a record longer than a chunk grows
//! that chunk). [`fan_out`] runs the reader on a thread of its own and hands every chunk to
//! each of N consumers (the cores of `streams` and `events`, each keeping its shard, which
//! [`ChunkReader::with_routes`] marks per packet as it frames it): the
//! chunks come from a pool of [`POOL`] and go back to it when the last consumer is done, so
//! the memory held is `POOL * CHUNK` (plus the packet index) whatever the input's size,
//! and the reader waits for the slowest consumer. Nothing is mapped: a file that shrinks
//! while being read ends where `read` finds its new end, with [`CaptureError::Shrank`]
//! (every packet read before counts: those bytes were in the file when read).
//!
//! Why `read`, not the memory map of [`super::pcap::CaptureFile`]: a map of the whole file
//! keeps every page it touched resident (the 483 MB benchmark input peaked at 501 MB of
//! RSS), a pipe or a decompressor cannot be mapped, and the copy `read` makes costs less
//! than the page faults of a map, on its own thread (BENCHMARKS.md has the figures).
//!
//! Inputs follow each other in the order given, as `mergecap -a` would concatenate them;
//! packet indexes ([`Chunk::first`]) count over all of them. A damaged or unreadable input
//! ends that input (every complete record before the damage counts) and the run goes on
//! with the next; the first error is reported.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use super::pcap::{CaptureError, CapturedPacket, Framer};
use super::shard::Route;
use crate::wire::LinkType;

/// Bytes read per chunk.
pub const CHUNK: usize = 2 << 20;

/// Chunks in the pool: in flight between the reader and the slowest consumer.
pub const POOL: usize = 8;

/// A corrupt record with fewer bytes than this after it may be a record cut by the end of
/// the chunk whose length only looks implausible there: more bytes are read before the
/// error is believed.
const CORRUPT_RETRY: usize = 1 << 20;

/// One input of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputSpec {
    /// Standard input (`-`).
    Stdin,
    /// A file, FIFO or device.
    Path(PathBuf),
}

impl InputSpec {
    /// `-` is standard input; anything else a path.
    pub fn parse(s: &str) -> InputSpec {
        if s == "-" {
            InputSpec::Stdin
        } else {
            InputSpec::Path(s.into())
        }
    }

    /// The name errors give.
    pub fn name(&self) -> PathBuf {
        match self {
            InputSpec::Stdin => PathBuf::from("<stdin>"),
            InputSpec::Path(p) => p.clone(),
        }
    }

    /// The size in bytes of a regular file (the progress bar's total); `None` for stdin,
    /// pipes and anything that cannot be looked at.
    pub fn size(&self) -> Option<u64> {
        match self {
            InputSpec::Stdin => None,
            InputSpec::Path(p) => std::fs::metadata(p)
                .ok()
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len()),
        }
    }
}

/// How an input is compressed, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed (or not in a format recognised here).
    None,
    /// gzip (`1f 8b`); concatenated members are read as one stream, as `gzip -d` does.
    Gzip,
    /// Zstandard (`28 b5 2f fd`).
    Zstd,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
}

impl Compression {
    /// The compression whose magic number `head` starts with.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }
}

/// Counts the bytes read from the underlying file (compressed bytes, for the progress bar).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn io_error(path: &Path, op: &'static str, source: io::Error) -> CaptureError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound => CaptureError::NotFound { path },
        io::ErrorKind::PermissionDenied => CaptureError::PermissionDenied { path, op, source },
        _ => CaptureError::Io { path, op, source },
    }
}

/// Opens `spec` for sequential reading, decompressing it when its magic number says so.
/// Bytes read from the file itself are added to `counter`.
pub fn open(
    spec: &InputSpec,
    counter: &Arc<AtomicU64>,
) -> Result<(Box<dyn Read + Send>, Compression), CaptureError> {
    let name = spec.name();
    let raw: Box<dyn Read + Send> = match spec {
        InputSpec::Stdin => Box::new(io::stdin()),
        InputSpec::Path(p) => {
            let meta = std::fs::metadata(p).map_err(|e| io_error(p, "reading its metadata", e))?;
            if meta.is_dir() {
                return Err(CaptureError::IsDirectory { path: p.clone() });
            }
            Box::new(File::open(p).map_err(|e| io_error(p, "opening it", e))?)
        }
    };
    let mut raw = Counting {
        inner: raw,
        read: Arc::clone(counter),
    };
    // The magic numbers are at most 6 bytes: read that much (a pipe may give less per
    // read), then put it back in front of the rest.
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        match raw.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(&name, "reading it", e)),
        }
    }
    let whole = io::Cursor::new(head[..got].to_vec()).chain(raw);
    let kind = Compression::sniff(&head[..got]);
    let reader: Box<dyn Read + Send> = match kind {
        Compression::None => Box::new(whole),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(whole)
                .map_err(|e| io_error(&name, "starting its zstd decoder", e))?,
        ),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(whole)),
    };
    Ok((reader, kind))
}

/// One packet of a [`Chunk`].
#[derive(Clone, Copy, Debug)]
pub struct PacketRef {
    /// Start of the frame in the chunk's bytes.
    pub at: u32,
    /// Captured length.
    pub len: u32,
    /// Capture time (ns since the epoch).
    pub ts: u64,
    /// Link type (`None`: not supported; counted by the engine).
    pub link: Option<LinkType>,
}

/// Bytes read from an input and the packets framed in them.
#[derive(Debug, Default)]
pub struct Chunk {
    bytes: Vec<u8>,
    /// The packets, in capture order.
    pub packets: Vec<PacketRef>,
    /// Where each packet goes, when the reader routes them ([`ChunkReader::with_routes`]).
    routes: Vec<Route>,
    /// Index of the first packet, counted over every input of the run.
    pub first: u64,
}

impl Chunk {
    /// The captured bytes of `p`.
    #[inline]
    pub fn frame(&self, p: &PacketRef) -> &[u8] {
        frame_in(&self.bytes, p)
    }

    /// The route of packet `k` ([`ChunkReader::with_routes`]); [`Route::DECIDE`] when the
    /// reader does not route.
    #[inline]
    pub fn route(&self, k: usize) -> Route {
        self.routes.get(k).copied().unwrap_or(Route::DECIDE)
    }
}

/// The bytes of `p` in a chunk's `bytes`.
#[inline]
fn frame_in<'a>(bytes: &'a [u8], p: &PacketRef) -> &'a [u8] {
    let at = p.at as usize;
    bytes.get(at..at + p.len as usize).unwrap_or(&[])
}

/// What [`ChunkReader::with_routes`] computes for each packet: its link type and bytes to
/// its [`Route`].
pub type Router = Box<dyn Fn(Option<LinkType>, &[u8]) -> Route + Send>;

/// The input being read.
struct Current {
    reader: Box<dyn Read + Send>,
    name: PathBuf,
    framer: Option<Framer>,
    /// Stream offset of the first byte of `carry`.
    base: u64,
    /// The start of a record cut by the end of the previous chunk.
    carry: Vec<u8>,
    eof: bool,
    compression: Compression,
    /// A regular file: its path, and the file bytes read before it was opened (to tell,
    /// at its end, whether it shrank while being read).
    file: Option<(PathBuf, u64)>,
}

/// Reads the inputs of a run one after the other into chunks (module docs).
pub struct ChunkReader {
    inputs: std::vec::IntoIter<InputSpec>,
    current: Option<Current>,
    /// Bytes read from the files (compressed), for the progress bar.
    pub read: Arc<AtomicU64>,
    /// Packets framed so far.
    pub packets: Arc<AtomicU64>,
    next_index: u64,
    /// The first error met (the inputs after it are still read).
    pub error: Option<CaptureError>,
    chunk: usize,
    router: Option<Router>,
}

impl ChunkReader {
    /// A reader of `inputs`, in order.
    pub fn new(inputs: Vec<InputSpec>) -> ChunkReader {
        ChunkReader {
            inputs: inputs.into_iter(),
            current: None,
            read: Arc::new(AtomicU64::new(0)),
            packets: Arc::new(AtomicU64::new(0)),
            next_index: 0,
            error: None,
            chunk: CHUNK,
            router: None,
        }
    }

    /// Routes every packet with `router` as it is framed (on the reader's thread, while its
    /// bytes are still in that CPU's cache), so that each consumer processes its own
    /// packets without decoding the others' ([`crate::flow::Engine::on_routed`]).
    pub fn with_routes(mut self, router: Router) -> ChunkReader {
        self.router = Some(router);
        self
    }

    /// Reads `bytes` per chunk instead of [`CHUNK`] (at least 64; for tests of records cut
    /// by a chunk's end).
    pub fn with_chunk_size(mut self, bytes: usize) -> ChunkReader {
        self.chunk = bytes.max(64);
        self
    }

    fn fail(&mut self, e: CaptureError) {
        self.error.get_or_insert(e);
    }

    /// Fills `chunk` with the next packets (and their routes, with
    /// [`ChunkReader::with_routes`]); false when every input is done. A chunk may come back
    /// empty at the end of an input.
    pub fn fill(&mut self, chunk: &mut Chunk) -> bool {
        let more = self.fill_packets(chunk);
        let Chunk {
            bytes,
            packets,
            routes,
            ..
        } = chunk;
        routes.clear();
        if let Some(router) = &self.router {
            routes.extend(packets.iter().map(|p| router(p.link, frame_in(bytes, p))));
        }
        more
    }

    fn fill_packets(&mut self, chunk: &mut Chunk) -> bool {
        chunk.packets.clear();
        chunk.first = self.next_index;
        loop {
            if self.current.is_none() {
                let Some(spec) = self.inputs.next() else {
                    return false;
                };
                let read_before = self.read.load(Ordering::Relaxed);
                match open(&spec, &self.read) {
                    Ok((reader, compression)) => {
                        self.current = Some(Current {
                            reader,
                            name: spec.name(),
                            framer: None,
                            base: 0,
                            carry: Vec::new(),
                            eof: false,
                            compression,
                            file: match &spec {
                                InputSpec::Path(p) if spec.size().is_some() => {
                                    Some((p.clone(), read_before))
                                }
                                _ => None,
                            },
                        });
                    }
                    Err(e) => {
                        self.fail(e);
                        continue;
                    }
                }
            }
            match self.fill_from_current(chunk) {
                Ok(true) => return true,
                Ok(false) => {
                    self.current = None;
                    if !chunk.packets.is_empty() {
                        return true;
                    }
                }
                Err(e) => {
                    self.current = None;
                    self.fail(e);
                    if !chunk.packets.is_empty() {
                        return true;
                    }
                }
            }
        }
    }

    /// Ok(true): the chunk holds packets and the input goes on; Ok(false): the input is
    /// done (the chunk may hold its last packets).
    fn fill_from_current(&mut self, chunk: &mut Chunk) -> Result<bool, CaptureError> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(false);
        };
        if cur.eof && cur.carry.is_empty() {
            return Ok(false);
        }
        let want = self.chunk.max(cur.carry.len() * 2);
        if chunk.bytes.len() < want {
            chunk.bytes.resize(want, 0);
        }
        chunk.bytes[..cur.carry.len()].copy_from_slice(&cur.carry);
        let mut filled = cur.carry.len();
        cur.carry.clear();
        loop {
            // Read until the chunk is full or the input ends.
            while !cur.eof && filled < chunk.bytes.len() {
                match cur.reader.read(&mut chunk.bytes[filled..]) {
                    Ok(0) => cur.eof = true,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        cur.eof = true;
                        // What was read before the failure still counts; the error is
                        // reported once it is framed.
                        let op = match cur.compression {
                            Compression::None => "reading it",
                            Compression::Gzip => "decompressing it (gzip)",
                            Compression::Zstd => "decompressing it (zstd)",
                            Compression::Xz => "decompressing it (xz)",
                        };
                        self.error.get_or_insert(io_error(&cur.name, op, e));
                    }
                }
            }
            let mut start = 0;
            if cur.framer.is_none() {
                let (framer, first) = Framer::detect(&chunk.bytes[..filled], &cur.name)?;
                cur.framer = Some(framer);
                start = first.min(filled);
                cur.base = start as u64;
            }
            let Some(framer) = cur.framer.as_mut() else {
                return Ok(false);
            };
            let packets = &mut chunk.packets;
            let window = &chunk.bytes[start..filled];
            let (pos, err) = framer.frame(window, cur.base, |p: CapturedPacket<'_>| {
                let at = p.data.as_ptr() as usize - chunk.bytes.as_ptr() as usize;
                packets.push(PacketRef {
                    at: at as u32,
                    len: p.data.len() as u32,
                    ts: p.ts_nanos,
                    link: p.link,
                });
            });
            let rest = window.len() - pos;
            if cur.eof {
                if let Some(shrank) = shrank(cur, &self.read, cur.base + pos as u64) {
                    self.count(chunk.packets.len());
                    return Err(shrank);
                }
            }
            if let Some(e) = err {
                let more_may_fix = match &e {
                    CaptureError::Truncated { .. } => true,
                    CaptureError::Corrupt { .. } => rest < CORRUPT_RETRY,
                    _ => false,
                };
                if cur.eof || !more_may_fix {
                    // The error is real: the input ends here.
                    self.count(chunk.packets.len());
                    return Err(e);
                }
                if pos == 0 && start == 0 {
                    // One record longer than the chunk (a plausible length: a truncated
                    // record is at most MAX_RECORD_LEN): grow the chunk and read on.
                    let len = chunk.bytes.len();
                    chunk.bytes.resize(len * 2, 0);
                    continue;
                }
            }
            cur.base += pos as u64;
            cur.carry
                .extend_from_slice(&chunk.bytes[start + pos..filled]);
            let going_on = !cur.eof;
            self.count(chunk.packets.len());
            return Ok(going_on);
        }
    }

    fn count(&mut self, n: usize) {
        self.next_index += n as u64;
        self.packets.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// At the end of a regular file: [`CaptureError::Shrank`] if fewer bytes are in it now
/// than were read from it (another process truncated it while it was read: the bytes
/// read were in the file when they were read, but its end is not where it was).
fn shrank(cur: &Current, read: &AtomicU64, offset: u64) -> Option<CaptureError> {
    let (path, before) = cur.file.as_ref()?;
    let got = read.load(Ordering::Relaxed) - before;
    let size = std::fs::metadata(path).ok()?.len();
    (size < got).then(|| CaptureError::Shrank {
        path: path.clone(),
        size,
        offset,
    })
}

/// What the reader thread of [`fan_out`] did.
#[derive(Debug)]
pub struct ReadSummary {
    /// The first input error (every input was still read).
    pub error: Option<CaptureError>,
    /// Packets read.
    pub packets: u64,
    /// The read stopped at `stop`.
    pub stopped: bool,
}

/// The chunks a consumer of [`fan_out`] gets, in order.
pub struct ChunkFeed {
    rx: Receiver<Arc<Chunk>>,
    free: SyncSender<Chunk>,
}

impl ChunkFeed {
    /// Calls `f` on every chunk, in order, until the reader ends.
    pub fn for_each(self, mut f: impl FnMut(&Chunk)) {
        for c in self.rx.iter() {
            f(&c);
            if let Some(c) = Arc::into_inner(c) {
                // The last consumer gives the chunk back to the pool.
                let _ = self.free.try_send(c);
            }
        }
    }
}

/// Progress counters of a [`fan_out`] run, to read from another thread.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Bytes read from the inputs (compressed bytes for compressed inputs).
    pub bytes: Arc<AtomicU64>,
    /// Packets framed.
    pub packets: Arc<AtomicU64>,
}

/// Reads `reader` on a thread of its own and hands every chunk to each of the
/// `consumers` (module docs), which `body` runs on threads of their own (consumer `i`
/// gets `body(i, feed)`); `watch` runs on the calling thread meanwhile, with the progress
/// counters, and returns when it likes (the consumers' results are collected after it).
/// `stop` ends the read between chunks.
pub fn fan_out<R: Send, W>(
    mut reader: ChunkReader,
    consumers: usize,
    stop: &AtomicBool,
    body: impl Fn(usize, ChunkFeed) -> R + Sync,
    watch: impl FnOnce(&Progress) -> W,
) -> (Vec<std::thread::Result<R>>, ReadSummary, W) {
    let consumers = consumers.max(1);
    let progress = Progress {
        bytes: Arc::clone(&reader.read),
        packets: Arc::clone(&reader.packets),
    };
    std::thread::scope(|scope| {
        let (free_tx, free_rx) = mpsc::sync_channel::<Chunk>(POOL);
        let mut txs = Vec::with_capacity(consumers);
        let mut handles = Vec::with_capacity(consumers);
        for i in 0..consumers {
            let (tx, rx) = mpsc::sync_channel::<Arc<Chunk>>(POOL);
            txs.push(tx);
            let feed = ChunkFeed {
                rx,
                free: free_tx.clone(),
            };
            let body = &body;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("flowpeek-core{i}"))
                    .spawn_scoped(scope, move || body(i, feed)),
            );
        }
        drop(free_tx);
        let read = std::thread::Builder::new()
            .name("flowpeek-read".into())
            .spawn_scoped(scope, move || {
                let mut made = 0;
                let mut stopped = false;
                let mut spare: Vec<Chunk> = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        stopped = true;
                        break;
                    }
                    let mut chunk = match spare.pop() {
                        Some(c) => c,
                        None if made < POOL => {
                            made += 1;
                            Chunk::default()
                        }
                        None => match free_rx.recv() {
                            Ok(c) => c,
                            // Every consumer is gone.
                            Err(_) => break,
                        },
                    };
                    if !reader.fill(&mut chunk) {
                        break;
                    }
                    if chunk.packets.is_empty() {
                        spare.push(chunk);
                        continue;
                    }
                    // The reader keeps no reference: the last consumer to let go of the
                    // chunk is the one that gives it back to the pool. A chunk a dead
                    // consumer refused comes back here.
                    let mut chunk = Some(Arc::new(chunk));
                    let mut alive = false;
                    for (k, tx) in txs.iter().enumerate() {
                        let Some(c) = (if k + 1 == txs.len() {
                            chunk.take()
                        } else {
                            chunk.clone()
                        }) else {
                            break;
                        };
                        match tx.send(c) {
                            Ok(()) => alive = true,
                            Err(mpsc::SendError(c)) => {
                                if let Some(c) = Arc::into_inner(c) {
                                    spare.push(c);
                                }
                            }
                        }
                    }
                    if !alive {
                        break;
                    }
                }
                drop(txs);
                ReadSummary {
                    error: reader.error.take(),
                    packets: reader.next_index,
                    stopped,
                }
            });
        let watched = watch(&progress);
        let results: Vec<std::thread::Result<R>> = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join(),
                Err(e) => Err(Box::new(e) as Box<dyn std::any::Any + Send>),
            })
            .collect();
        let summary = match read {
            Ok(h) => h.join().unwrap_or(ReadSummary {
                error: None,
                packets: 0,
                stopped: false,
            }),
            Err(_) => ReadSummary {
                error: None,
                packets: 0,
                stopped: false,
            },
        };
        (results, summary, watched)
    })
}
