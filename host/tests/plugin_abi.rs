//! Plugin API 2 end to end, with real plugins built by cargo and real corpus captures:
//! a plugin built against API 1 (the source fixture plugins/testing/oldabi) still loads and
//! gives the records it gave; batches (SPEC §2.4) deliver what one-at-a-time delivery does,
//! also when a callback stops monitoring, raises an event or unsubscribes mid-batch; the
//! plugin-declared stream filter and its `<name>.toml` override; the template, copied out of
//! the repository as its guide says, builds and reads every byte.

mod plugin_util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use flowpeek::flow::{Config, EndReason, Engine, Stats};
use flowpeek::io::pcap::CaptureFile;
use flowpeek::plugin::{PluginHost, PluginStats};
use plugin_util::*;

const SEC: u64 = 1_000_000_000;

fn mixed() -> PathBuf {
    corpus().join("gen/mixed.pcap")
}

/// Runs `capture` through one engine with every plugin in `dir`; returns the engine's and
/// the plugins' counters.
fn run(
    dir: &Path,
    logs: &Path,
    capture: &Path,
    cfg: Config,
) -> (Stats, BTreeMap<String, PluginStats>, Vec<String>) {
    let (mut host, monitors) = PluginHost::open(dir, logs, 0, 3600 * SEC, false).unwrap();
    let failures = host.failures.clone();
    let cap = CaptureFile::open(capture).unwrap();
    let mut engine = Engine::new(cfg, monitors);
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
    (engine.stats().clone(), host.stats(), failures)
}

/// The records of `path` as JSON, without the `uid` field (the API 1 SDK predates it: its
/// records lack it), in one canonical order.
fn records_without_uid(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = sorted_lines(path)
        .iter()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).expect("a JSON record");
            if let Some(m) = r.as_object_mut() {
                m.remove("uid");
            }
            r.to_string()
        })
        .collect();
    v.sort();
    v
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Builds the API 1 fixture (its own workspace and lock file) and returns a private copy.
fn streamhash_api1() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let ws = workspace();
            let target = ws.join("target/plugin-tests-oldabi");
            let out = Command::new(env!("CARGO"))
                .current_dir(ws.join("plugins/testing/oldabi"))
                .args(["build", "--quiet", "--target-dir"])
                .arg(&target)
                .output()
                .expect("cargo runs");
            assert!(
                out.status.success(),
                "building the API 1 fixture failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let keep = TempDir::new("api1-built");
            let copy = place(
                &target.join("debug/libstreamhash_v1.so"),
                keep.path(),
                "streamhash-api1.so",
            );
            std::mem::forget(keep);
            copy
        })
        .clone()
}

#[test]
fn a_plugin_built_against_api_1_loads_and_gives_the_same_records() {
    let capture = mixed();
    let (old_dir, old_logs) = (TempDir::new("api1"), TempDir::new("api1-logs"));
    place(&streamhash_api1(), old_dir.path(), "streamhash.so");
    let (_, old_stats, failures) =
        run(old_dir.path(), old_logs.path(), &capture, Config::default());
    assert!(failures.is_empty(), "{failures:?}");
    let (new_dir, new_logs) = (TempDir::new("api2"), TempDir::new("api2-logs"));
    place(&streamhash(), new_dir.path(), "streamhash.so");
    let (_, new_stats, failures) =
        run(new_dir.path(), new_logs.path(), &capture, Config::default());
    assert!(failures.is_empty(), "{failures:?}");
    let old = records_without_uid(&old_logs.join("streamhash.jsonl"));
    let new = records_without_uid(&new_logs.join("streamhash.jsonl"));
    assert_eq!(old.len(), 1539, "one record per connection of mixed.pcap");
    assert_eq!(
        old, new,
        "the API 1 build (peek into a copy) and the API 2 build (zero-copy read) agree"
    );
    let (o, n) = (&old_stats["streamhash"], &new_stats["streamhash"]);
    assert_eq!(o.failures + n.failures, 0);
    // API 1 has no batch entry point: one call per event, as before (and its shutdown).
    assert_eq!(o.calls, o.events + o.retired, "{o:?}");
    assert!(n.calls <= n.events + n.retired, "{n:?}");
}

/// Runs the batcher (batched, then the `unbatched` build) with `config` on mixed.pcap;
/// returns both record sets and the batched run's counters.
fn batcher_pair(label: &str, config: &str) -> (Vec<String>, Vec<String>, PluginStats) {
    let mut out = Vec::new();
    let mut batched_stats = None;
    for features in [&[][..], &["unbatched"][..]] {
        let dir = TempDir::new(label);
        let logs = TempDir::new(&format!("{label}-logs"));
        place(
            &build("flowpeek-test-batcher", "batcher", features),
            dir.path(),
            "batcher.so",
        );
        std::fs::write(dir.join("batcher.toml"), config).unwrap();
        let (_, stats, failures) = run(dir.path(), logs.path(), &mixed(), Config::default());
        assert!(failures.is_empty(), "{failures:?}");
        out.push(sorted_lines(&logs.join("batcher.jsonl")));
        batched_stats.get_or_insert(stats["batcher"].clone());
    }
    let unbatched = out.pop().unwrap();
    let batched = out.pop().unwrap();
    (batched, unbatched, batched_stats.unwrap())
}

fn field(line: &str, key: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(line).unwrap()[key].clone()
}

/// The batched build saw its events from batches, many per call; the counts it recorded do
/// not say so (`batched` is the one field that differs), and everything else is identical.
fn same_but_batched(
    batched: &[String],
    unbatched: &[String],
    st: &PluginStats,
    per_call: u64,
) -> u64 {
    assert_eq!(batched.len(), unbatched.len());
    assert!(batched.len() >= 2 * 1539, "two ends per connection");
    let strip = |l: &String| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v.as_object_mut().unwrap().remove("batched");
        v.to_string()
    };
    let mut a: Vec<String> = batched.iter().map(strip).collect();
    let mut b: Vec<String> = unbatched.iter().map(strip).collect();
    a.sort();
    b.sort();
    if a != b {
        let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).take(4).collect();
        let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).take(4).collect();
        panic!(
            "batches must deliver exactly what one-at-a-time delivery does; only batched: {only_a:#?}; only unbatched: {only_b:#?}"
        );
    }
    let from_batches: u64 = batched
        .iter()
        .map(|l| field(l, "batched").as_u64().unwrap())
        .sum();
    assert!(
        unbatched.iter().all(|l| field(l, "batched") == 0),
        "nothing is batched unless asked"
    );
    assert_eq!(st.failures, 0);
    assert!(
        st.calls * per_call < st.events,
        "more than {per_call} events per call when batched: {st:?}"
    );
    from_batches
}

#[test]
fn batches_deliver_what_one_at_a_time_delivery_does() {
    let (batched, unbatched, st) = batcher_pair("batch-plain", "");
    let from_batches = same_but_batched(&batched, &unbatched, &st, 1);
    let pkts: u64 = unbatched
        .iter()
        .map(|l| field(l, "pkts").as_u64().unwrap())
        .sum();
    assert!(pkts > 0 && from_batches >= pkts, "{from_batches} of {pkts}");
}

#[test]
fn a_stop_inside_a_batch_cuts_it_there() {
    let (batched, unbatched, st) = batcher_pair("batch-stop", "stop_after = 3\n");
    same_but_batched(&batched, &unbatched, &st, 1);
    for l in &batched {
        assert_eq!(field(l, "after_stop"), 0, "{l}");
        assert!(field(l, "pkts").as_u64().unwrap() <= 3, "{l}");
    }
    assert!(batched.iter().any(|l| field(l, "pkts") == 3));
}

#[test]
fn an_event_raised_inside_a_batch_comes_right_after_its_callback() {
    let (batched, unbatched, st) = batcher_pair("batch-raise", "raise_at = 2\n");
    same_but_batched(&batched, &unbatched, &st, 1);
    let mut raised = 0;
    for l in &batched {
        if field(l, "pkts").as_u64().unwrap() >= 2 {
            assert_eq!(field(l, "raised_at"), 2, "{l}");
            raised += 1;
        }
    }
    assert!(raised > 1000, "{raised}");
}

#[test]
fn an_unsubscribe_inside_a_batch_applies_from_the_next_event() {
    let (batched, unbatched, st) = batcher_pair("batch-unsub", "unsubscribe_after = 4\n");
    same_but_batched(&batched, &unbatched, &st, 1);
    for l in &batched {
        assert!(field(l, "pkts").as_u64().unwrap() <= 4, "{l}");
    }
}

/// Server ports of the connections in a batcher log (one record per side: halved).
fn ports(lines: &[String]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        let flow = field(l, "flow");
        let port: u16 = flow
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        *m.entry(port).or_default() += 1;
    }
    m
}

#[test]
fn the_declared_filter_is_the_default_and_the_toml_filter_overrides_it() {
    let lib = build("flowpeek-test-batcher", "batcher", &[]);
    let one = |label: &str, config: &str| {
        let dir = TempDir::new(label);
        let logs = TempDir::new(&format!("{label}-logs"));
        place(&lib, dir.path(), "batcher.so");
        std::fs::write(dir.join("batcher.toml"), config).unwrap();
        let (_, _, failures) = run(dir.path(), logs.path(), &mixed(), Config::default());
        (sorted_lines(&logs.join("batcher.jsonl")), failures)
    };
    let (all, _) = one("filter-none", "");
    let all = ports(&all);
    assert!(
        all.len() >= 3,
        "mixed.pcap has several server ports: {all:?}"
    );
    let (declared, failures) = one("filter-declared", "declare = \"tcp port 80\"\n");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        ports(&declared),
        all.iter()
            .filter(|(p, _)| **p == 80)
            .map(|(p, n)| (*p, *n))
            .collect::<BTreeMap<_, _>>(),
        "the plugin's own filter keeps exactly the port-80 flows"
    );
    let (overridden, failures) = one(
        "filter-toml",
        "declare = \"tcp port 80\"\nfilter = \"tcp port 5201\"\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        ports(&overridden),
        all.iter()
            .filter(|(p, _)| **p == 5201)
            .map(|(p, n)| (*p, *n))
            .collect::<BTreeMap<_, _>>(),
        "filter in batcher.toml replaces the declared one"
    );
    let (none, failures) = one("filter-bad", "declare = \"tcp port eighty\"\n");
    assert!(none.is_empty());
    assert!(
        failures.len() == 1 && failures[0].contains("batcher"),
        "a bad declared filter fails the load, naming the plugin: {failures:?}"
    );
}

/// The guide's steps, literally: copy the template out of the repository, point its
/// dependency at the checkout's plugin-api with the guide's `sed`, build it.
fn template_copied_out() -> PathBuf {
    let ws = workspace();
    let out_dir = TempDir::new("template-copy");
    let copy = out_dir.join("my-monitor");
    let status = Command::new("cp")
        .arg("-r")
        .arg(ws.join("plugins/template"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(copy.join("target"));
    let api = ws.join("plugin-api");
    let sed = format!(
        "s|path = \"../../plugin-api\"|path = \"{}\"|",
        api.display()
    );
    let status = Command::new("sed")
        .args(["-i", &sed, "Cargo.toml"])
        .current_dir(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let target = ws.join("target/plugin-tests-template");
    let out = Command::new(env!("CARGO"))
        .current_dir(&copy)
        .args(["build", "--quiet", "--target-dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the copied template does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keep = TempDir::new("template-built");
    let lib = place(
        &target.join("debug/libtemplate.so"),
        keep.path(),
        "template.so",
    );
    std::mem::forget(keep);
    lib
}

#[test]
fn the_template_copied_out_builds_and_reads_every_byte() {
    let lib = template_copied_out();
    let capture = mixed();
    // The template alone: nothing may be lost on a capture `streams` calls complete.
    let (dir, logs) = (TempDir::new("tpl"), TempDir::new("tpl-logs"));
    place(&lib, dir.path(), "template.so");
    let (stats, _, failures) = run(dir.path(), logs.path(), &capture, Config::default());
    assert!(failures.is_empty(), "{failures:?}");
    let tpl = records(&logs.join("template.jsonl"));
    assert_eq!(tpl.len(), 1539);
    // streamhash says what each direction holds.
    let (dir2, logs2) = (TempDir::new("tpl-sh"), TempDir::new("tpl-sh-logs"));
    place(&streamhash(), dir2.path(), "streamhash.so");
    let (sh_stats, _, _) = run(dir2.path(), logs2.path(), &capture, Config::default());
    assert_eq!(
        stats.bytes_missing, sh_stats.bytes_missing,
        "the template's 8 KiB buffers lose nothing that streamhash's 256 KiB ones keep"
    );
    let mut want: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    for r in records(&logs2.join("streamhash.jsonl")) {
        let key = (
            r["client"].as_str().unwrap().to_string(),
            r["server"].as_str().unwrap().to_string(),
        );
        let v = (
            r["c2s"]["bytes"].as_u64().unwrap(),
            r["s2c"]["bytes"].as_u64().unwrap(),
            r["c2s"]["missing"].as_u64().unwrap() + r["s2c"]["missing"].as_u64().unwrap(),
        );
        // Several connections may share the endpoints: compare the sums.
        let e = want.entry(key).or_default();
        *e = (e.0 + v.0, e.1 + v.1, e.2 + v.2);
    }
    let mut got: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    let mut big_with_head = 0;
    for r in &tpl {
        let key = (
            r["client"].as_str().unwrap().to_string(),
            r["server"].as_str().unwrap().to_string(),
        );
        let c2s = r["c2s"].as_u64().unwrap();
        let e = got.entry(key).or_default();
        *e = (
            e.0 + c2s,
            e.1 + r["s2c"].as_u64().unwrap(),
            e.2 + r["lost"].as_u64().unwrap(),
        );
        let head = r["head"].as_str().unwrap();
        if c2s > 4096 {
            assert!(!head.is_empty(), "{r}");
            big_with_head += 1;
        }
        if c2s > 0 && r["server"].as_str().unwrap().ends_with(":80") {
            assert!(
                head.starts_with("GET ") || head.starts_with("POST ") || head.contains("HTTP"),
                "{r}"
            );
        }
    }
    assert_eq!(got, want, "per connection, the bytes streamhash hashed");
    assert!(
        big_with_head >= 32,
        "clients that sent more than 4 KiB: {big_with_head}"
    );
}

/// Loads, reloads and failed loads each give one stderr line, on a run of two cores, and
/// `load_failures` in `--stats` holds every failure, whichever core met it first.
#[test]
fn loads_reloads_and_failures_each_give_one_line() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    let v1 = tagger(&[]);
    let v2 = tagger(&["v2"]);
    let dir = TempDir::new("lines");
    let logs = TempDir::new("lines-logs");
    let stats = logs.join("stats.json");
    place(&v1, dir.path(), "tagger.so");
    // A constructor that fails (on every core), from the start.
    place(&v1, dir.path(), "a-fail.so");
    std::fs::write(dir.join("a-fail.toml"), "fail = true\n").unwrap();
    let capture = corpus().join("gen/http-small.pcap");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_flowpeek"))
        .arg("run")
        .arg(format!("--source=pcap:{}", capture.display()))
        .arg("--plugins")
        .arg(dir.path())
        .arg("--log-dir")
        .arg(logs.path())
        .arg("--stats")
        .arg(&stats)
        .args(["--pace", "25000", "--drain-timeout", "3600", "--quiet"])
        .args(["--cores", "2"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let tmp = dir.join("tagger.so.tmp");
    std::fs::copy(&v2, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dir.join("tagger.so")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // A file that is no library, dropped in while running.
    std::fs::write(dir.join("junk.so"), "not a library\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    let count = |needle: &str| err.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("plugin tagger v1 loaded from"), 1, "{err}");
    assert_eq!(count("plugin tagger reloaded from"), 1, "{err}");
    let reload = err.lines().find(|l| l.contains("reloaded from")).unwrap();
    assert!(
        reload.contains("generation 1 (v1) -> 2 (tagger v2, crc32 "),
        "{reload}"
    );
    assert_eq!(count("plugin not loaded"), 2, "{err}");
    assert_eq!(count("configured to fail"), 1, "{err}");
    assert_eq!(count("junk.so"), 1, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let failures = v["load_failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().contains("junk.so"))
            && failures
                .iter()
                .any(|f| f.as_str().unwrap().contains("configured to fail")),
        "{failures:?}"
    );
}

/// The bundled no-op plugin takes its `PktIn` in batches: far fewer calls than events, and it
/// still counts every packet.
#[test]
fn noop_takes_its_packets_in_batches() {
    let (dir, logs) = (TempDir::new("noop"), TempDir::new("noop-logs"));
    place(
        &build("flowpeek-plugin-noop", "noop", &[]),
        dir.path(),
        "noop.so",
    );
    let (stats, plugins, failures) = run(dir.path(), logs.path(), &mixed(), Config::default());
    assert!(failures.is_empty(), "{failures:?}");
    let st = plugins["noop"].clone();
    eprintln!("{st:?} {stats:?}");
    let recs = records(&logs.join("noop.jsonl"));
    assert_eq!(recs.len(), 1);
    let counted = recs[0]["packets"].as_u64().unwrap();
    assert_eq!(counted, st.events, "{st:?}");
    assert!(counted > 40_000, "{counted}");
    assert!(st.calls * 10 < st.events, "{st:?}");
}
