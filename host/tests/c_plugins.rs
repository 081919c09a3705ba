//! C plugins (plugin-api/c/include/mos_api.h): monitors written in C against mOS 0.3's API,
//! each built here with the system `cc` exactly as the README says
//! (`cc -shared -fPIC -I plugin-api/c/include monitor.c -o libmonitor.so`), loaded by the
//! plugin host and driven by real captures or built packets. Every errno of the
//! `mtcp_ppeek` man page, short reads at a gap, offsets inside an out-of-order fragment, the
//! shipped monitors against `flowpeek streams` and the Rust midstat, hot reload, refusals.

mod common;
mod plugin_util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use flowpeek::flow::{Config, EndReason};
use flowpeek::plugin::{load, PluginHost, Update};
use flowpeek::run::{RunOptions, Source};
use plugin_util::*;

use common::*;

fn big_config() -> Config {
    Config {
        tcp_timeout: 3600 * SEC,
        max_flows: 1 << 20,
        buffer_capacity: 1 << 20,
        buffer_memory: 8 << 30,
        ..Config::default()
    }
}

fn run_opts(capture: &Path, plugins: &Path, logs: &Path) -> RunOptions {
    RunOptions {
        source: Source::Pcap(capture.into()),
        plugins: plugins.into(),
        log_dir: logs.into(),
        engine: big_config(),
        pace: 0,
        loops: 1,
        drain_timeout: 3600 * SEC,
        watch: false,
        cores: 1,
        latency_sample: 0,
        budget: Default::default(),
        latency_warmup: 0,
    }
}

/// Builds the C file `src` as `lib<name>.so` with exactly the documented command (run from
/// the repository root, so the include path is the README's); returns a private copy.
fn cc(src: &Path, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(PathBuf, String, PathBuf)>>> = OnceLock::new();
    static STORE: OnceLock<TempDirHolder> = OnceLock::new();
    let store = &STORE.get_or_init(|| TempDirHolder(TempDir::new("c-built"))).0;
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = built.iter().find(|b| b.0 == src && b.1 == name) {
        return b.2.clone();
    }
    let out = store.join(&format!("lib{name}.so"));
    let st = Command::new("cc")
        .current_dir(workspace())
        .args(["-shared", "-fPIC", "-I", "plugin-api/c/include"])
        .arg(src)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("the system cc runs");
    assert!(
        st.status.success(),
        "cc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    built.push((src.to_path_buf(), name.to_string(), out.clone()));
    out
}

struct TempDirHolder(TempDir);

fn shipped(file: &str) -> PathBuf {
    workspace().join("plugins/c").join(file)
}

fn test_src(file: &str) -> PathBuf {
    workspace().join("host/tests/c").join(file)
}

// ---------------------------------------------------------------------------------------
// The shipped stream monitor against `flowpeek streams`
// ---------------------------------------------------------------------------------------

fn captures() -> Vec<PathBuf> {
    let mut stack = vec![corpus().join("public"), corpus().join("gen")];
    let mut out = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pcap" | "pcapng" | "cap")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// (client, server, c2s bytes, c2s crc32, s2c bytes, s2c crc32) of one record.
fn direction_key(r: &serde_json::Value) -> String {
    format!(
        "{} {} c2s {} {} s2c {} {}",
        r["client"].as_str().unwrap(),
        r["server"].as_str().unwrap(),
        r["c2s"]["bytes"],
        r["c2s"]["crc32"],
        r["s2c"]["bytes"],
        r["s2c"]["crc32"],
    )
}

#[test]
fn cstreams_bytes_equal_flowpeek_streams_on_the_corpus() {
    let dir = TempDir::new("cstreams");
    place(&cc(&shipped("cstreams.c"), "cstreams"), dir.path(), "libcstreams.so");
    let files = captures();
    assert!(files.len() >= 200, "{} captures", files.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let diffs = Mutex::new(Vec::new());
    let compared = Mutex::new((0usize, 0u64));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(path) = files.get(i) else { break };
                let logs = TempDir::new("cstreams-logs");
                let stop = Arc::new(AtomicBool::new(false));
                let report =
                    flowpeek::run::run(&run_opts(path, dir.path(), logs.path()), &stop, |_| {})
                        .unwrap();
                assert!(report.load_failures.is_empty(), "{:?}", report.load_failures);
                let recs = records(&logs.join("cstreams.jsonl"));
                let mismatched: Vec<&serde_json::Value> =
                    recs.iter().filter(|r| r["ppeek_mismatch"] != 0).collect();
                assert!(
                    mismatched.is_empty(),
                    "{}: mtcp_ppeek disagreed with mtcp_peek: {mismatched:?}",
                    path.display()
                );
                let mut got: Vec<String> = recs.iter().map(direction_key).collect();
                got.sort();
                let opts = flowpeek::streams::StreamsOptions {
                    sha256: false,
                    engine: big_config(),
                    buffer: 1 << 18,
                };
                let want = flowpeek::streams::run(path, &opts, |_, _| {}).unwrap();
                let mut want: Vec<String> = want
                    .records
                    .iter()
                    .map(|r| direction_key(&serde_json::from_str(&r.to_json()).unwrap()))
                    .collect();
                want.sort();
                {
                    let mut c = compared.lock().unwrap();
                    c.0 += want.len();
                    c.1 += recs
                        .iter()
                        .map(|r| {
                            r["c2s"]["bytes"].as_u64().unwrap() + r["s2c"]["bytes"].as_u64().unwrap()
                        })
                        .sum::<u64>();
                }
                if got != want {
                    let only_got: Vec<&String> =
                        got.iter().filter(|g| !want.contains(g)).take(3).collect();
                    let only_want: Vec<&String> =
                        want.iter().filter(|w| !got.contains(w)).take(3).collect();
                    diffs.lock().unwrap().push(format!(
                        "{}: C plugin {} records, streams {}\n  only C: {only_got:#?}\n  only streams: {only_want:#?}",
                        path.display(),
                        got.len(),
                        want.len()
                    ));
                }
            });
        }
    });
    let diffs = diffs.into_inner().unwrap();
    let (conns, bytes) = *compared.lock().unwrap();
    eprintln!("{} captures, {conns} connections, {bytes} bytes compared", files.len());
    assert!(conns > 10_000 && bytes > 10_000_000, "{conns} connections, {bytes} bytes");
    assert!(
        diffs.is_empty(),
        "{} of {} captures differ:\n{}",
        diffs.len(),
        files.len(),
        diffs[..diffs.len().min(5)].join("\n")
    );
}
