//! `flowpeek run`: a packet source, one worker per core (each with its engine and its plugin
//! instances), hot reload at the safe point between batches, per-plugin record logs, the
//! per-second status line and a stats summary.
//!
//! Sources ([`Source`], the `--source KIND:ARG` of the command line): `pcap:FILE` (pcap or
//! pcapng, every core reading its shard; paced with `--pace`, looped with `--loop`, each pass
//! shifted in time after the previous one so flows do not collide), `afpacket:IF` (a live
//! interface, one socket per core in a symmetric fanout group), `shm:NAME` (the rings of a
//! /dev/shm region, one per core: the ring count decides the cores) and `netmap:IF` /
//! `netmap:IF-K` (every hardware ring, ring k on core k; or one ring on one core).
//!
//! Owns: checking what can be checked before any thread starts (the capture, the plugin
//! directory, the shm region, the netmap port), starting and joining the workers, and adding
//! up their reports. Errors are typed all the way: [`RunError`] nests the source's and the
//! plugins' errors and a [`WorkerError`] per failed core. Must not: touch packets (that is
//! [`crate::worker`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flow::{Config, Stats};
use crate::io::netmap::{NetmapError, NetmapPort, PortSpec};
use crate::io::pcap::CaptureFile;
use crate::io::shm::{ShmRegion, ShmRing};
use crate::io::SourceError;
use crate::plugin::{HostError, PluginSet, PluginStats};
use crate::worker::{self, CoreCounters, CoreReport, Input, PcapShard, WorkerError, WorkerSpec};

/// Where packets come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A capture file.
    Pcap(PathBuf),
    /// A live interface, through AF_PACKET (TPACKET_V3), one socket per core.
    AfPacket(String),
    /// Netmap-layout rings in /dev/shm filled by another process, one ring per core.
    Shm(String),
    /// A netmap port: `netmap:IF` (ring k on core k) or `netmap:IF-K` (one ring, one core).
    Netmap(PortSpec),
}

/// Why a `--source` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceSpecError {
    /// A netmap spec that does not parse.
    #[error(transparent)]
    Netmap(#[from] NetmapError),
    /// Not KIND:ARG.
    #[error("source {0:?} is not of the form KIND:ARG (e.g. pcap:trace.pcap)")]
    Syntax(String),
    /// KIND:ARG with a kind that is not one of the four.
    #[error(
        "source {spec:?}: unknown kind {kind:?}; use pcap:FILE, shm:NAME, afpacket:IF or netmap:IF"
    )]
    UnknownKind {
        /// The whole spec.
        spec: String,
        /// The kind given.
        kind: String,
    },
}

impl std::str::FromStr for Source {
    type Err = SourceSpecError;
    fn from_str(s: &str) -> Result<Source, SourceSpecError> {
        match s.split_once(':') {
            Some(("pcap", path)) if !path.is_empty() => Ok(Source::Pcap(path.into())),
            Some(("afpacket", ifname)) if !ifname.is_empty() => Ok(Source::AfPacket(ifname.into())),
            Some(("shm", name)) if !name.is_empty() => Ok(Source::Shm(name.into())),
            Some(("netmap", _)) => Ok(Source::Netmap(PortSpec::parse(s)?)),
            Some((kind, arg))
                if !kind.is_empty()
                    && !arg.is_empty()
                    && !["pcap", "afpacket", "shm"].contains(&kind) =>
            {
                Err(SourceSpecError::UnknownKind {
                    spec: s.into(),
                    kind: kind.into(),
                })
            }
            _ => Err(SourceSpecError::Syntax(s.into())),
        }
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The source.
    pub source: Source,
    /// The plugin directory.
    pub plugins: PathBuf,
    /// Where `<plugin>.jsonl` files go.
    pub log_dir: PathBuf,
    /// Engine settings (per core).
    pub engine: Config,
    /// Packets per second (0: as fast as possible).
    pub pace: u64,
    /// Passes over the capture.
    pub loops: u32,
    /// How long an old generation keeps its flows after a reload (ns of packet time).
    pub drain_timeout: u64,
    /// Watch the plugin directory for changes.
    pub watch: bool,
    /// Worker threads, one per core (at least 1).
    pub cores: usize,
    /// Shm sources: every Nth packet, record the producer-stamp-to-callback latency into a
    /// histogram (0: off).
    pub latency_sample: u64,
    /// The time budget of one plugin callback, and the policy past it.
    pub budget: crate::plugin::CallBudget,
    /// Latency sampling: stamps within this many ns after the first one are warm-up and
    /// not recorded.
    pub latency_warmup: u64,
}

/// Why a run failed before or while it ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source (checked before any worker starts; boxed, as in [`WorkerError`]).
    #[error(transparent)]
    Source(Box<SourceError>),
    /// The plugin directory.
    #[error(transparent)]
    Plugins(#[from] HostError),
    /// A worker failed.
    #[error("core {core}: {source}")]
    Worker {
        /// The core.
        core: usize,
        /// What went wrong.
        source: WorkerError,
    },
}

impl From<SourceError> for RunError {
    fn from(e: SourceError) -> RunError {
        RunError::Source(Box::new(e))
    }
}

/// A worker's counters at one moment (the status line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreSnapshot {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Flows tracked now.
    pub flows_live: u64,
    /// Events delivered.
    pub events: u64,
    /// Packets lost before the engine.
    pub drops: u64,
}

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    /// Engine counters, summed over the cores.
    pub stats: Stats,
    /// Each core's engine counters.
    pub per_core: Vec<Stats>,
    /// Per plugin, summed over the cores.
    pub plugins: std::collections::BTreeMap<String, PluginStats>,
    /// Library images loaded and retained.
    pub retained_images: u64,
    /// Test loads run by the test-load server, and in a process of their own (when the
    /// server could not be started or had died).
    pub test_loads: crate::plugin::probe::TestLoads,
    /// Plugin files that failed to load.
    pub load_failures: Vec<String>,
    /// A source error that ended the input early (everything before it was processed): the
    /// first any core met.
    pub capture_error: Option<SourceError>,
    /// Corrupt ring slots skipped (shm sources), summed over the cores.
    pub corrupt_slots: u64,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// Wall time.
    pub elapsed: Duration,
    /// Per reload: directory event to the new generation taking traffic (core 0).
    pub reload_latencies: Vec<Duration>,
    /// Stamp-to-callback latency of the sampled packets (ns), merged over the cores; `None`
    /// unless [`RunOptions::latency_sample`] was set on a shm source.
    pub latency: Option<hdrhistogram::Histogram<u64>>,
}

/// The defragmenter's counters as JSON, drops by reason under `dropped`.
pub fn defrag_json(d: &crate::ip::Stats) -> serde_json::Value {
    let dropped: serde_json::Map<String, serde_json::Value> = crate::ip::DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), d.dropped(*r).into()))
        .collect();
    serde_json::json!({
        "fragments": d.fragments, "reassembled": d.reassembled, "duplicates": d.duplicates,
        "overlaps": d.overlaps, "overlaps_differing": d.overlaps_differing,
        "timeouts": d.timeouts, "evictions": d.evictions, "in_flight": d.in_flight,
        "memory": d.memory, "peak_memory": d.peak_memory, "dropped": dropped,
    })
}

/// A latency histogram as JSON: `{"samples", "p50", "p99", "p999", "max"}` in ns.
pub fn latency_json(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "samples": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p95": h.value_at_quantile(0.95),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

impl RunReport {
    /// The summary as JSON (for `--stats`).
    pub fn to_json(&self) -> serde_json::Value {
        let engine = |s: &Stats| {
            serde_json::json!({
                "packets": s.packets, "bytes": s.bytes, "malformed": s.malformed, "not_tcp": s.not_tcp,
                "ip_fragments": s.ip_fragments, "orphans": s.orphans, "late": s.late, "filtered": s.filtered, "flows": s.flows_created,
                "flows_evicted": s.flows_evicted, "flows_timed_out": s.flows_timed_out, "events": s.events,
                "bytes_missing": s.bytes_missing, "bytes_refused": s.bytes_refused, "buffer_memory_refusals": s.buffer_memory_refusals,
                "fragment_limit_drops": s.fragment_limit_drops, "bytes_beyond_window": s.bytes_beyond_window,
                "defrag": defrag_json(&s.defrag),
                "handoff": {"sent": s.handed_off, "dropped": s.handoff_dropped, "received": s.handed_in},
                "unsupported_link": s.unsupported_link,
            })
        };
        let plugins: serde_json::Map<String, serde_json::Value> = self
            .plugins
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "events": p.events, "records": p.records, "failures": p.failures, "overruns": p.overruns,
                        "generations": p.generations, "retired": p.retired, "drained_flows": p.drained_flows,
                        "records_lost": p.records_lost, "slow_constructors": p.slow_constructors,
                    }),
                )
            })
            .collect();
        let mut v = engine(&self.stats);
        v["cores"] = serde_json::Value::Array(self.per_core.iter().map(engine).collect());
        v["plugins"] = serde_json::Value::Object(plugins);
        v["retained_images"] = self.retained_images.into();
        v["test_loads"] = serde_json::json!({
            "server": self.test_loads.server,
            "own_process": self.test_loads.own_process,
        });
        v["load_failures"] = serde_json::json!(self.load_failures);
        v["capture_error"] =
            serde_json::json!(self.capture_error.as_ref().map(ToString::to_string));
        v["corrupt_slots"] = self.corrupt_slots.into();
        v["interrupted"] = self.interrupted.into();
        v["seconds"] = serde_json::json!(self.elapsed.as_secs_f64());
        v["reload_latency_ms"] = serde_json::json!(self
            .reload_latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect::<Vec<_>>());
        v["latency_ns"] = self
            .latency
            .as_ref()
            .map_or(serde_json::Value::Null, latency_json);
        v
    }
}

/// Runs the source through one worker per core until the input ends or `stop` is set;
/// `progress` gets every core's counters about once a second.
pub fn run(
    opts: &RunOptions,
    stop: &Arc<AtomicBool>,
    mut progress: impl FnMut(&[CoreSnapshot]),
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    if let Source::Pcap(path) = &opts.source {
        // Open once here so that a bad file is reported before any thread starts.
        CaptureFile::open(path).map_err(SourceError::from)?;
    }
    let plugins = Arc::new(
        PluginSet::open(&opts.plugins, &opts.log_dir, opts.drain_timeout, opts.watch)?
            .with_budget(opts.budget),
    );
    // A shm region has one ring per worker: its ring count decides.
    let mut shm_rings: Vec<Option<ShmRing>> = match &opts.source {
        Source::Shm(name) => ShmRegion::open(name)
            .map_err(SourceError::from)?
            .into_rings()
            .into_iter()
            .map(Some)
            .collect(),
        _ => Vec::new(),
    };
    let cores = match &opts.source {
        Source::Shm(_) => shm_rings.len(),
        // One ring, one core.
        Source::Netmap(p) if p.ring.is_some() => 1,
        _ => opts.cores.max(1),
    };
    if let Source::Netmap(p) = &opts.source {
        // Fails here, with the reason and the fix, when netmap is not there.
        drop(NetmapPort::open_spec(p.clone()).map_err(SourceError::from)?);
    }
    // A capture replay has every core reassemble every datagram; live sources hand a
    // datagram to the core of its flow.
    let mut handoffs: Vec<Option<_>> =
        if cores > 1 && matches!(opts.source, Source::Shm(_) | Source::AfPacket(_)) {
            worker::handoff::ports(cores)
                .into_iter()
                .map(Some)
                .collect()
        } else {
            Vec::new()
        };
    let counters: Vec<Arc<CoreCounters>> = (0..cores)
        .map(|_| Arc::new(CoreCounters::default()))
        .collect();
    // One AF_PACKET fanout group per run.
    let group = (std::process::id() & 0xffff) as u16;
    let joined = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<Result<CoreReport, WorkerError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores)
            .map(|core| {
                let spec = WorkerSpec {
                    core,
                    cores,
                    engine: opts.engine.clone(),
                    plugins: Arc::clone(&plugins),
                    stop: Arc::clone(stop),
                    counters: Arc::clone(&counters[core]),
                    pin: cores > 1,
                    latency_sample: opts.latency_sample,
                    latency_warmup: opts.latency_warmup,
                    handoff: handoffs.get_mut(core).and_then(Option::take),
                };
                let source = opts.source.clone();
                let joined = Arc::clone(&joined);
                let shm_ring = shm_rings.get_mut(core).and_then(Option::take);
                let (loops, pace) = (opts.loops, opts.pace);
                std::thread::Builder::new()
                    .name(format!("flowpeek-core{core}"))
                    .spawn_scoped(scope, move || {
                        let input = match source {
                            Source::Pcap(path) => Input::Pcap(PcapShard { path, loops, pace }),
                            Source::AfPacket(ifname) => Input::AfPacket {
                                ifname,
                                group,
                                joined,
                            },
                            Source::Netmap(mut p) => {
                                if cores > 1 {
                                    p.ring = Some(core as u16);
                                }
                                Input::Netmap(p)
                            }
                            Source::Shm(_) => Input::Shm(shm_ring),
                        };
                        worker::run_input(spec, input)
                    })
            })
            .collect();
        if handles.iter().any(Result::is_err) {
            // The workers that did start stop at once; the error is reported below.
            stop.store(true, Ordering::Relaxed);
        }
        let mut last = Instant::now();
        while handles.iter().flatten().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let snap: Vec<CoreSnapshot> = counters
                    .iter()
                    .map(|c| CoreSnapshot {
                        packets: c.packets.load(Ordering::Relaxed),
                        bytes: c.bytes.load(Ordering::Relaxed),
                        flows_live: c.flows_live.load(Ordering::Relaxed),
                        events: c.events.load(Ordering::Relaxed),
                        drops: c.drops.load(Ordering::Relaxed),
                    })
                    .collect();
                progress(&snap);
            }
        }
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or(Err(WorkerError::Panicked)),
                Err(e) => Err(WorkerError::Spawn(e)),
            })
            .collect()
    });
    let mut stats = Stats::default();
    let mut per_core = Vec::new();
    let mut plugin_stats: std::collections::BTreeMap<String, PluginStats> = Default::default();
    let mut load_failures = Vec::new();
    let mut reload_latencies = Vec::new();
    let mut capture_error = None;
    let mut corrupt_slots = 0;
    let mut latency: Option<hdrhistogram::Histogram<u64>> = None;
    for (core, r) in results.into_iter().enumerate() {
        let r = r.map_err(|source| RunError::Worker { core, source })?;
        if let Some(h) = &r.latency {
            match latency.as_mut() {
                // Same bounds on every core: adding cannot fail.
                Some(total) => {
                    let _ = total.add(h);
                }
                None => latency = Some(h.clone()),
            }
        }
        stats.merge(&r.stats);
        corrupt_slots += r.corrupt_frames;
        // Any core's: a corrupt ring or a producer gone shows on the core that met it.
        if capture_error.is_none() {
            capture_error = r.source_error;
        }
        per_core.push(r.stats);
        for (name, p) in r.plugins {
            // Every core loads each file: generations count loads, not instances.
            let total = plugin_stats.entry(name).or_default();
            let (generations, retired) = (
                total.generations.max(p.generations),
                total.retired.max(p.retired),
            );
            total.add(&p);
            total.generations = generations;
            total.retired = retired;
        }
        if core == 0 {
            load_failures = r.load_failures;
            reload_latencies = r.reload_latencies;
        }
    }
    Ok(RunReport {
        stats,
        per_core,
        plugins: plugin_stats,
        retained_images: crate::plugin::load::retained_images(),
        test_loads: crate::plugin::probe::test_loads(),
        load_failures,
        capture_error,
        corrupt_slots,
        interrupted: stop.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        reload_latencies,
        latency,
    })
}

/// Writes the stats JSON to `path`.
pub fn write_stats(path: &Path, report: &RunReport) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(&report.to_json())?;
    text.push(b'\n');
    std::fs::write(path, text)
}
