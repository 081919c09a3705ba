//! The plugin host, end to end: real plugin libraries (plugins/testing/*, plugins/streamhash)
//! built with cargo, loaded by `PluginHost` and by `flowpeek run`. Refusals with their
//! messages, panics, hot reload under traffic, removal, and streamhash against
//! `flowpeek streams --json` on the whole corpus.

mod plugin_util;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowpeek::flow::{Config, EndReason, Engine};
use flowpeek::io::pcap::CaptureFile;
use flowpeek::plugin::{load, CallBudget, OverrunPolicy, PluginHost, Update};
use flowpeek::run::RunOptions;
use plugin_util::*;

const SEC: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

/// A plugin directory holding the good tagger (v1, `tagger.so`) and whatever `bad` adds;
/// the host must refuse exactly that with `phrase`, load the good one, and run.
fn refused(label: &str, phrase: &str, bad: impl FnOnce(&Path)) {
    let dir = TempDir::new(label);
    let logs = TempDir::new(&format!("{label}-logs"));
    place(&tagger(&[]), dir.path(), "tagger.so");
    bad(dir.path());
    let (host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, 30 * SEC, false).unwrap();
    assert_eq!(host.failures.len(), 1, "{label}: {:?}", host.failures);
    assert!(
        host.failures[0].contains(phrase),
        "{label}: expected {phrase:?} in {:?}",
        host.failures[0]
    );
    assert_eq!(monitors.len(), 1, "{label}: the good plugin loads");
    let host = drive(&demo(), host, monitors);
    let recs = records(&logs.join("tagger.jsonl"));
    assert_eq!(host.stats()["tagger"].records, recs.len() as u64);
    // demo.pcapng: 8 connections, one start and two ends each.
    assert_eq!(recs.len(), 24, "{label}: the good plugin's records");
    let (v1, v2) = check_no_flow_switched(&recs);
    assert_eq!((v1, v2), (8, 0));
}

#[test]
fn refuses_a_file_that_is_not_a_library() {
    refused("notlib", "not a loadable library", |d| {
        std::fs::write(d.join("x.so"), "this is not an ELF file\n").unwrap();
        std::fs::set_permissions(d.join("x.so"), std::fs::Permissions::from_mode(0o644)).unwrap();
    });
}

#[test]
fn refuses_a_library_without_root_module() {
    refused("noroot", "no flowpeek root module", |d| {
        place(
            &build("flowpeek-test-noroot", "noroot", &[]),
            d,
            "noroot.so",
        );
    });
}

#[test]
fn refuses_a_root_module_of_another_layout() {
    refused("badabi", "incompatible flowpeek-plugin-api", |d| {
        place(
            &build("flowpeek-test-badabi", "badabi", &[]),
            d,
            "badabi.so",
        );
    });
}

#[test]
fn refuses_a_too_new_api_version() {
    refused(
        "apinew",
        "built against plugin-api 999, this host speaks 2: rebuild",
        |d| {
            place(&tagger(&["api_new"]), d, "a-new.so");
        },
    );
}

#[test]
fn refuses_a_too_old_api_version() {
    refused(
        "apiold",
        "built against plugin-api 0, this host speaks 2: rebuild",
        |d| {
            place(&tagger(&["api_old"]), d, "a-old.so");
        },
    );
}

#[test]
fn reports_a_failing_constructor() {
    refused("ctor", "configured to fail", |d| {
        place(&tagger(&[]), d, "a-fail.so");
        std::fs::write(d.join("a-fail.toml"), "fail = true\n").unwrap();
    });
}

#[test]
fn refuses_a_world_writable_file() {
    refused("wwfile", "world-writable", |d| {
        let p = place(&tagger(&[]), d, "a-ww.so");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    });
}

#[test]
fn refuses_a_file_owned_by_another_user() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        eprintln!("skipped: chown needs root");
        return;
    }
    refused("owner", "owned by uid 65534", |d| {
        let p = place(&tagger(&[]), d, "a-nobody.so");
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    });
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn refuses_everything_in_a_world_writable_directory() {
    let dir = TempDir::new("wwdir");
    let logs = TempDir::new("wwdir-logs");
    place(&tagger(&[]), dir.path(), "tagger.so");
    // Another plugin (two files of one plugin name are refused: issue 14, item 13).
    place(&streamhash(), dir.path(), "a-other.so");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, 30 * SEC, false).unwrap();
    assert_eq!(host.failures.len(), 2, "{:?}", host.failures);
    for f in &host.failures {
        assert!(
            f.contains("directory") && f.contains("world-writable"),
            "{f}"
        );
    }
    assert!(monitors.is_empty());
    // The host still runs (with no plugin).
    let host = drive(&demo(), host, monitors);
    assert!(host.stats().is_empty());
    // Fixed, the same directory loads.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, 30 * SEC, false).unwrap();
    assert!(host.failures.is_empty(), "{:?}", host.failures);
    assert_eq!(monitors.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------

#[test]
fn a_panicking_plugin_is_disabled_and_the_others_go_on() {
    let dir = TempDir::new("panic");
    let logs = TempDir::new("panic-logs");
    place(&tagger(&[]), dir.path(), "tagger.so");
    std::fs::write(dir.join("tagger.toml"), "panic_every = 1000\n").unwrap();
    place(&streamhash(), dir.path(), "streamhash.so");
    let capture = corpus().join("gen/http-small.pcap");
    let stop = Arc::new(AtomicBool::new(false));
    let report =
        flowpeek::run::run(&run_opts(&capture, dir.path(), logs.path()), &stop, |_| {}).unwrap();
    assert!(
        report.load_failures.is_empty(),
        "{:?}",
        report.load_failures
    );
    let t = &report.plugins["tagger"];
    assert_eq!(t.failures, 1, "{t:?}");
    let s = &report.plugins["streamhash"];
    assert_eq!(s.failures, 0, "{s:?}");
    let hashes = records(&logs.join("streamhash.jsonl"));
    assert_eq!(hashes.len(), 9000, "one record per connection");
    assert_eq!(s.records, 9000);
    // The tagger wrote nothing after its panic (packet 1000, early in the capture).
    let tags = records(&logs.join("tagger.jsonl"));
    assert!(tags.len() < 2000, "{} tagger records", tags.len());
}

/// A plugin that sleeps 300 ms on every 40,000th packet, under a 50 ms budget.
fn slow_tagger_run(policy: OverrunPolicy) -> (flowpeek::run::RunReport, TempDir) {
    let dir = TempDir::new("slow");
    let logs = TempDir::new("slow-logs");
    place(&tagger(&[]), dir.path(), "tagger.so");
    std::fs::write(
        dir.join("tagger.toml"),
        "sleep_every = 40000\nsleep_ms = 300\n",
    )
    .unwrap();
    place(&streamhash(), dir.path(), "streamhash.so");
    let capture = corpus().join("gen/http-small.pcap");
    let stop = Arc::new(AtomicBool::new(false));
    let opts = RunOptions {
        budget: CallBudget {
            limit: Duration::from_millis(50),
            policy,
        },
        ..run_opts(&capture, dir.path(), logs.path())
    };
    let report = flowpeek::run::run(&opts, &stop, |_| {}).unwrap();
    let s = &report.plugins["streamhash"];
    assert_eq!(s.overruns, 0, "{s:?}");
    assert_eq!(s.records, 9000, "the other plugin is complete");
    assert_eq!(records(&logs.join("streamhash.jsonl")).len(), 9000);
    (report, logs)
}

#[test]
fn a_slow_callback_is_counted_under_warn() {
    let (report, logs) = slow_tagger_run(OverrunPolicy::Warn);
    let t = &report.plugins["tagger"];
    // Every packet reaches the tagger (PktIn), plus its ConnStart/ConnEnd events.
    assert!(t.events > report.stats.packets, "{t:?}");
    let sleeps = report.stats.packets / 40_000;
    assert!(sleeps >= 2, "{} packets", report.stats.packets);
    assert_eq!(
        t.overruns, sleeps,
        "each 300 ms callback and nothing else: {t:?}"
    );
    assert_eq!(t.failures, 0);
    assert_eq!(records(&logs.join("tagger.jsonl")).len(), 27_000);
}

#[test]
fn a_slow_callback_disables_the_plugin_under_disable() {
    let (report, logs) = slow_tagger_run(OverrunPolicy::Disable);
    let t = &report.plugins["tagger"];
    assert_eq!(t.overruns, 1, "disabled at the first: {t:?}");
    // Nothing after packet 40,000 (of 92,755) reached it: under `warn` it gets ~120,000
    // events (every packet, 9,000 starts, 18,000 side ends) and writes 27,000 records.
    assert!(t.events < 60_000, "{t:?}");
    let tags = records(&logs.join("tagger.jsonl"));
    assert!(tags.len() < 13_500, "{} tagger records", tags.len());
}

// ---------------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------------

/// No v1 `start` after the first v2 record; returns (first v2 index, v1 flows, v2 flows).
fn check_reload_log(recs: &[serde_json::Value]) -> (usize, usize, usize) {
    let first_v2 = recs
        .iter()
        .position(|r| r["tag"] == "v2")
        .expect("some v2 records");
    let late_v1_starts = recs[first_v2..]
        .iter()
        .filter(|r| r["tag"] == "v1" && r["ev"] == "start")
        .count();
    assert_eq!(
        late_v1_starts, 0,
        "new flows must go to the newest generation"
    );
    let (v1, v2) = check_no_flow_switched(recs);
    assert!(v1 > 0 && v2 > 0, "v1 flows {v1}, v2 flows {v2}");
    (first_v2, v1, v2)
}

/// Starts `cmd` (`flowpeek run --plugins …`) on http-small, paced at `pace` packets/s on one
/// core (the log is then in time order: cores write their own chunks), with `--stats`.
/// http-small has 92,755 packets, 9,000 connections starting all along: ~3.7 s at 25,000/s.
fn spawn_paced(
    mut cmd: std::process::Command,
    logs: &Path,
    stats: &Path,
    pace: u32,
) -> std::process::Child {
    cmd.arg(format!(
        "--source=pcap:{}",
        corpus().join("gen/http-small.pcap").display()
    ))
    .arg("--log-dir")
    .arg(logs)
    .arg("--stats")
    .arg(stats)
    .arg(format!("--pace={pace}"))
    .args(["--drain-timeout", "3600", "--quiet", "--cores", "1"])
    .spawn()
    .unwrap()
}

/// Atomic replacement of `dir/tagger.so` by `lib`: a temporary (not a *.so) renamed over it.
fn replace_by_rename(lib: &Path, dir: &Path) {
    let tmp = dir.join("tagger.so.tmp");
    std::fs::copy(lib, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dir.join("tagger.so")).unwrap();
}

/// Waits for `child`, started at `started`, to exit (killed and failed after a minute).
fn wait_for_exit(child: &mut std::process::Child, started: Instant) -> std::process::ExitStatus {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("flowpeek run did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hot_reload_under_traffic_with_the_binary() {
    hot_reload_with_the_binary(false);
}

/// `--plugins` relative to the working directory: the file loaded at the start and the same
/// file named by the watcher's events are one plugin, not two of the same name.
#[test]
fn hot_reload_with_a_relative_plugin_directory() {
    hot_reload_with_the_binary(true);
}

fn hot_reload_with_the_binary(relative: bool) {
    let v1 = tagger(&[]);
    let v2 = tagger(&["v2"]);
    let dir = TempDir::new("reload-bin");
    let logs = TempDir::new("reload-bin-logs");
    let stats = logs.join("stats.json");
    place(&v1, dir.path(), "tagger.so");
    let started = Instant::now();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowpeek"));
    if relative {
        let (parent, name) = (
            dir.path().parent().unwrap(),
            dir.path().file_name().unwrap(),
        );
        cmd.current_dir(parent)
            .arg("run")
            .arg("--plugins")
            .arg(name);
    } else {
        cmd.arg("run").arg("--plugins").arg(dir.path());
    }
    let mut child = spawn_paced(cmd, logs.path(), &stats, 25_000);
    std::thread::sleep(Duration::from_millis(1500));
    replace_by_rename(&v2, dir.path());
    let status = wait_for_exit(&mut child, started);
    assert!(status.success());
    eprintln!("flowpeek run took {:.1} s", started.elapsed().as_secs_f64());
    let recs = records(&logs.join("tagger.jsonl"));
    let (first_v2, v1n, v2n) = check_reload_log(&recs);
    eprintln!(
        "{} records, first v2 at {first_v2}; flows v1 {v1n}, v2 {v2n}",
        recs.len()
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let t = &s["plugins"]["tagger"];
    assert_eq!(t["generations"], 2, "{s}");
    assert!(t["retired"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(t["drained_flows"], 0, "{s}");
    assert!(s["retained_images"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["load_failures"].as_array().unwrap().len(), 0, "{s}");
    // Both test loads were forked by the test-load server, none needed a process of its own.
    assert_eq!(s["test_loads"]["server"], 2, "{s}");
    assert_eq!(s["test_loads"]["own_process"], 0, "{s}");
}

/// The children of `pid` whose command line names the test-load server.
fn test_load_servers(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{n}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{n}/cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmdline).contains("__probe-server") {
            found.push(n);
        }
    }
    found
}

/// The test-load server killed under the host: the next load runs in a process of its own
/// and succeeds, the one after starts a new server; nothing is refused.
#[test]
fn a_killed_test_load_server_is_replaced_and_costs_no_load() {
    let v1 = tagger(&[]);
    let v2 = tagger(&["v2"]);
    let dir = TempDir::new("server-killed");
    let logs = TempDir::new("server-killed-logs");
    let stats = logs.join("stats.json");
    place(&v1, dir.path(), "tagger.so");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowpeek"));
    cmd.arg("run").arg("--plugins").arg(dir.path());
    let mut child = spawn_paced(cmd, logs.path(), &stats, 20_000);
    let started = Instant::now();
    // The kill must land after the first generation is in (its log exists), not during the
    // initial load, or the scenario (a server lost between loads) is not the one tested.
    while !logs.join("tagger.jsonl").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first generation never wrote its log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let servers = loop {
        let s = test_load_servers(child.id());
        if !s.is_empty() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no test-load server under flowpeek run"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(servers.len(), 1, "{servers:?}");
    // SAFETY: the pid is a live child of our child (it was just listed); SIGKILL ends it.
    assert_eq!(unsafe { libc::kill(servers[0] as i32, libc::SIGKILL) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    replace_by_rename(&v2, dir.path());
    std::thread::sleep(Duration::from_millis(700));
    replace_by_rename(&v1, dir.path());
    let status = wait_for_exit(&mut child, started);
    assert!(status.success());
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(s["load_failures"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["plugins"]["tagger"]["generations"], 3, "{s}");
    assert_eq!(s["test_loads"]["own_process"], 1, "{s}");
    assert_eq!(s["test_loads"]["server"], 2, "{s}");
}

/// Drives `capture`, applying `update(engine_at_packet_i)` once at packet `at` (at a batch
/// boundary). Returns the host after `finish` (not yet shut down) and the engine.
fn drive_with_update(
    capture: &Path,
    dir: &Path,
    logs: &Path,
    at: usize,
    mut update: impl FnMut(&mut PluginHost, &mut Engine),
) -> (PluginHost, Engine) {
    let (mut host, monitors) = PluginHost::open(dir, logs, 0, 3600 * SEC, false).unwrap();
    assert!(host.failures.is_empty(), "{:?}", host.failures);
    let cap = CaptureFile::open(capture).unwrap();
    let mut engine = Engine::new(Config::default(), monitors);
    let mut done = false;
    for (i, p) in cap.packets().enumerate() {
        // The first moment from packet `at` on with flows open: they must stay with the
        // generation they started on.
        if i >= at && !done && engine.stats().flows_live > 0 {
            done = true;
            engine.end_batch();
            update(&mut host, &mut engine);
        }
        let p = p.unwrap();
        engine.on_frame(p.link, p.data, p.ts_nanos);
        if i % 32 == 31 {
            engine.end_batch();
        }
    }
    engine.end_batch();
    (host, engine)
}

fn gens(host: &PluginHost) -> Vec<String> {
    host.live_generations()
        .get("tagger")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn hot_reload_in_process_keeps_every_flow_on_its_generation() {
    let dir = TempDir::new("reload-lib");
    let logs = TempDir::new("reload-lib-logs");
    let file = place(&tagger(&[]), dir.path(), "tagger.so");
    let v2 = tagger(&["v2"]);
    let capture = corpus().join("gen/http-small.pcap");
    let mut during = Vec::new();
    let (mut host, mut engine) =
        drive_with_update(&capture, dir.path(), logs.path(), 40_000, |h, e| {
            h.apply(
                Update::Loaded {
                    file: file.clone(),
                    lib: load::load(&v2).unwrap(),
                    config: String::new(),
                },
                e,
            );
            during = gens(h);
        });
    assert_eq!(
        during,
        ["v1", "v2"],
        "both generations run right after the reload"
    );
    engine.finish(EndReason::Eof);
    assert_eq!(gens(&host), ["v2"], "v1 retires once its last flow ended");
    let st = host.stats()["tagger"].clone();
    assert_eq!(
        (st.generations, st.retired, st.drained_flows),
        (2, 1, 0),
        "{st:?}"
    );
    host.shutdown(&mut engine);
    host.flush();
    assert!(gens(&host).is_empty());
    assert_eq!(host.stats()["tagger"].retired, 2);
    let recs = records(&logs.join("tagger.jsonl"));
    let (_, v1n, v2n) = check_reload_log(&recs);
    assert_eq!(v1n + v2n, 9000, "every connection, once");
}

#[test]
fn a_removed_plugin_drains_and_gets_no_new_flows() {
    let dir = TempDir::new("remove");
    let logs = TempDir::new("remove-logs");
    let file = place(&tagger(&[]), dir.path(), "tagger.so");
    let capture = corpus().join("gen/http-small.pcap");
    let mut at_removal = (0usize, 0u64, Vec::new());
    let log = logs.join("tagger.jsonl");
    let (mut host, mut engine) =
        drive_with_update(&capture, dir.path(), logs.path(), 40_000, |h, e| {
            std::fs::remove_file(&file).unwrap();
            h.apply(Update::Removed { file: file.clone() }, e);
            h.flush();
            at_removal = (records(&log).len(), e.stats().flows_created, gens(h));
        });
    let (n_before, flows_before, live_then) = at_removal;
    assert_eq!(live_then, ["v1"], "still draining its open flows");
    assert!(
        engine.stats().flows_created > flows_before,
        "new flows came after the removal"
    );
    engine.finish(EndReason::Eof);
    assert!(
        gens(&host).is_empty(),
        "the generation retired after its last flow"
    );
    host.shutdown(&mut engine);
    host.flush();
    let recs = records(&log);
    assert!(
        recs.len() > n_before,
        "open flows ended on the old generation"
    );
    let late_starts = recs[n_before..]
        .iter()
        .filter(|r| r["ev"] == "start")
        .count();
    assert_eq!(late_starts, 0, "no new flow goes to a removed plugin");
    let (v1, v2) = check_no_flow_switched(&recs);
    assert_eq!(v2, 0);
    assert!(v1 > 0 && (v1 as u64) < engine.stats().flows_created);
    let st = host.stats()["tagger"].clone();
    assert_eq!((st.generations, st.retired), (1, 1), "{st:?}");
}

// ---------------------------------------------------------------------------------------
// streamhash against `flowpeek streams --json`
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

fn canonical(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
        .to_string()
}

#[test]
fn streamhash_agrees_with_streams_on_the_corpus() {
    let dir = TempDir::new("agree");
    place(&streamhash(), dir.path(), "streamhash.so");
    let files = captures();
    assert!(files.len() >= 210, "{} captures", files.len());
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let diffs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(path) = files.get(i) else { break };
                let logs = TempDir::new("agree-logs");
                let stop = Arc::new(AtomicBool::new(false));
                let report =
                    flowpeek::run::run(&run_opts(path, dir.path(), logs.path()), &stop, |_| {})
                        .unwrap();
                assert!(report.load_failures.is_empty(), "{:?}", report.load_failures);
                let text = std::fs::read_to_string(logs.join("streamhash.jsonl"))
                    .unwrap_or_default();
                let mut got: Vec<String> = text.lines().map(canonical).collect();
                got.sort();
                let opts = flowpeek::streams::StreamsOptions {
                    write: None,
                    sha256: true,
                    engine: big_config(),
                    buffer: 1 << 18,
                };
                let want = flowpeek::streams::run(path, &opts, |_, _| {}).unwrap();
                let mut want: Vec<String> =
                    want.records.iter().map(|r| canonical(&r.to_json())).collect();
                want.sort();
                if got != want {
                    let only_got: Vec<&String> =
                        got.iter().filter(|g| !want.contains(g)).take(3).collect();
                    let only_want: Vec<&String> =
                        want.iter().filter(|w| !got.contains(w)).take(3).collect();
                    diffs.lock().unwrap().push(format!(
                        "{}: plugin {} records, streams {}\n  only plugin: {only_got:#?}\n  only streams: {only_want:#?}",
                        path.display(),
                        got.len(),
                        want.len()
                    ));
                }
            });
        }
    });
    eprintln!(
        "{} captures compared in {:.1} s",
        files.len(),
        started.elapsed().as_secs_f64()
    );
    let diffs = diffs.into_inner().unwrap();
    assert!(
        diffs.is_empty(),
        "{} of {} captures differ:\n{}",
        diffs.len(),
        files.len(),
        diffs[..diffs.len().min(5)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------

/// The same capture through 1, 2 and 3 worker threads (flows sharded by the symmetric
/// hash): the streamhash records are the same, order aside, and every packet was processed
/// by exactly one core.
#[test]
fn workers_give_the_same_records_as_one_core() {
    let dir = TempDir::new("workers");
    place(&streamhash(), dir.path(), "streamhash.so");
    let capture = corpus().join("gen/mixed.pcap");
    let mut outputs = Vec::new();
    for cores in [1usize, 2, 3] {
        let logs = TempDir::new("workers-logs");
        let stop = Arc::new(AtomicBool::new(false));
        let opts = RunOptions {
            cores,
            ..run_opts(&capture, dir.path(), logs.path())
        };
        let report = flowpeek::run::run(&opts, &stop, |_| {}).unwrap();
        assert_eq!(report.per_core.len(), cores);
        let per_core: u64 = report.per_core.iter().map(|s| s.packets).sum();
        assert_eq!(per_core, report.stats.packets);
        assert_eq!(
            report.stats.packets, 46_041,
            "every packet of mixed.pcap, once"
        );
        if cores > 1 {
            assert!(
                report.per_core.iter().all(|s| s.flows_created > 0),
                "every core got flows"
            );
        }
        let mut lines: Vec<String> = std::fs::read_to_string(logs.join("streamhash.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        // 1539 connections: a late packet after a close is counted against its tombstone,
        // not taken for one more (partial) connection.
        assert_eq!(lines.len(), 1539);
        outputs.push(lines);
    }
    assert_eq!(outputs[0], outputs[1], "2 cores");
    assert_eq!(outputs[0], outputs[2], "3 cores");
}

// ---------------------------------------------------------------------------------------
// The other bundled plugins on real traffic
// ---------------------------------------------------------------------------------------

/// The flow ids `flowpeek streams` gives the connections of `capture` (same engine settings
/// as `run_opts`), each with its client and server.
fn streams_uids(capture: &Path) -> HashMap<String, (String, String)> {
    let opts = flowpeek::streams::StreamsOptions {
        sha256: false,
        engine: run_opts(capture, Path::new("."), Path::new(".")).engine,
        buffer: 1 << 18,
        write: None,
    };
    flowpeek::streams::run(capture, &opts, |_, _| {})
        .unwrap()
        .records
        .iter()
        .map(|r| {
            (
                format!("{:016x}", r.uid()),
                (r.client.to_string(), r.server.to_string()),
            )
        })
        .collect()
}

/// Every record about a flow opens with `uid`, `client`, `server` (docs/records.md), and
/// they are the ones `flowpeek streams` gives that connection.
fn assert_same_flow_ids(
    what: &str,
    recs: &[&serde_json::Value],
    uids: &HashMap<String, (String, String)>,
) {
    assert!(!recs.is_empty(), "{what}: no record");
    for r in recs {
        let uid = r["uid"].as_str().unwrap();
        let want = uids
            .get(uid)
            .unwrap_or_else(|| panic!("{what}: uid {uid} is no connection of streams: {r}"));
        assert_eq!(
            (r["client"].as_str().unwrap(), r["server"].as_str().unwrap()),
            (want.0.as_str(), want.1.as_str()),
            "{what}: {r}"
        );
    }
}

/// httplog on 9,000 real curl ↔ nginx connections: one record per request/response pair,
/// every one a GET answered 200 with a Content-Length that matches a served object's size,
/// under the connection's `uid` as `flowpeek streams` gives it.
#[test]
fn httplog_logs_every_request_of_real_traffic() {
    let dir = TempDir::new("httplog");
    let logs = TempDir::new("httplog-logs");
    place(
        &build("flowpeek-plugin-httplog", "httplog", &[]),
        dir.path(),
        "httplog.so",
    );
    let capture = corpus().join("gen/http-small.pcap");
    let stop = Arc::new(AtomicBool::new(false));
    let report =
        flowpeek::run::run(&run_opts(&capture, dir.path(), logs.path()), &stop, |_| {}).unwrap();
    assert_eq!(report.plugins["httplog"].failures, 0);
    let sizes: std::collections::HashSet<u64> =
        std::fs::read_to_string(corpus().join("gen/www.sha256"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
    let recs = records(&logs.join("httplog.jsonl"));
    assert_eq!(recs.len(), 9000, "one pair per connection");
    for r in &recs {
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert!(
            r["path"].as_str().is_some_and(|p| p.starts_with('/')),
            "{r}"
        );
        let len = r["resp_content_length"].as_u64().unwrap();
        assert!(sizes.contains(&len), "{r}");
    }
    assert_same_flow_ids(
        "httplog",
        &recs.iter().collect::<Vec<_>>(),
        &streams_uids(&capture),
    );
    let text = std::fs::read_to_string(logs.join("httplog.jsonl")).unwrap();
    assert!(
        text.lines().all(|l| l.starts_with(r#"{"uid":""#)),
        "uid first"
    );
}

/// eventlog writes exactly the lines `flowpeek events` prints (same probe, same batches).
#[test]
fn eventlog_matches_flowpeek_events() {
    let dir = TempDir::new("eventlog");
    place(
        &build("flowpeek-plugin-eventlog", "eventlog", &[]),
        dir.path(),
        "eventlog.so",
    );
    for name in [
        "zeek/tcp/miss_end_data.pcap",
        "zeek/tcp/reassembly.pcap",
        "suricata-verify/bug-4376/syn_retransmit_with_ts.pcap",
    ] {
        let capture = corpus().join("public").join(name);
        let logs = TempDir::new("eventlog-logs");
        let stop = Arc::new(AtomicBool::new(false));
        let opts = RunOptions {
            engine: Config::default(),
            ..run_opts(&capture, dir.path(), logs.path())
        };
        flowpeek::run::run(&opts, &stop, |_| {}).unwrap();
        let ours = std::fs::read_to_string(logs.join("eventlog.jsonl")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowpeek"))
            .args(["events", "--batch", "32"])
            .arg(&capture)
            .output()
            .unwrap();
        assert!(out.status.success());
        let theirs = String::from_utf8(out.stdout).unwrap();
        assert!(!theirs.is_empty());
        assert_eq!(ours, theirs, "{name}");
    }
}

/// midstat keeps the connection table and emits it each second of packet time, plus a final
/// record at shutdown.
#[test]
fn midstat_reports_the_connection_table() {
    let dir = TempDir::new("midstat");
    let logs = TempDir::new("midstat-logs");
    place(
        &build("flowpeek-plugin-midstat", "midstat", &[]),
        dir.path(),
        "midstat.so",
    );
    let capture = corpus().join("gen/http-keepalive.pcap");
    let stop = Arc::new(AtomicBool::new(false));
    flowpeek::run::run(&run_opts(&capture, dir.path(), logs.path()), &stop, |_| {}).unwrap();
    let recs = records(&logs.join("midstat.jsonl"));
    assert!(recs.len() >= 2, "{} records", recs.len());
    assert_eq!(recs.last().unwrap()["final"], true);
    let busiest = recs
        .iter()
        .map(|r| r["flows"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(busiest > 0);
    let row = recs
        .iter()
        .flat_map(|r| r["table"].as_array().unwrap())
        .next()
        .expect("a row");
    for key in [
        "client",
        "server",
        "cli_state",
        "svr_state",
        "c2s_bytes",
        "s2c_bytes",
    ] {
        assert!(row.get(key).is_some(), "{key} in {row}");
    }
    let rows: Vec<&serde_json::Value> = recs
        .iter()
        .flat_map(|r| r["table"].as_array().unwrap())
        .collect();
    assert_same_flow_ids("midstat", &rows, &streams_uids(&capture));
    let text = std::fs::read_to_string(logs.join("midstat.jsonl")).unwrap();
    assert!(text.contains(r#""table":[{"uid":""#), "uid first in a row");
}

/// After a reload, flows still open on the old generation when its drain deadline passes get
/// `ConnEnd` with reason `reloaded`, and the old generation retires.
#[test]
fn drain_deadline_ends_old_flows_with_reason_reloaded() {
    let dir = TempDir::new("drain");
    let logs = TempDir::new("drain-logs");
    let file = place(&tagger(&[]), dir.path(), "tagger.so");
    let v2 = tagger(&["v2"]);
    // Keep-alive connections live long: many are open at the reload.
    let cap = CaptureFile::open(&corpus().join("gen/http-keepalive.pcap")).unwrap();
    let (mut host, monitors) =
        PluginHost::open(dir.path(), logs.path(), 0, SEC / 10, false).unwrap();
    let mut engine = Engine::new(Config::default(), monitors);
    let mut reloaded_with = 0;
    for (i, p) in cap.packets().enumerate() {
        let p = p.unwrap();
        if i == 2000 {
            engine.end_batch();
            reloaded_with = engine.stats().flows_live;
            let lib = load::load(&v2).unwrap();
            host.apply(
                Update::Loaded {
                    file: file.clone(),
                    lib,
                    config: String::new(),
                },
                &mut engine,
            );
        }
        engine.on_frame(p.link, p.data, p.ts_nanos);
        if i % 32 == 31 {
            engine.end_batch();
        }
    }
    engine.finish(EndReason::Eof);
    assert!(reloaded_with > 0, "flows were open at the reload");
    let stats = host.stats()["tagger"].clone();
    assert!(stats.drained_flows > 0, "{stats:?}");
    host.shutdown(&mut engine);
    host.flush();
    let recs = records(&logs.join("tagger.jsonl"));
    let reloaded = recs
        .iter()
        .filter(|r| r["tag"] == "v1" && r["reason"] == "reloaded")
        .count();
    assert_eq!(
        reloaded as u64,
        stats.drained_flows * 2,
        "two ConnEnd (one per side) per drained flow"
    );
    assert!(recs
        .iter()
        .all(|r| !(r["tag"] == "v2" && r["reason"] == "reloaded")));
}
