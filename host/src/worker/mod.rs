//! One thread per core: each pinned to its CPU, with its own engine and its own plugin
//! instances, sharing nothing on the packet path.
//!
//! Owns: the per-core loop (take a batch from the source, hand it to the engine, close the
//! batch, apply pending plugin generations at the safe point, publish counters) and the
//! sharding of a capture by the symmetric flow hash, so that both directions of a
//! connection meet on one core.
//!
//! Must not: block on anything but its source, allocate or lock per packet. Counters are
//! published once per batch with relaxed atomic stores.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flow::{symmetric_hash, Config, EndReason, Engine, Stats};
use crate::io::pcap::CaptureFile;
use crate::io::ring::Step;
use crate::plugin::{PluginSet, PluginStats};
use crate::wire::{self, Decoded};

/// Empty polls of a shm ring (about a millisecond of spinning) before an idle core starts
/// napping 20 µs between polls.
const IDLE_SPINS_BEFORE_NAP: u32 = 1 << 16;

/// Packets handed to the engine between two safe points.
pub const BATCH: usize = 32;

/// Counters a worker publishes once per batch, read by the status line.
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
    pub source_error: Option<String>,
    /// Stamp-to-callback-return latency of the sampled packets, in ns (shm sources with
    /// [`WorkerSpec::latency_sample`] > 0 only).
    pub latency: Option<hdrhistogram::Histogram<u64>>,
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

/// Which core handles a decoded frame: TCP by the symmetric hash of its 4-tuple; anything
/// else (counted only) by core 0.
#[inline]
pub fn shard_of(decoded: &Option<Result<Decoded<'_>, wire::DecodeError>>, cores: usize) -> usize {
    match decoded {
        Some(Ok(Decoded::Tcp(seg))) if cores > 1 => {
            (symmetric_hash(seg.src, seg.src_port, seg.dst, seg.dst_port) % cores as u64) as usize
        }
        _ => 0,
    }
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
}

/// What every worker starts with: this core's plugin instances and its engine.
fn start_core(spec: &WorkerSpec) -> Result<(crate::plugin::PluginHost, Engine), String> {
    let (host, monitors) = spec
        .plugins
        .host(spec.core as u32)
        .map_err(|e| e.to_string())?;
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
    mut host: crate::plugin::PluginHost,
    source_error: Option<String>,
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
        latency,
    }
}

fn publish(counters: &CoreCounters, s: &Stats) {
    counters.packets.store(s.packets, Ordering::Relaxed);
    counters.bytes.store(s.bytes, Ordering::Relaxed);
    counters.flows_live.store(s.flows_live, Ordering::Relaxed);
    counters.events.store(s.events, Ordering::Relaxed);
}

/// Runs one core over its shard of a capture; returns what it did.
pub fn run_pcap(spec: WorkerSpec, shard: PcapShard) -> Result<CoreReport, String> {
    if spec.pin {
        pin_to_cpu(spec.core);
    }
    let capture = CaptureFile::open(&shard.path).map_err(|e| e.to_string())?;
    let (mut host, mut engine) = start_core(&spec)?;
    // Looping shifts each pass after the previous one; a single pass needs no extra read.
    let shift_per_loop = if shard.loops > 1 {
        let (first, last) = time_span(&capture);
        last.saturating_sub(first) + 1_000_000_000
    } else {
        0
    };
    let started = Instant::now();
    let mut source_error = None;
    let mut seen: u64 = 0;
    let mut in_batch = 0;
    'outer: for pass in 0..shard.loops.max(1) {
        let shift = shift_per_loop * u64::from(pass);
        for pkt in capture.packets() {
            let p = match pkt {
                Ok(p) => p,
                Err(e) => {
                    source_error = Some(e.to_string());
                    break;
                }
            };
            let ts = p.ts_nanos + shift;
            seen += 1;
            let decoded = p.link.map(|l| wire::decode(l, p.data));
            if shard_of(&decoded, spec.cores) != spec.core {
                engine.observe_time(ts);
                continue;
            }
            engine.on_decoded(&decoded, p.data, ts);
            in_batch += 1;
            if in_batch < BATCH {
                continue;
            }
            in_batch = 0;
            engine.end_batch();
            // The safe point: new plugin generations take over between batches.
            host.poll(&mut engine);
            publish(&spec.counters, engine.stats());
            if spec.stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            if shard.pace > 0 {
                let due = Duration::from_secs_f64(seen as f64 / shard.pace as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        engine.end_batch();
        host.poll(&mut engine);
    }
    Ok(end_core(&spec, engine, host, source_error, None))
}

/// Wall-clock time in ns (live ports run on arrival time; read once per batch).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs one core on a live interface: its own AF_PACKET socket, in a fanout group with the
/// other cores (symmetric, so both directions of a flow come to one socket).
pub fn run_afpacket(spec: WorkerSpec, ifname: &str, group: u16) -> Result<CoreReport, String> {
    use crate::io::afpacket::{AfPacketSocket, FanoutGroup, FanoutMode, RingConfig};
    if spec.pin {
        pin_to_cpu(spec.core);
    }
    let fanout = (spec.cores > 1).then_some(FanoutGroup {
        id: group,
        mode: FanoutMode::Symmetric,
    });
    let mut sock =
        AfPacketSocket::open(ifname, fanout, RingConfig::default()).map_err(|e| e.to_string())?;
    let link = sock.link_type();
    let (mut host, mut engine) = start_core(&spec)?;
    let mut last_stats = Instant::now();
    let mut source_error = None;
    while !spec.stop.load(Ordering::Relaxed) {
        let got = sock.poll_batch(Duration::from_millis(100), |frame, ts| {
            engine.on_frame(link, frame, ts)
        });
        match got {
            // Idle: timers and idle expiry still run, on wall time.
            Ok(0) => engine.advance(wall_ns()),
            Ok(_) => engine.end_batch(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                source_error = Some(format!("{ifname}: {e}"));
                break;
            }
        }
        host.poll(&mut engine);
        publish(&spec.counters, engine.stats());
        if last_stats.elapsed() >= Duration::from_secs(1) {
            last_stats = Instant::now();
            if let Ok(st) = sock.stats() {
                spec.counters.drops.store(st.drops, Ordering::Relaxed);
            }
        }
    }
    Ok(end_core(&spec, engine, host, source_error, None))
}

/// Runs one core on one ring of a shared-memory region (the netmap memory layout, filled by
/// another process): packets are stamped with the wall clock once per batch.
pub fn run_shm(spec: WorkerSpec, mut ring: crate::io::shm::ShmRing) -> Result<CoreReport, String> {
    use crate::io::shm::ShmError;
    if spec.pin {
        pin_to_cpu(spec.core);
    }
    let (mut host, mut engine) = start_core(&spec)?;
    ring.attach();
    let link = Some(crate::wire::LinkType::Ethernet);
    let mut source_error = None;
    let mut idle_spins = 0u32;
    let mut batches = 0u64;
    // The clock is read at most once per batch, and only every 256 packets while packets
    // stream in small batches: a vDSO clock read costs as much as processing a packet.
    let mut now = wall_ns();
    let mut since_clock = 0usize;
    let sample = spec.latency_sample;
    let mut countdown = sample;
    let mut latency = (sample > 0).then(latency_histogram);
    let mut warm_until = 0u64;
    while !spec.stop.load(Ordering::Relaxed) {
        // Idle: poll the ring's tail (one atomic load) and spin, as netmap's pkt-gen does;
        // every 1024 empty polls the full path runs (timers, producer liveness), and after
        // a long idle stretch the core naps between polls.
        if idle_spins > 0 && idle_spins % 1024 != 0 && matches!(ring.available(), Ok(0)) {
            idle_spins += 1;
            if idle_spins > IDLE_SPINS_BEFORE_NAP {
                std::thread::sleep(Duration::from_micros(20));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        if since_clock >= 256 {
            now = wall_ns();
            since_clock = 0;
        }
        let got = if sample == 0 && engine.prefetch_wanted() {
            // A big flow table: overlap the cache misses of the next few packets.
            ring.rx_batch_lookahead(|step| match step {
                Step::Far(f) => engine.prefetch_index(link, f),
                Step::Near(f) => engine.prefetch_flow(link, f),
                Step::Frame(f, _) => engine.on_frame(link, f, now),
            })
        } else if sample == 0 {
            ring.rx_batch(|frame| engine.on_frame(link, frame, now))
        } else {
            ring.rx_batch_stamped(|frame, stamp| {
                engine.on_frame(link, frame, now);
                countdown -= 1;
                if countdown == 0 {
                    countdown = sample;
                    // After on_frame returned: every plugin callback for this packet ran.
                    // The first `latency_warmup` ns of stamps are warm-up (the flow table,
                    // index and buffers grow to the working set) and are not recorded.
                    if stamp != 0 {
                        if warm_until == 0 {
                            warm_until = stamp.saturating_add(spec.latency_warmup);
                        }
                        if stamp >= warm_until {
                            let t = crate::io::shm::monotonic_ns();
                            if let Some(h) = latency.as_mut() {
                                h.saturating_record(t.saturating_sub(stamp));
                            }
                        }
                    }
                }
            })
        };
        match got {
            Ok(0) => {
                now = wall_ns();
                since_clock = 0;
                engine.advance(now);
                host.poll(&mut engine);
                idle_spins += 1;
                if idle_spins > IDLE_SPINS_BEFORE_NAP {
                    std::thread::sleep(Duration::from_micros(20));
                } else {
                    std::hint::spin_loop();
                }
            }
            Ok(n) => {
                idle_spins = 0;
                since_clock += n;
                engine.end_batch();
            }
            Err(ShmError::ProducerExited { .. }) => break,
            Err(e) => {
                source_error = Some(e.to_string());
                break;
            }
        }
        batches += 1;
        // The reload safe point and the counters, every 64 batches (a batch can be a
        // handful of packets at moderate rates: per-batch work is per-packet work then).
        if batches % 64 == 0 {
            host.poll(&mut engine);
            publish(&spec.counters, engine.stats());
            spec.counters
                .drops
                .store(ring.region().full_count(), Ordering::Relaxed);
        }
    }
    spec.counters
        .drops
        .store(ring.region().full_count(), Ordering::Relaxed);
    Ok(end_core(&spec, engine, host, source_error, latency))
}

/// Runs one core on a netmap port: `netmap:IF-K` (hardware ring K, one per core) or all
/// rings of `netmap:IF` on a single core. rxsync/poll with a timeout, so an idle core still
/// runs its timers.
pub fn run_netmap(
    spec: WorkerSpec,
    port: crate::io::netmap::PortSpec,
) -> Result<CoreReport, String> {
    use crate::io::netmap::NetmapPort;
    if spec.pin {
        pin_to_cpu(spec.core);
    }
    let mut port = NetmapPort::open_spec(port).map_err(|e| e.to_string())?;
    let rings: Vec<usize> = port.rings().to_vec();
    let (mut host, mut engine) = start_core(&spec)?;
    let link = Some(crate::wire::LinkType::Ethernet);
    let mut source_error = None;
    while !spec.stop.load(Ordering::Relaxed) {
        if let Err(e) = port.poll(Duration::from_millis(100)) {
            source_error = Some(e.to_string());
            break;
        }
        let now = wall_ns();
        let mut got = 0;
        for &r in &rings {
            match port.rx_batch(r, |frame| engine.on_frame(link, frame, now)) {
                Ok(n) => got += n,
                Err(e) => {
                    source_error = Some(e.to_string());
                    break;
                }
            }
        }
        if source_error.is_some() {
            break;
        }
        if got == 0 {
            engine.advance(now);
        } else {
            engine.end_batch();
        }
        host.poll(&mut engine);
        publish(&spec.counters, engine.stats());
    }
    Ok(end_core(&spec, engine, host, source_error, None))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Both directions of every flow land on the same core, for any number of cores.
    #[test]
    fn both_directions_meet_on_one_core() {
        let mut frames = Vec::new();
        for i in 0..500u32 {
            let a: IpAddr = format!("10.{}.{}.{}", i % 7, i % 11, i % 13)
                .parse()
                .unwrap();
            let b: IpAddr = format!("192.168.{}.{}", i % 5, i % 17).parse().unwrap();
            let (pa, pb) = (1024 + (i * 7919) as u16 % 50000, 80 + (i % 3) as u16);
            frames.push((a, pa, b, pb));
        }
        for cores in [1usize, 2, 4, 7] {
            let mut used = vec![0u32; cores];
            for &(a, pa, b, pb) in &frames {
                let one = (symmetric_hash(a, pa, b, pb) % cores as u64) as usize;
                let other = (symmetric_hash(b, pb, a, pa) % cores as u64) as usize;
                assert_eq!(one, other, "{a}:{pa} <-> {b}:{pb} on {cores} cores");
                used[one] += 1;
            }
            // The hash spreads flows: every core gets some.
            assert!(used.iter().all(|&n| n > 0), "{cores} cores: {used:?}");
        }
    }
}
