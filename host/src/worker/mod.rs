//! One thread per core: each pinned to its CPU, with its own engine and its own plugin
//! instances, sharing nothing on the packet path.
//!
//! Owns the one per-core loop, [`run`], generic over the [`Source`] (compiled once per
//! source, nothing dispatched per packet): take a batch from the source, hand its frames to
//! the engine (looking ahead when the flow table is past the caches and the source can),
//! close the batch, and at the safe point apply pending plugin generations and publish the
//! counters. The idle policy (spin then nap, or wait in the kernel), the clock (read once per
//! batch, never per packet), the stop flag and the latency sampling of shm sources are
//! written here once. [`run_input`] opens a core's share of an input on its thread.
//!
//! Must not: block on anything but its source, allocate or lock per packet. Counters are
//! published at safe points with relaxed atomic stores.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::flow::{Config, EndReason, Engine, Stats};
use crate::io::afpacket::{AfPacketSocket, FanoutGroup, FanoutMode, RingConfig};
use crate::io::netmap::{NetmapPort, PortSpec};
use crate::io::pcap::CaptureFile;
use crate::io::replay::PcapReplay;
use crate::io::shm::ShmRing;
use crate::io::{Batch, Idle, Sink, Source, SourceError};
use crate::plugin::{HostError, PluginHost, PluginSet, PluginStats};
use crate::wire::{DecodeError, Decoded, LinkType};

/// Empty polls of a spinning source (about a millisecond) before an idle core starts
/// napping 20 µs between polls.
const IDLE_SPINS_BEFORE_NAP: u32 = 1 << 16;

/// A spinning idle core runs a full empty batch (timers, the producer's liveness) once per
/// this many polls; the others are one load of the ring's tail.
const FULL_POLL_EVERY: u32 = 1024;

/// As [`FULL_POLL_EVERY`] once the core naps (each poll then takes a sleep, about 80 µs):
/// a full poll every ~1.3 ms, so that timers and a dead producer are noticed within a
/// fraction of a second, not 1024 naps later.
const FULL_POLL_EVERY_NAPPING: u32 = 16;

/// While frames stream in small batches, the clock is read once per this many frames: a
/// vDSO clock read costs as much as processing a packet.
const CLOCK_EVERY: usize = 256;

/// How long a core waits for the cores before it to join the AF_PACKET fanout group.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// How long a blocking source waits in the kernel before the loop runs its timers.
const WAIT: Duration = Duration::from_millis(100);

/// Packets handed to the engine between two safe points (capture replay).
pub const BATCH: usize = 32;

/// Counters a worker publishes at safe points, read by the status line.
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// Packets this core processed.
    pub packets: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Flows tracked now.
    pub flows_live: AtomicU64,
    /// Events delivered.
    pub events: AtomicU64,
    /// Packets lost before the engine (ring full, kernel drops).
    pub drops: AtomicU64,
}

/// What one core did.
#[derive(Debug, Default)]
pub struct CoreReport {
    /// The core.
    pub core: usize,
    /// Engine counters.
    pub stats: Stats,
    /// Per plugin.
    pub plugins: BTreeMap<String, PluginStats>,
    /// Plugin files that failed to load (reported by core 0).
    pub load_failures: Vec<String>,
    /// Per reload: directory event to the new generation taking traffic.
    pub reload_latencies: Vec<Duration>,
    /// A source error that ended the input early.
    pub source_error: Option<SourceError>,
    /// Corrupt slots the source skipped.
    pub corrupt_frames: u64,
    /// Stamp-to-callback-return latency of the sampled packets, in ns (shm sources with
    /// [`WorkerSpec::latency_sample`] > 0 only).
    pub latency: Option<hdrhistogram::Histogram<u64>>,
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Its source could not be opened (boxed: source errors are large, and a `Result` is
    /// only as small as its error).
    #[error(transparent)]
    Source(Box<SourceError>),
    /// Its plugin instances could not be made.
    #[error(transparent)]
    Plugins(#[from] HostError),
    /// A shm region with fewer rings than workers.
    #[error("no shm ring for this core")]
    NoShmRing,
    /// The thread panicked.
    #[error("the worker thread panicked")]
    Panicked,
    /// The thread could not be started.
    #[error("cannot start its worker thread ({0}): use fewer --cores, or raise the process's thread limit (ulimit -u)")]
    Spawn(#[source] std::io::Error),
}

impl From<SourceError> for WorkerError {
    fn from(e: SourceError) -> WorkerError {
        WorkerError::Source(Box::new(e))
    }
}

/// The largest latency a histogram holds (10 s, in ns); larger samples count as this.
pub const LATENCY_MAX_NS: u64 = 10_000_000_000;

/// An empty latency histogram: ns from 1 to [`LATENCY_MAX_NS`], 3 significant digits, no
/// auto-resize (so recording never allocates).
pub fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
        .expect("constant histogram bounds are valid")
}

/// A pcap or pcapng file shared by `cores` workers, each taking the flows whose symmetric
/// hash falls on it.
#[derive(Clone, Debug)]
pub struct PcapShard {
    /// The capture.
    pub path: PathBuf,
    /// Passes over it (each shifted in time after the previous).
    pub loops: u32,
    /// Packets per second of the whole capture (0: flat out).
    pub pace: u64,
}

/// A core's share of an input, opened on the core's thread by [`run_input`].
#[derive(Debug)]
pub enum Input {
    /// Its shard of a capture file.
    Pcap(PcapShard),
    /// Its socket in a fanout group on an interface.
    AfPacket {
        /// The interface.
        ifname: String,
        /// The fanout group id (one per run).
        group: u16,
        /// Sockets of the group opened so far (shared by the run's cores): core N joins
        /// after cores 0..N.
        joined: Arc<AtomicUsize>,
    },
    /// A netmap port (one ring, or all of them on one core).
    Netmap(PortSpec),
    /// Its ring of a shm region (`None`: the region has fewer rings than cores).
    Shm(Option<ShmRing>),
}

pub use crate::sys::pin_to_cpu;

/// Everything a worker needs.
pub struct WorkerSpec {
    /// This core.
    pub core: usize,
    /// All cores of the run.
    pub cores: usize,
    /// Engine settings (the core number is set from `core`).
    pub engine: Config,
    /// The shared plugins.
    pub plugins: Arc<PluginSet>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Published counters.
    pub counters: Arc<CoreCounters>,
    /// Pin the thread to its CPU.
    pub pin: bool,
    /// Shm sources: every Nth packet, record the time from the producer's stamp to the
    /// return of the engine's callback (0: off, no clock reads).
    pub latency_sample: u64,
    /// Stamps within this many ns after the first are warm-up, not recorded.
    pub latency_warmup: u64,
    /// Live multi-core sources: this core's ends of the datagram handoff between cores
    /// ([`handoff::ports`]; `None`: one core, or a replay, where every core reassembles).
    pub handoff: Option<(handoff::Outbox, handoff::Inbox)>,
}

/// Pins the thread (when asked), then opens `input` on it, so that the source's memory is
/// allocated near the core that reads it, and runs the loop over it.
pub fn run_input(spec: WorkerSpec, input: Input) -> Result<CoreReport, WorkerError> {
    if spec.pin {
        pin_to_cpu(spec.core);
    }
    match input {
        Input::Pcap(shard) => {
            let capture = CaptureFile::open(&shard.path).map_err(SourceError::from)?;
            let (core, cores) = (spec.core, spec.cores);
            let replay = PcapReplay::new(&capture, shard.loops, shard.pace, core, cores, BATCH);
            let mut spec = spec;
            spec.engine.replay_cores = cores;
            run(spec, replay)
        }
        Input::AfPacket {
            ifname,
            group,
            joined,
        } => {
            let fanout = (spec.cores > 1).then_some(FanoutGroup {
                id: group,
                mode: FanoutMode::Symmetric,
            });
            // The kernel numbers a group's sockets in the order they join, and the fanout
            // program's hash picks one by that number: joining in core order makes it the
            // core, so a datagram reassembled elsewhere can be handed to its flow's core.
            let t0 = std::time::Instant::now();
            while joined.load(Ordering::Acquire) < spec.core && t0.elapsed() < JOIN_WAIT {
                std::thread::sleep(Duration::from_millis(1));
            }
            let in_order = joined.load(Ordering::Acquire) == spec.core;
            let sock = AfPacketSocket::open(&ifname, fanout, RingConfig::default());
            joined.fetch_add(1, Ordering::AcqRel);
            let sock = sock.map_err(SourceError::from)?;
            let mut spec = spec;
            match spec.handoff.as_mut() {
                Some((out, _)) if in_order => out.set_owner(handoff::Owner::Fanout),
                // A core before this one did not join in time: the numbering is unknown,
                // so datagrams are processed where they are reassembled.
                _ => spec.handoff = None,
            }
            run(spec, sock)
        }
        Input::Netmap(port) => {
            let port = NetmapPort::open_spec(port).map_err(SourceError::from)?;
            // The NIC's RSS hash, not ours, spreads flows over the rings: a datagram is
            // processed by the core that reassembled it.
            let mut spec = spec;
            spec.handoff = None;
            run(spec, port)
        }
        Input::Shm(Some(ring)) => run(spec, ring),
        Input::Shm(None) => Err(WorkerError::NoShmRing),
    }
}

/// Runs one core over `source` until it ends or `spec.stop` is set; returns what it did.
pub fn run<S: Source>(mut spec: WorkerSpec, mut source: S) -> Result<CoreReport, WorkerError> {
    let (mut host, mut engine) = start_core(&spec)?;
    let mut inbox = spec.handoff.take().map(|(mut out, inbox)| {
        engine.set_handoff(Box::new(move |link, frame, ts, differs| {
            out.route(link, frame, ts, differs)
        }));
        inbox
    });
    source.start();
    if S::STAMPS && spec.latency_sample > 0 {
        let meter = Latency {
            sample: spec.latency_sample,
            countdown: spec.latency_sample,
            warmup: spec.latency_warmup,
            warm_until: 0,
            histogram: latency_histogram(),
        };
        let mut feed = Feed::new(engine, meter);
        let error = drive(&spec, &mut source, &mut feed, &mut host, &mut inbox);
        feed.finish_handoff(&mut inbox);
        let latency = Some(feed.meter.histogram);
        let mut report = end_core(&spec, feed.engine, host, error, latency);
        report.corrupt_frames = source.corrupt_frames();
        Ok(report)
    } else {
        let mut feed = Feed::new(engine, NoMeter);
        let error = drive(&spec, &mut source, &mut feed, &mut host, &mut inbox);
        feed.finish_handoff(&mut inbox);
        let mut report = end_core(&spec, feed.engine, host, error, None);
        report.corrupt_frames = source.corrupt_frames();
        Ok(report)
    }
}

/// The loop: returns the source error that ended it, if any.
fn drive<S: Source, M: Meter>(
    spec: &WorkerSpec,
    src: &mut S,
    feed: &mut Feed<M>,
    host: &mut PluginHost,
    inbox: &mut Option<handoff::Inbox>,
) -> Option<SourceError> {
    let spins = S::IDLE == Idle::Spin;
    let blocks = S::IDLE == Idle::Blocks;
    let mut error = None;
    let mut idle_spins = 0u32;
    let mut batches = 0u64;
    let mut now = if S::WALL_CLOCK { wall_ns() } else { 0 };
    let mut since_clock = 0usize;
    while !spec.stop.load(Ordering::Relaxed) {
        // Idle on a spinning source: poll the ring's tail (one atomic load) and spin, as
        // netmap's pkt-gen does; every FULL_POLL_EVERY polls the full path runs (timers,
        // producer liveness), and after a long idle stretch the core naps between polls.
        let every = if idle_spins > IDLE_SPINS_BEFORE_NAP {
            FULL_POLL_EVERY_NAPPING
        } else {
            FULL_POLL_EVERY
        };
        if spins
            && idle_spins > 0
            && idle_spins % every != 0
            && src.is_empty()
            && inbox.as_ref().map_or(true, handoff::Inbox::is_empty)
        {
            idle_spins += 1;
            nap(idle_spins);
            continue;
        }
        if blocks {
            if let Err(e) = src.wait(WAIT) {
                error = Some(e);
                break;
            }
        }
        // A blocking source may have waited: its frames are stamped after the wait (a system
        // call per batch dwarfs the clock read).
        if S::WALL_CLOCK && (blocks || since_clock >= CLOCK_EVERY) {
            now = wall_ns();
            since_clock = 0;
        }
        match src.next_batch(now, feed) {
            Ok(Batch::Frames(n)) => {
                idle_spins = 0;
                since_clock += n;
                feed.take_handoff(inbox);
                feed.engine.end_batch();
            }
            Ok(Batch::Empty) => {
                feed.take_handoff(inbox);
                // Idle: timers and idle expiry still run, on wall time; reloads still apply.
                now = wall_ns();
                since_clock = 0;
                feed.engine.advance(now);
                host.poll(&mut feed.engine);
                publish(&spec.counters, feed.engine.stats());
                if spins {
                    idle_spins += 1;
                    nap(idle_spins);
                }
            }
            Ok(Batch::End) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        batches += 1;
        // The reload safe point: new plugin generations take over between batches.
        if batches % S::SAFE_POINT_EVERY == 0 {
            host.poll(&mut feed.engine);
            publish(&spec.counters, feed.engine.stats());
            if let Some(drops) = src.drops() {
                spec.counters.drops.store(drops, Ordering::Relaxed);
            }
        }
    }
    if let Some(drops) = src.drops() {
        spec.counters.drops.store(drops, Ordering::Relaxed);
    }
    error
}

/// One idle poll more: spin, or nap once the core has been idle for a while.
#[inline]
fn nap(idle_spins: u32) {
    if idle_spins > IDLE_SPINS_BEFORE_NAP {
        std::thread::sleep(Duration::from_micros(20));
    } else {
        std::hint::spin_loop();
    }
}

/// What a source's frames go into: the engine, and what is measured on the way.
struct Feed<M> {
    engine: Engine,
    meter: M,
    /// Lookahead hints handed to the engine (test builds: the proof that a source looks
    /// ahead).
    #[cfg(test)]
    hints: u64,
}

impl<M: Meter> Feed<M> {
    fn new(engine: Engine, meter: M) -> Self {
        Feed {
            engine,
            meter,
            #[cfg(test)]
            hints: 0,
        }
    }
}

impl<M> Feed<M> {
    /// The datagrams other cores reassembled for this core's flows (live multi-core
    /// sources only).
    #[inline]
    fn take_handoff(&mut self, inbox: &mut Option<handoff::Inbox>) {
        if let Some(inbox) = inbox {
            let engine = &mut self.engine;
            inbox.drain(|p| engine.on_handed(p.link, &p.frame, p.ts, p.overlap_differs));
        }
    }

    /// The source ended: the datagrams the other cores still send until they end too.
    fn finish_handoff(&mut self, inbox: &mut Option<handoff::Inbox>) {
        if let Some(inbox) = inbox {
            let engine = &mut self.engine;
            inbox.finish(handoff::END_GRACE, |p| {
                engine.on_handed(p.link, &p.frame, p.ts, p.overlap_differs);
            });
            engine.end_batch();
        }
    }
}

impl<M: Meter> Sink for Feed<M> {
    const STAMPS: bool = M::ON;

    /// A big flow table: overlap the cache misses of the next few packets (not while
    /// sampling latency, whose walk reads the stamps instead).
    #[inline]
    fn lookahead(&self) -> bool {
        !M::ON && self.engine.prefetch_wanted()
    }

    #[inline]
    fn far(&mut self, link: Option<LinkType>, frame: &[u8]) {
        #[cfg(test)]
        {
            self.hints += 1;
        }
        self.engine.prefetch_index(link, frame);
    }

    #[inline]
    fn near(&mut self, link: Option<LinkType>, frame: &[u8]) {
        #[cfg(test)]
        {
            self.hints += 1;
        }
        self.engine.prefetch_flow(link, frame);
    }

    #[inline]
    fn frame(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64) {
        self.engine.on_frame(link, frame, ts);
    }

    #[inline]
    fn stamped(&mut self, link: Option<LinkType>, frame: &[u8], ts: u64, stamp: u64) {
        self.engine.on_frame(link, frame, ts);
        // After on_frame returned: every plugin callback for this packet ran.
        self.meter.after_frame(stamp);
    }

    #[inline]
    fn decoded(
        &mut self,
        link: Option<LinkType>,
        decoded: &Option<Result<Decoded<'_>, DecodeError>>,
        frame: &[u8],
        ts: u64,
    ) {
        self.engine.on_decoded(link, decoded, frame, ts);
    }

    #[inline]
    fn elsewhere(&mut self, ts: u64) {
        self.engine.observe_time(ts);
    }
}

/// What is measured per frame on the way to the engine.
trait Meter {
    /// Whether anything is: the source then hands over the producer's stamps.
    const ON: bool;
    /// After the engine processed a frame whose producer stamp was `stamp`.
    fn after_frame(&mut self, stamp: u64);
}

/// Nothing measured.
struct NoMeter;

impl Meter for NoMeter {
    const ON: bool = false;
    #[inline(always)]
    fn after_frame(&mut self, _stamp: u64) {}
}

/// Stamp-to-callback latency, every `sample`th frame.
struct Latency {
    sample: u64,
    countdown: u64,
    warmup: u64,
    warm_until: u64,
    histogram: hdrhistogram::Histogram<u64>,
}

impl Meter for Latency {
    const ON: bool = true;

    #[inline]
    fn after_frame(&mut self, stamp: u64) {
        self.countdown -= 1;
        if self.countdown != 0 {
            return;
        }
        self.countdown = self.sample;
        // The first `warmup` ns of stamps are warm-up (the flow table, index and buffers
        // grow to the working set) and are not recorded.
        if stamp != 0 {
            if self.warm_until == 0 {
                self.warm_until = stamp.saturating_add(self.warmup);
            }
            if stamp >= self.warm_until {
                let t = crate::io::shm::monotonic_ns();
                self.histogram.saturating_record(t.saturating_sub(stamp));
            }
        }
    }
}

/// What every worker starts with: this core's plugin instances and its engine.
fn start_core(spec: &WorkerSpec) -> Result<(PluginHost, Engine), WorkerError> {
    let (host, monitors) = spec.plugins.host(spec.core as u32)?;
    let cfg = Config {
        core: spec.core as u8,
        ..spec.engine.clone()
    };
    Ok((host, Engine::new(cfg, monitors)))
}

/// What every worker ends with: open flows end (`Shutdown` when stopped, `Eof` when the
/// input ended), the plugins shut down, their logs are flushed, and the report is made.
fn end_core(
    spec: &WorkerSpec,
    mut engine: Engine,
    mut host: PluginHost,
    source_error: Option<SourceError>,
    latency: Option<hdrhistogram::Histogram<u64>>,
) -> CoreReport {
    let reason = if spec.stop.load(Ordering::Relaxed) {
        EndReason::Shutdown
    } else {
        EndReason::Eof
    };
    engine.finish(reason);
    host.shutdown(&mut engine);
    host.flush();
    publish(&spec.counters, engine.stats());
    CoreReport {
        core: spec.core,
        stats: engine.stats().clone(),
        plugins: host.stats(),
        load_failures: host.failures.clone(),
        reload_latencies: host.reload_latencies.clone(),
        source_error,
        corrupt_frames: 0,
        latency,
    }
}

fn publish(counters: &CoreCounters, s: &Stats) {
    counters.packets.store(s.packets, Ordering::Relaxed);
    counters.bytes.store(s.bytes, Ordering::Relaxed);
    counters.flows_live.store(s.flows_live, Ordering::Relaxed);
    counters.events.store(s.events, Ordering::Relaxed);
}

/// Wall-clock time in ns (ring frames carry no time: they are stamped on arrival).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub mod handoff;
#[cfg(test)]
mod tests;
