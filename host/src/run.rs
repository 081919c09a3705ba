//! `flowpeek run`: a packet source, the engine, and the plugins of a directory, with hot
//! reload at the safe point between batches, per-plugin record logs, and a stats summary.
//!
//! Sources today: `pcap:FILE` (pcap or pcapng), optionally paced (`--pace`) and looped
//! (`--loop`, each pass shifted in time after the previous one so flows do not collide).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::flow::{Config, EndReason, Engine, Stats};
use crate::io::pcap::{CaptureError, CaptureFile};
use crate::plugin::{HostError, PluginHost, PluginStats};
use crate::streams::BATCH;

/// Where packets come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A capture file.
    Pcap(PathBuf),
}

/// Why a `--source` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A kind this build does not have yet.
    #[error("source {0:?} is not available in this build: the netmap, shm and afpacket ports are not implemented yet; use pcap:FILE")]
    NotYet(String),
    /// Not KIND:ARG.
    #[error("source {0:?} is not of the form KIND:ARG (e.g. pcap:trace.pcap)")]
    Syntax(String),
}

impl std::str::FromStr for Source {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Source, SourceError> {
        match s.split_once(':') {
            Some(("pcap", path)) if !path.is_empty() => Ok(Source::Pcap(path.into())),
            Some(("netmap" | "shm" | "afpacket", _)) => Err(SourceError::NotYet(s.into())),
            _ => Err(SourceError::Syntax(s.into())),
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
    /// Engine settings.
    pub engine: Config,
    /// Packets per second (0: as fast as possible).
    pub pace: u64,
    /// Passes over the capture.
    pub loops: u32,
    /// How long an old generation keeps its flows after a reload (ns of packet time).
    pub drain_timeout: u64,
    /// Watch the plugin directory for changes.
    pub watch: bool,
}

/// Why a run failed before or while it ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The capture.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The plugin directory.
    #[error(transparent)]
    Plugins(#[from] HostError),
}

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    /// Engine counters.
    pub stats: Stats,
    /// Per plugin.
    pub plugins: std::collections::BTreeMap<String, PluginStats>,
    /// Library images loaded and retained.
    pub retained_images: u64,
    /// Plugin files that failed to load.
    pub load_failures: Vec<String>,
    /// A capture error that ended the input early (everything before it was processed).
    pub capture_error: Option<String>,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
    /// Wall time.
    pub elapsed: Duration,
    /// Per reload: directory event to the new generation taking traffic.
    pub reload_latencies: Vec<Duration>,
}

impl RunReport {
    /// The summary as JSON (for `--stats`).
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let plugins: serde_json::Map<String, serde_json::Value> = self
            .plugins
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "events": p.events, "records": p.records, "failures": p.failures,
                        "generations": p.generations, "retired": p.retired, "drained_flows": p.drained_flows,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "packets": s.packets, "bytes": s.bytes, "malformed": s.malformed, "not_tcp": s.not_tcp,
            "ip_fragments": s.ip_fragments, "orphans": s.orphans, "flows": s.flows_created,
            "flows_evicted": s.flows_evicted, "flows_timed_out": s.flows_timed_out, "events": s.events,
            "plugins": plugins, "retained_images": self.retained_images,
            "load_failures": self.load_failures, "capture_error": self.capture_error,
            "interrupted": self.interrupted, "seconds": self.elapsed.as_secs_f64(),
            "reload_latency_ms": self.reload_latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
        })
    }
}

/// Runs the source through the engine and the plugins until the input ends or `stop` is set.
pub fn run(
    opts: &RunOptions,
    stop: &Arc<AtomicBool>,
    mut progress: impl FnMut(&Stats),
) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let Source::Pcap(path) = &opts.source;
    let capture = CaptureFile::open(path)?;
    let (mut host, monitors) = PluginHost::open(
        &opts.plugins,
        &opts.log_dir,
        0,
        opts.drain_timeout,
        opts.watch,
    )?;
    let mut engine = Engine::new(opts.engine.clone(), monitors);
    let (first, last) = time_span(&capture);
    let shift_per_loop = last.saturating_sub(first) + 1_000_000_000;
    let mut capture_error = None;
    let mut sent: u64 = 0;
    let mut last_progress = Instant::now();
    'outer: for pass in 0..opts.loops.max(1) {
        let shift = shift_per_loop * u64::from(pass);
        let mut in_batch = 0;
        for pkt in capture.packets() {
            let p = match pkt {
                Ok(p) => p,
                Err(e) => {
                    capture_error = Some(e.to_string());
                    break;
                }
            };
            engine.on_frame(p.link, p.data, p.ts_nanos + shift);
            sent += 1;
            in_batch += 1;
            if in_batch < BATCH {
                continue;
            }
            in_batch = 0;
            engine.end_batch();
            // The safe point: new generations take over between batches.
            host.poll(&mut engine);
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            if opts.pace > 0 {
                let due = Duration::from_secs_f64(sent as f64 / opts.pace as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                progress(engine.stats());
            }
        }
        engine.end_batch();
        host.poll(&mut engine);
    }
    let interrupted = stop.load(Ordering::Relaxed);
    engine.finish(if interrupted {
        EndReason::Shutdown
    } else {
        EndReason::Eof
    });
    host.shutdown(&mut engine);
    host.flush();
    Ok(RunReport {
        stats: engine.stats().clone(),
        plugins: host.stats(),
        retained_images: crate::plugin::load::retained_images(),
        load_failures: host.failures.clone(),
        capture_error,
        interrupted,
        elapsed: started.elapsed(),
        reload_latencies: host.reload_latencies.clone(),
    })
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

/// Writes the stats JSON to `path`.
pub fn write_stats(path: &Path, report: &RunReport) -> std::io::Result<()> {
    let mut text = serde_json::to_vec_pretty(&report.to_json())?;
    text.push(b'\n');
    std::fs::write(path, text)
}
