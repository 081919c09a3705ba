//! `flowpeek-bench run`: the generator and a consumer as separate, pinned processes.
//!
//! The generator (`flowpeek-bench gen`) runs on the last CPU, the consumer (`flowpeek run`,
//! or the null consumer `flowpeek-bench null`) on the others (all on CPU 0 of a one-CPU
//! machine). `flowpeek run` with more than one core pins worker k to CPU k itself, so with
//! N workers on an N-CPU machine one worker shares its CPU with the generator.
//!
//! What is measured, per run:
//! - per core: packets/s and bits/s (frame bytes, no preamble or gap), drops by cause: ring
//!   full (frames that found their ring full; the generator waits and pushes the same frame
//!   again, so streams stay whole: on a NIC they would have been dropped), engine (flows
//!   evicted, receive-buffer refusals), plugin failures;
//! - CPU cycles per packet: `perf stat -e cycles` of the consumer when the PMU is there,
//!   else the consumer's CPU time (user + sys from wait4) × the nominal "cpu MHz" of
//!   /proc/cpuinfo (the report says which);
//! - latency from the generator's push (a CLOCK_MONOTONIC stamp in the slot) to the return
//!   of the last plugin callback, every Nth packet, as p50/p99/p99.9/max;
//! - memory per flow: the consumer's peak RSS (VmHWM) divided by the concurrent flows
//!   (includes the fixed cost of the process: compare two flow counts for the marginal cost).
// The crate denies unsafe code; this module is the exception: sched_getaffinity, and
// sched_setaffinity in pre_exec, wait4 and kill on the children (libc, no safe std
// equivalent). Each block has its `// SAFETY:`.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use crate::gen::imix;

/// Arguments of `flowpeek-bench run`.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Frame size in bytes (54..=1514).
    #[arg(long, default_value_t = 64, conflicts_with = "imix")]
    pub size: usize,
    /// The IMIX size mix (64 ×7, 576 ×4, 1500 ×1) instead of one size.
    #[arg(long)]
    pub imix: bool,
    /// Concurrent connections.
    #[arg(long, default_value_t = 10_000)]
    pub flows: u32,
    /// flowpeek worker cores (= shm rings).
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// What the consumer loads: noop (the default: the bundled no-op PktIn plugin),
    /// streamhash (SHA-256 + CRC-32 of every byte both ways), streamhash-crc32,
    /// streamhash-xxh3 (the same reading with cheaper hashes), none, or a plugin directory.
    /// Bundled plugins are copied from the binaries' directory (`lib<name>.so`).
    #[arg(long, conflicts_with = "no_plugins")]
    pub plugins: Option<Plugins>,
    /// No plugins: the engine-only path.
    #[arg(long)]
    pub no_plugins: bool,
    /// Seconds of traffic (more than 0).
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    pub duration: f64,
    /// Packets per second offered (0: flat out).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Every Nth packet, measure push-to-callback latency (0: off).
    #[arg(long, default_value_t = 64)]
    pub latency_sample: u64,
    /// Slots per shm ring.
    #[arg(long, default_value_t = 8192)]
    pub slots: u32,
    /// Data segments per connection before it closes (0: endless, mid-stream).
    #[arg(long, default_value_t = 0)]
    pub conn_packets: u32,
    /// Measure the null consumer instead of flowpeek.
    #[arg(long)]
    pub null: bool,
    /// Skip the null-consumer run (no ratio).
    #[arg(long)]
    pub no_null: bool,
    /// Also search the highest rate with no ring-full event (binary search).
    #[arg(long)]
    pub zero_loss: bool,
    /// Steps of the zero-loss search (precision: the flat-out rate / 2^steps).
    #[arg(long, default_value_t = 6)]
    pub search_steps: u32,
    /// Seconds per zero-loss step.
    #[arg(long, default_value_t = 1.0)]
    pub search_duration: f64,
    /// Print JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Directory with the `flowpeek` and `flowpeek-bench` binaries and libnoop.so (default:
    /// the directory of this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// The frames of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Sizes {
    /// One size.
    Fixed(usize),
    /// The IMIX mix.
    Imix,
}

impl Sizes {
    /// "64" or "imix".
    pub fn label(&self) -> String {
        match self {
            Sizes::Fixed(n) => n.to_string(),
            Sizes::Imix => "imix".into(),
        }
    }

    /// Mean frame size in bytes.
    pub fn mean(&self) -> f64 {
        match self {
            Sizes::Fixed(n) => *n as f64,
            Sizes::Imix => {
                let m = imix();
                m.iter().sum::<usize>() as f64 / m.len() as f64
            }
        }
    }
}

impl std::str::FromStr for Sizes {
    type Err = String;
    fn from_str(s: &str) -> Result<Sizes, String> {
        if s.eq_ignore_ascii_case("imix") {
            return Ok(Sizes::Imix);
        }
        match s.parse::<usize>() {
            Ok(n) if (54..=1514).contains(&n) => Ok(Sizes::Fixed(n)),
            _ => Err(format!("{s:?}: expected a frame size 54..=1514 or imix")),
        }
    }
}

/// Which plugins the consumer loads.
#[derive(Clone, Debug, PartialEq)]
pub enum Plugins {
    /// None: the engine-only path.
    None,
    /// One bundled plugin with a configuration (see [`BUNDLED`]).
    Bundled(&'static Bundled),
    /// A directory.
    Dir(PathBuf),
}

/// A bundled plugin set-up `run` and `sweep` know by name.
#[derive(Debug, PartialEq, Eq)]
pub struct Bundled {
    /// The name on the command line.
    pub label: &'static str,
    /// The plugin (`lib<plugin>.so` in the binaries' directory).
    pub plugin: &'static str,
    /// Its `<plugin>.toml`.
    pub config: &'static str,
}

/// The bundled set-ups: the no-op PktIn monitor, and streamhash reading every byte of both
/// directions with its three hashes.
pub const BUNDLED: &[Bundled] = &[
    Bundled {
        label: "noop",
        plugin: "noop",
        config: "",
    },
    Bundled {
        label: "streamhash",
        plugin: "streamhash",
        config: "buffer = 65536\n",
    },
    Bundled {
        label: "streamhash-crc32",
        plugin: "streamhash",
        config: "buffer = 65536\nhash = \"crc32\"\n",
    },
    Bundled {
        label: "streamhash-xxh3",
        plugin: "streamhash",
        config: "buffer = 65536\nhash = \"xxh3\"\n",
    },
];

impl Plugins {
    /// The no-op plugin.
    pub fn noop() -> Plugins {
        Plugins::Bundled(&BUNDLED[0])
    }

    /// "none", a bundled set-up's name, or the directory.
    pub fn label(&self) -> String {
        match self {
            Plugins::None => "none".into(),
            Plugins::Bundled(b) => b.label.into(),
            Plugins::Dir(d) => d.display().to_string(),
        }
    }
}

impl std::str::FromStr for Plugins {
    type Err = String;
    fn from_str(s: &str) -> Result<Plugins, String> {
        if s == "none" {
            return Ok(Plugins::None);
        }
        if let Some(b) = BUNDLED.iter().find(|b| b.label == s) {
            return Ok(Plugins::Bundled(b));
        }
        if std::path::Path::new(s).is_dir() {
            return Ok(Plugins::Dir(s.into()));
        }
        Err(format!(
            "{s:?} is neither a directory nor one of: none, {}",
            BUNDLED
                .iter()
                .map(|b| b.label)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// The consumer process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumer {
    /// `flowpeek run --source shm:NAME`.
    Flowpeek,
    /// `flowpeek-bench null --source shm:NAME`: only releases slots.
    Null,
}

/// One measurement's settings.
#[derive(Clone, Debug)]
pub struct Point {
    /// Frame sizes.
    pub sizes: Sizes,
    /// Concurrent connections.
    pub flows: u32,
    /// Worker cores (= rings).
    pub cores: usize,
    /// Plugins.
    pub plugins: Plugins,
    /// Which consumer.
    pub consumer: Consumer,
    /// Seconds of traffic.
    pub duration: f64,
    /// Offered packets/s (0: flat out).
    pub rate: u64,
    /// Latency sampling (every Nth packet, 0: off).
    pub latency_sample: u64,
    /// Slots per ring.
    pub slots: u32,
    /// Data segments per connection (0: endless).
    pub conn_packets: u32,
}

impl Point {
    /// One line describing the point.
    pub fn describe(&self) -> String {
        format!(
            "{} frames ({} B), {} flows, {} core(s), plugins {}, consumer {}, {}, {:.1} s",
            self.sizes.label(),
            self.sizes.mean().round(),
            self.flows,
            self.cores,
            self.plugins.label(),
            match self.consumer {
                Consumer::Flowpeek => "flowpeek",
                Consumer::Null => "null",
            },
            if self.rate == 0 {
                "flat out".to_string()
            } else {
                format!("{:.3} Mpps offered", self.rate as f64 / 1e6)
            },
            self.duration
        )
    }
}

/// Latency percentiles, ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// Samples.
    pub samples: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile (0 when the consumer did not report it).
    pub p90: u64,
    /// 95th percentile (0 when the consumer did not report it).
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    fn from_json(v: &Value) -> Option<Latency> {
        let g = |k: &str| v.get(k).and_then(Value::as_u64);
        Some(Latency {
            samples: g("samples")?,
            p50: g("p50")?,
            p90: g("p90").unwrap_or(0),
            p95: g("p95").unwrap_or(0),
            p99: g("p99")?,
            p999: g("p999")?,
            max: g("max")?,
        })
    }

    fn to_json(self) -> Value {
        json!({"samples": self.samples, "p50": self.p50, "p90": self.p90, "p95": self.p95,
               "p99": self.p99, "p999": self.p999, "max": self.max})
    }
}

/// One core's results.
#[derive(Clone, Debug, Default)]
pub struct CoreResult {
    /// Packets the consumer processed.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames that found this core's ring full at least once.
    pub ring_full_frames: u64,
    /// Push attempts refused by this core's full ring (the shm header's counter, per ring).
    pub ring_full_events: u64,
    /// Flows evicted because the table was full (engine).
    pub flows_evicted: u64,
    /// Receive buffers refused by the memory cap (engine).
    pub buffer_refusals: u64,
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// The settings.
    pub point: Point,
    /// The consumer's wall time.
    pub seconds: f64,
    /// Per core.
    pub cores: Vec<CoreResult>,
    /// Packets the generator pushed.
    pub offered: u64,
    /// The generator's wall time.
    pub gen_seconds: f64,
    /// Plugin failures (all plugins, all cores).
    pub plugin_failures: u64,
    /// Flows the engine created.
    pub flows_created: u64,
    /// Consumer CPU time, user + sys.
    pub cpu_seconds: f64,
    /// CPU cycles of the consumer (measured or estimated).
    pub cycles: f64,
    /// "perf" or "cpu-time×MHz".
    pub cycles_source: String,
    /// Latency percentiles, when sampled.
    pub latency: Option<Latency>,
    /// The consumer's peak RSS, KiB.
    pub rss_kib: u64,
    /// The CPUs: generator, consumer.
    pub placement: String,
}

impl Measurement {
    /// Packets over all cores.
    pub fn packets(&self) -> u64 {
        self.cores.iter().map(|c| c.packets).sum()
    }

    /// Bytes over all cores.
    pub fn bytes(&self) -> u64 {
        self.cores.iter().map(|c| c.bytes).sum()
    }

    /// Packets per second over all cores.
    pub fn pps(&self) -> f64 {
        self.packets() as f64 / self.seconds.max(1e-9)
    }

    /// Bits per second (frame bytes) over all cores.
    pub fn bps(&self) -> f64 {
        self.bytes() as f64 * 8.0 / self.seconds.max(1e-9)
    }

    /// Ring-full frames over all cores.
    pub fn ring_full_frames(&self) -> u64 {
        self.cores.iter().map(|c| c.ring_full_frames).sum()
    }

    /// Cycles per packet.
    pub fn cycles_per_packet(&self) -> f64 {
        self.cycles / (self.packets().max(1)) as f64
    }

    /// Peak RSS / concurrent flows, bytes.
    pub fn mem_per_flow(&self) -> f64 {
        self.rss_kib as f64 * 1024.0 / f64::from(self.point.flows.max(1))
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        let p = &self.point;
        json!({
            "size": p.sizes.label(), "mean_frame_bytes": p.sizes.mean(), "flows": p.flows,
            "cores": p.cores, "plugins": p.plugins.label(),
            "consumer": match p.consumer { Consumer::Flowpeek => "flowpeek", Consumer::Null => "null" },
            "rate_offered": p.rate, "duration": p.duration, "latency_sample": p.latency_sample,
            "seconds": self.seconds, "packets": self.packets(), "bytes": self.bytes(),
            "pps": self.pps(), "bps": self.bps(), "generator_sent": self.offered,
            "generator_seconds": self.gen_seconds,
            "per_core": self.cores.iter().map(|c| json!({
                "packets": c.packets, "bytes": c.bytes,
                "pps": c.packets as f64 / self.seconds.max(1e-9),
                "bps": c.bytes as f64 * 8.0 / self.seconds.max(1e-9),
                "drops": {"ring_full_frames": c.ring_full_frames, "ring_full_events": c.ring_full_events,
                          "engine_flows_evicted": c.flows_evicted, "engine_buffer_refusals": c.buffer_refusals},
            })).collect::<Vec<_>>(),
            "plugin_failures": self.plugin_failures, "flows_created": self.flows_created,
            "cpu_seconds": self.cpu_seconds, "cycles_per_packet": self.cycles_per_packet(),
            "cycles_source": self.cycles_source,
            "latency_ns": self.latency.map_or(Value::Null, Latency::to_json),
            "rss_kib": self.rss_kib, "mem_per_flow_bytes": self.mem_per_flow(),
            "placement": self.placement,
        })
    }
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "flowpeek-bench-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What every run of a session shares: binaries, plugin directories, the CPU plan.
#[derive(Debug)]
pub struct Env {
    /// Where `flowpeek`, `flowpeek-bench` and libnoop.so are.
    pub bin_dir: PathBuf,
    bundled: TempDir,
    empty: TempDir,
    work: TempDir,
    /// CPUs this process may use.
    pub cpus: Vec<usize>,
    /// Nominal MHz from /proc/cpuinfo.
    pub mhz: f64,
    /// `perf stat -e cycles` works here.
    pub perf: bool,
    /// Show the generator's per-second progress.
    pub progress: bool,
    runs: u64,
}

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn cpu_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn perf_cycles_work() -> bool {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "cycles", "--", "true"])
        .stdout(Stdio::null())
        .output()
        .map(|o| {
            let err = String::from_utf8_lossy(&o.stderr);
            o.status.success()
                && err
                    .lines()
                    .any(|l| l.contains(",cycles") && !l.starts_with('<'))
        })
        .unwrap_or(false)
}

impl Env {
    /// Finds the binaries and prepares the plugin directories.
    pub fn new(bin_dir: Option<PathBuf>, progress: bool) -> Result<Env, String> {
        let bin_dir = match bin_dir {
            Some(d) => d,
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this executable: {e}"))?
                .parent()
                .map(Path::to_path_buf)
                .ok_or("this executable has no directory")?,
        };
        for bin in ["flowpeek", "flowpeek-bench"] {
            if !bin_dir.join(bin).exists() {
                return Err(format!(
                    "{} not found; build it (cargo build --release --workspace) or pass --bin-dir",
                    bin_dir.join(bin).display()
                ));
            }
        }
        let io = |e: std::io::Error| format!("temporary directory: {e}");
        let bundled = TempDir::new("bundled").map_err(io)?;
        let empty = TempDir::new("empty").map_err(io)?;
        let work = TempDir::new("work").map_err(io)?;
        for d in [bundled.path(), empty.path()] {
            use std::os::unix::fs::PermissionsExt;
            // The plugin host refuses group- or world-writable directories.
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
        }
        Ok(Env {
            bin_dir,
            bundled,
            empty,
            work,
            cpus: allowed_cpus(),
            mhz: cpu_mhz(),
            perf: perf_cycles_work(),
            progress,
            runs: 0,
        })
    }

    fn plugin_dir(&self, p: &Plugins) -> Result<PathBuf, String> {
        Ok(match p {
            Plugins::None => self.empty.path().to_path_buf(),
            Plugins::Dir(d) => d.clone(),
            Plugins::Bundled(b) => {
                let dir = self.bundled.path().join(b.label);
                let dst = dir.join(format!("{}.so", b.plugin));
                if !dst.exists() {
                    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
                    std::fs::create_dir_all(&dir).map_err(io)?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                        .map_err(io)?;
                    std::fs::write(dir.join(format!("{}.toml", b.plugin)), b.config).map_err(io)?;
                    let src = self.bin_dir.join(format!("lib{}.so", b.plugin));
                    std::fs::copy(&src, &dst).map_err(|e| {
                        format!(
                            "{}: {e}; build it (cargo build --release --workspace) or pass --plugins DIR",
                            src.display()
                        )
                    })?;
                }
                dir
            }
        })
    }

    /// Generator CPU and consumer CPUs: the generator on the last allowed CPU, the consumer
    /// on the others (everything on one CPU if there is only one).
    pub fn plan(&self) -> (usize, Vec<usize>) {
        let last = *self.cpus.last().unwrap_or(&0);
        let rest: Vec<usize> = self.cpus.iter().copied().filter(|&c| c != last).collect();
        (last, if rest.is_empty() { vec![last] } else { rest })
    }
}

fn pin_command(cmd: &mut Command, cpus: Vec<usize>) {
    // SAFETY: the closure runs in the child between fork and exec; it only builds a cpu set
    // on the stack and makes one system call (async-signal-safe), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
}

/// Waits for `pid` (not with `Child::wait`): exit status, user+sys seconds, peak RSS KiB
/// (the larger of VmHWM, polled while it runs, and ru_maxrss). Kills it after `limit`.
fn wait_child(pid: u32, limit: Duration) -> Result<(i32, f64, u64), String> {
    let started = Instant::now();
    let mut hwm = 0u64;
    let pid_t = pid as libc::pid_t;
    loop {
        let mut status = 0i32;
        // SAFETY: a zeroed rusage is valid; wait4 writes status and rusage, both ours.
        let (rc, ru) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            let rc = libc::wait4(pid_t, &mut status, libc::WNOHANG, &mut ru);
            (rc, ru)
        };
        if rc == pid_t {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let cpu = secs(ru.ru_utime) + secs(ru.ru_stime);
            return Ok((status, cpu, hwm.max(ru.ru_maxrss as u64)));
        }
        if rc < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                hwm = hwm.max(kib);
            }
        }
        if started.elapsed() > limit {
            // SAFETY: kill sends a signal to our own child, which has not been reaped.
            unsafe { libc::kill(pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs one point: generator and consumer as pinned processes.
pub fn run_point(env: &mut Env, point: &Point) -> Result<Measurement, String> {
    env.runs += 1;
    let name = format!("fpbench-{}-{}", std::process::id(), env.runs);
    let shm_path = flowpeek::io::shm::ShmRegion::path_for(&name).map_err(|e| e.to_string())?;
    let (gen_cpu, consumer_cpus) = env.plan();
    let placement = format!(
        "generator on CPU {gen_cpu}, consumer on CPU {:?}{}",
        consumer_cpus,
        if point.consumer == Consumer::Flowpeek && point.cores > 1 {
            " (flowpeek pins worker k to CPU k itself)"
        } else {
            ""
        }
    );
    let bench = env.bin_dir.join("flowpeek-bench");
    let mut gen = Command::new(&bench);
    gen.arg("gen")
        .arg("--out")
        .arg(format!("shm:{name}"))
        .arg("--rings")
        .arg(point.cores.to_string())
        .arg("--slots")
        .arg(point.slots.to_string())
        .arg("--flows")
        .arg(point.flows.to_string())
        .arg("--conn-packets")
        .arg(point.conn_packets.to_string())
        .arg("--duration")
        .arg(point.duration.to_string())
        .arg("--rate")
        .arg(point.rate.to_string())
        .arg("--wait-consumer")
        .arg("30")
        .arg("--json")
        .stdout(Stdio::piped());
    match point.sizes {
        Sizes::Fixed(n) => gen.arg("--size").arg(n.to_string()),
        Sizes::Imix => gen.arg("--imix"),
    };
    if point.latency_sample == 0 {
        gen.arg("--no-stamp");
    }
    if !env.progress {
        gen.arg("--quiet");
    }
    pin_command(&mut gen, vec![gen_cpu]);
    let mut gen = gen
        .spawn()
        .map_err(|e| format!("{}: {e}", bench.display()))?;
    // The region exists once the generator has created it.
    let t0 = Instant::now();
    while !shm_path.exists() {
        if let Ok(Some(st)) = gen.try_wait() {
            return Err(format!(
                "the generator exited before creating the region: {st}"
            ));
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = gen.kill();
            return Err("the generator did not create its region in 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = env.work.path().join(format!("stats-{}.json", env.runs));
    let mut consumer = match point.consumer {
        Consumer::Flowpeek => {
            let mut c = Command::new(env.bin_dir.join("flowpeek"));
            c.arg("run")
                .arg("--source")
                .arg(format!("shm:{name}"))
                .arg("--plugins")
                .arg(env.plugin_dir(&point.plugins)?)
                .arg("--log-dir")
                .arg(env.work.path().join(format!("logs-{}", env.runs)))
                .arg("--stats")
                .arg(&stats)
                .arg("--no-watch")
                .arg("--quiet")
                .arg("--timeout")
                .arg("3600")
                .arg("--cores")
                .arg(point.cores.to_string())
                .arg("--latency-sample")
                .arg(point.latency_sample.to_string())
                // Warm-up left out of the histogram: a quarter of the run, at most 1 s.
                .arg("--latency-warmup-ms")
                .arg(((point.duration * 250.0) as u64).min(1000).to_string());
            c
        }
        Consumer::Null => {
            let mut c = Command::new(&bench);
            c.arg("null")
                .arg("--source")
                .arg(format!("shm:{name}"))
                .arg("--latency-sample")
                .arg(point.latency_sample.to_string())
                .arg("--json")
                .stdout(Stdio::piped());
            c
        }
    };
    pin_command(&mut consumer, consumer_cpus);
    let mut consumer = match consumer.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = gen.kill();
            let _ = gen.wait();
            let _ = std::fs::remove_file(&shm_path);
            return Err(format!("starting the consumer: {e}"));
        }
    };
    let perf_out = env.work.path().join(format!("perf-{}.txt", env.runs));
    let perf = if env.perf {
        Command::new("perf")
            .args(["stat", "-x,", "-e", "cycles", "-o"])
            .arg(&perf_out)
            .arg("-p")
            .arg(consumer.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    } else {
        None
    };
    let limit = Duration::from_secs_f64(point.duration + 60.0);
    let waited = wait_child(consumer.id(), limit);
    let gen_out = gen.wait_with_output();
    let _ = std::fs::remove_file(&shm_path);
    let (status, cpu_seconds, rss_kib) = waited?;
    let gen_out = gen_out.map_err(|e| format!("the generator: {e}"))?;
    if !gen_out.status.success() {
        return Err(format!("the generator failed: {}", gen_out.status));
    }
    let g: Value = serde_json::from_slice(&gen_out.stdout)
        .map_err(|e| format!("the generator's JSON summary: {e}"))?;
    if status != 0 {
        return Err(format!(
            "the consumer failed (wait status {status}); run it by hand: {}",
            point.describe()
        ));
    }
    let c: Value = match point.consumer {
        Consumer::Flowpeek => {
            let text = std::fs::read(&stats).map_err(|e| format!("{}: {e}", stats.display()))?;
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", stats.display()))?
        }
        Consumer::Null => {
            let mut text = Vec::new();
            if let Some(mut out) = consumer.stdout.take() {
                let _ = out.read_to_end(&mut text);
            }
            serde_json::from_slice(&text).map_err(|e| format!("the null consumer's JSON: {e}"))?
        }
    };
    let mut cycles = cpu_seconds * env.mhz * 1e6;
    let mut cycles_source = format!("cpu-time×{:.0}MHz", env.mhz);
    if let Some(mut p) = perf {
        // perf stat -p ends when its target exits.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = p.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = p.kill();
        let _ = p.wait();
        if let Some(n) = std::fs::read_to_string(&perf_out).ok().and_then(|t| {
            t.lines()
                .find(|l| l.contains(",cycles"))
                .and_then(|l| l.split(',').next())
                .and_then(|v| v.parse::<f64>().ok())
        }) {
            cycles = n;
            cycles_source = "perf".into();
        }
    }
    let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let per_ring = |k: &str| -> Vec<u64> {
        g.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let (full_frames, full_events) = (per_ring("ring_full_frames"), per_ring("ring_full_events"));
    let cores: Vec<CoreResult> = c
        .get("cores")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(k, s)| CoreResult {
                    packets: u(s, "packets"),
                    bytes: u(s, "bytes"),
                    ring_full_frames: full_frames.get(k).copied().unwrap_or(0),
                    ring_full_events: full_events.get(k).copied().unwrap_or(0),
                    flows_evicted: u(s, "flows_evicted"),
                    buffer_refusals: u(s, "buffer_memory_refusals"),
                })
                .collect()
        })
        .unwrap_or_default();
    let plugin_failures = c
        .get("plugins")
        .and_then(Value::as_object)
        .map(|m| m.values().map(|p| u(p, "failures")).sum())
        .unwrap_or(0);
    Ok(Measurement {
        point: point.clone(),
        seconds: c.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
        cores,
        offered: u(&g, "sent"),
        gen_seconds: g.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
        plugin_failures,
        flows_created: u(&c, "flows"),
        cpu_seconds,
        cycles,
        cycles_source,
        latency: c.get("latency_ns").and_then(Latency::from_json),
        rss_kib,
        placement,
    })
}

/// The zero-loss search's result.
#[derive(Clone, Debug)]
pub struct ZeroLoss {
    /// Highest rate that passed (packets/s; 0 if none did).
    pub pps: u64,
    /// The interval left: the true limit is in [pps, pps + precision).
    pub precision: u64,
    /// (rate, ring-full frames) per step.
    pub steps: Vec<(u64, u64)>,
    /// Seconds per step.
    pub step_seconds: f64,
}

/// Binary search on the offered rate for the highest with no ring-full frame, between 0
/// and `ceiling`, `steps` runs of `duration` seconds.
pub fn zero_loss(
    env: &mut Env,
    base: &Point,
    ceiling: f64,
    steps: u32,
    duration: f64,
) -> Result<ZeroLoss, String> {
    let (mut lo, mut hi) = (0u64, ceiling.max(1.0) as u64);
    let mut log = Vec::new();
    for step in 0..steps {
        let mid = (lo + hi) / 2;
        if mid == 0 {
            break;
        }
        let p = Point {
            rate: mid,
            duration,
            ..base.clone()
        };
        let m = run_point(env, &p)?;
        let full = m.ring_full_frames();
        if env.progress {
            eprintln!(
                "flowpeek-bench: zero-loss step {}/{steps}: {:.3} Mpps offered → {} ring-full frames ({})",
                step + 1,
                mid as f64 / 1e6,
                full,
                if full == 0 { "pass" } else { "fail" }
            );
        }
        log.push((mid, full));
        if full == 0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(ZeroLoss {
        pps: lo,
        precision: hi - lo,
        steps: log,
        step_seconds: duration,
    })
}

fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0} ")
    }
}

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

/// The table a person reads.
pub fn table(m: &Measurement, null: Option<&Measurement>, zl: Option<&ZeroLoss>) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let _ = writeln!(t, "flowpeek-bench run: {}", m.point.describe());
    let _ = writeln!(t, "placement: {}", m.placement);
    let _ = writeln!(
        t,
        "{:<6}{:>12}{:>12}{:>22}{:>10}{:>13}",
        "core", "packets/s", "bits/s", "ring-full frames/ev", "evicted", "buf-refused"
    );
    for (k, c) in m.cores.iter().enumerate() {
        let _ = writeln!(
            t,
            "{:<6}{:>12}{:>12}{:>22}{:>10}{:>13}",
            k,
            si(c.packets as f64 / m.seconds.max(1e-9)),
            si(c.bytes as f64 * 8.0 / m.seconds.max(1e-9)),
            format!("{}/{}", c.ring_full_frames, c.ring_full_events),
            c.flows_evicted,
            c.buffer_refusals
        );
    }
    let _ = writeln!(
        t,
        "{:<6}{:>12}{:>12}{:>22}{:>10}{:>13}",
        "total",
        si(m.pps()),
        si(m.bps()),
        format!(
            "{}/{}",
            m.ring_full_frames(),
            m.cores.iter().map(|c| c.ring_full_events).sum::<u64>()
        ),
        m.cores.iter().map(|c| c.flows_evicted).sum::<u64>(),
        m.cores.iter().map(|c| c.buffer_refusals).sum::<u64>()
    );
    let _ = writeln!(
        t,
        "packets: {} in {:.3} s (generator pushed {} in {:.3} s); plugin failures: {}",
        m.packets(),
        m.seconds,
        m.offered,
        m.gen_seconds,
        m.plugin_failures
    );
    let _ = writeln!(
        t,
        "CPU: {:.3} s user+sys, {:.0} cycles/packet ({})",
        m.cpu_seconds,
        m.cycles_per_packet(),
        if m.cycles_source == "perf" {
            "perf stat -e cycles".to_string()
        } else {
            format!(
                "estimated: {}; perf has no cycles counter here",
                m.cycles_source
            )
        }
    );
    match m.latency {
        Some(l) => {
            let _ = writeln!(
                t,
                "latency push→callback (every {}th packet, {} samples): p50 {}  p99 {}  p99.9 {}  max {}",
                m.point.latency_sample,
                l.samples,
                us(l.p50),
                us(l.p99),
                us(l.p999),
                us(l.max)
            );
        }
        None => {
            let _ = writeln!(t, "latency: not sampled");
        }
    }
    let _ = writeln!(
        t,
        "memory: peak RSS {:.1} MiB = {:.0} bytes per flow ({} flows; includes the process's fixed cost)",
        m.rss_kib as f64 / 1024.0,
        m.mem_per_flow(),
        m.point.flows
    );
    if let Some(n) = null {
        let _ = writeln!(
            t,
            "null consumer (releases slots only): {}pps → this run is {:.1}% of the ring/generator ceiling",
            si(n.pps()),
            m.pps() / n.pps().max(1e-9) * 100.0
        );
    }
    if let Some(z) = zl {
        let _ = writeln!(
            t,
            "zero-loss rate (no ring-full frame): {}pps (true limit within +{}pps; {} steps of {:.1} s)",
            si(z.pps as f64),
            si(z.precision as f64),
            z.steps.len(),
            z.step_seconds
        );
    }
    t
}

/// `flowpeek-bench run`.
pub fn run_main(a: RunArgs) -> ExitCode {
    let mut env = match Env::new(a.bin_dir.clone(), !a.quiet) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("flowpeek-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let point = Point {
        sizes: if a.imix {
            Sizes::Imix
        } else {
            Sizes::Fixed(a.size)
        },
        flows: a.flows,
        cores: a.cores.max(1),
        plugins: match (&a.plugins, a.no_plugins) {
            (Some(p), _) => p.clone(),
            (None, true) => Plugins::None,
            (None, false) => Plugins::noop(),
        },
        consumer: if a.null {
            Consumer::Null
        } else {
            Consumer::Flowpeek
        },
        duration: a.duration,
        rate: a.rate,
        latency_sample: a.latency_sample,
        slots: a.slots,
        conn_packets: a.conn_packets,
    };
    let result = (|| -> Result<(Measurement, Option<Measurement>, Option<ZeroLoss>), String> {
        if !a.quiet {
            eprintln!("flowpeek-bench: measuring {}", point.describe());
        }
        let m = run_point(&mut env, &point)?;
        let null = if a.null || a.no_null {
            None
        } else {
            let p = Point {
                consumer: Consumer::Null,
                ..point.clone()
            };
            if !a.quiet {
                eprintln!(
                    "flowpeek-bench: measuring the null consumer: {}",
                    p.describe()
                );
            }
            Some(run_point(&mut env, &p)?)
        };
        let zl = if a.zero_loss {
            let ceiling = m.pps().max(point.rate as f64) * 1.05;
            Some(zero_loss(
                &mut env,
                &point,
                ceiling,
                a.search_steps,
                a.search_duration,
            )?)
        } else {
            None
        };
        Ok((m, null, zl))
    })();
    match result {
        Ok((m, null, zl)) => {
            if a.json {
                let mut v = m.to_json();
                v["null"] = null.as_ref().map_or(Value::Null, Measurement::to_json);
                v["ratio_to_null"] = null
                    .as_ref()
                    .map_or(Value::Null, |n| json!(m.pps() / n.pps().max(1e-9)));
                v["zero_loss"] = zl.as_ref().map_or(Value::Null, |z| {
                    json!({"pps": z.pps, "precision_pps": z.precision,
                           "steps": z.steps.iter().map(|&(r, f)| json!({"rate": r, "ring_full_frames": f})).collect::<Vec<_>>()})
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", table(&m, null.as_ref(), zl.as_ref()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowpeek-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--duration`: a finite number of seconds above 0 (a run of no traffic measures nothing:
/// its cycles per packet would be the process's start-up cost divided by a handful).
pub fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!(
            "{s} seconds; give a duration above 0, e.g. --duration 5"
        ))
    }
}
