//! Helpers of the plugin host tests: building test plugin crates with cargo, private
//! temporary directories, captures, and reading plugin logs.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use flowpeek::flow::{Config, EndReason, Engine};
use flowpeek::io::pcap::CaptureFile;
use flowpeek::plugin::PluginHost;

/// An engine configuration no test capture reaches the limits of: hour-long timeouts,
/// 1 MiB buffers, a million flows.
pub fn big_config() -> Config {
    let sec = 1_000_000_000;
    Config {
        tcp_timeout: 3600 * sec,
        max_flows: 1 << 20,
        buffer_capacity: 1 << 20,
        buffer_memory: 8 << 30,
        ..Config::default()
    }
}

/// `flowpeek run` of `capture` on one core with the plugins of `plugins`, records in
/// `logs`, [`big_config`], no watching and no drain deadline within a test.
pub fn run_opts(capture: &Path, plugins: &Path, logs: &Path) -> flowpeek::run::RunOptions {
    flowpeek::run::RunOptions {
        source: flowpeek::run::Source::Pcap(capture.into()),
        plugins: plugins.into(),
        log_dir: logs.into(),
        engine: big_config(),
        pace: 0,
        loops: 1,
        drain_timeout: 3600 * 1_000_000_000,
        watch: false,
        cores: 1,
        latency_sample: 0,
        budget: Default::default(),
        latency_warmup: 0,
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The shared corpus (`FLOWPEEK_CORPUS`, else `../shared/corpus` beside the clone); panics
/// with the variable's name if it is missing.
pub fn corpus() -> PathBuf {
    flowpeek::testing::corpus_dir()
}

pub fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo.pcapng")
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A directory under the system temp dir (mode 0755), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "flowpeek-plugin-test-{}-{n}-{label}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Built plugins, by (package, features): a private copy each (builds of different features
/// overwrite the same output file, so each is copied right after its build).
fn built() -> &'static Mutex<HashMap<String, PathBuf>> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    BUILT.get_or_init(|| Mutex::new(HashMap::new()))
}

fn store() -> &'static Path {
    static STORE: OnceLock<TempDirStatic> = OnceLock::new();
    &STORE
        .get_or_init(|| TempDirStatic(TempDir::new("built")))
        .0
         .0
}

struct TempDirStatic(TempDir);

/// Builds `package` (library `lib`) with `features` and returns a private copy of it.
pub fn build(package: &str, lib: &str, features: &[&str]) -> PathBuf {
    let key = format!("{package}+{}", features.join(","));
    let mut built = built().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    let target = workspace().join("target/plugin-tests");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace())
        .args(["build", "--quiet", "-p", package, "--target-dir"])
        .arg(&target);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let started = std::time::Instant::now();
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "building {key} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("built {key} in {:.1} s", started.elapsed().as_secs_f64());
    let copy = store().join(format!("{}.so", key.replace([',', '+'], "_")));
    std::fs::copy(target.join(format!("debug/lib{lib}.so")), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    built.insert(key, copy.clone());
    copy
}

pub fn tagger(features: &[&str]) -> PathBuf {
    build("flowpeek-test-tagger", "tagger", features)
}

pub fn streamhash() -> PathBuf {
    build("flowpeek-plugin-streamhash", "streamhash", &[])
}

/// Copies `lib` into `dir` as `name` (mode 0755).
pub fn place(lib: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(lib, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// The lines of a plugin log, parsed.
pub fn records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Drives `capture` through an engine with the plugins of `host`; finishes and shuts down.
pub fn drive(
    capture: &Path,
    mut host: PluginHost,
    monitors: Vec<Box<dyn flowpeek::flow::Monitor>>,
) -> PluginHost {
    let cap = CaptureFile::open(capture).unwrap();
    let mut engine = Engine::new(Config::default(), monitors);
    for (i, p) in cap.packets().enumerate() {
        let p = p.unwrap();
        engine.on_frame(p.link, p.data, p.ts_nanos);
        if i % 32 == 31 {
            engine.end_batch();
            host.poll(&mut engine);
        }
    }
    engine.end_batch();
    engine.finish(EndReason::Eof);
    host.shutdown(&mut engine);
    host.flush();
    host
}

/// Per flow (`flow#serial`): the tags of its start records and of its end records (with side).
#[derive(Debug, Default)]
pub struct FlowTags {
    pub starts: Vec<String>,
    pub ends: Vec<(String, String, String)>,
}

pub fn flows(records: &[serde_json::Value]) -> std::collections::BTreeMap<String, FlowTags> {
    let mut out: std::collections::BTreeMap<String, FlowTags> = Default::default();
    for r in records {
        let key = format!("{}#{}", r["flow"].as_str().unwrap(), r["serial"]);
        let tag = r["tag"].as_str().unwrap().to_string();
        let e = out.entry(key).or_default();
        match r["ev"].as_str().unwrap() {
            "start" => e.starts.push(tag),
            "end" => e.ends.push((
                tag,
                r["side"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )),
            other => panic!("unknown ev {other}"),
        }
    }
    out
}

/// Checks that every flow has one start and two ends (one per side), all with the same
/// tag; returns (flows tagged v1, flows tagged v2).
pub fn check_no_flow_switched(records: &[serde_json::Value]) -> (usize, usize) {
    let (mut v1, mut v2) = (0, 0);
    let mut bad = Vec::new();
    for (k, f) in flows(records) {
        let mut sides: Vec<&str> = f.ends.iter().map(|e| e.1.as_str()).collect();
        sides.sort();
        let tags: std::collections::BTreeSet<&str> = f
            .starts
            .iter()
            .map(String::as_str)
            .chain(f.ends.iter().map(|e| e.0.as_str()))
            .collect();
        if f.starts.len() != 1 || sides != ["cli", "svr"] || tags.len() != 1 {
            bad.push(format!("{k}: {f:?}"));
            continue;
        }
        match f.starts[0].as_str() {
            "v1" => v1 += 1,
            _ => v2 += 1,
        }
    }
    assert!(
        bad.is_empty(),
        "{} flows lost or switched a generation, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    (v1, v2)
}
