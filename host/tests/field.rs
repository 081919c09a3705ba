//! Field reliability (issue "Field reliability", items 2, 3, 8, 10, 11, 15, 16 and the small
//! ones of 18 that concern `run`): each test runs the real `flowpeek` binary (and
//! `flowpeek-bench gen` as a shm producer) and checks what an operator would see: the exit
//! status, the message, the records and the `--stats` file.
//!
//! The full-disk test needs root and `unshare` (a private mount namespace with a 64 KiB
//! tmpfs over the log directory); it is skipped otherwise, with the reason printed.

mod common;
mod plugin_util;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plugin_util::{corpus, demo, place, records, streamhash, tagger, workspace, TempDir};

fn flowpeek() -> &'static str {
    env!("CARGO_BIN_EXE_flowpeek")
}

/// A running process whose stderr is collected.
struct Running {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// How it ended.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    took: Duration,
}

fn spawn(cmd: &mut Command) -> Running {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    Running { child, stderr }
}

impl Running {
    fn signal(&self, sig: i32) {
        // SAFETY: kill sends a signal to our own child, whose pid is valid until reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
    }

    /// Waits at most `limit` (then kills it and fails).
    fn finish(mut self, limit: Duration) -> Outcome {
        let started = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.join().unwrap();
                panic!("still running after {limit:?}; stderr:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome {
            code: status.code(),
            signal: status.signal(),
            stderr: self.stderr.join().unwrap(),
            took: started.elapsed(),
        }
    }
}

impl Outcome {
    fn expect_code(&self, code: i32, what: &str) -> &Outcome {
        assert_eq!(
            (self.code, self.signal),
            (Some(code), None),
            "{what}: expected exit {code}; stderr:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "{what}:\n{}",
            self.stderr
        );
        self
    }

    fn expect_says(&self, what: &str, phrases: &[&str]) -> &Outcome {
        for p in phrases {
            assert!(
                self.stderr.contains(p),
                "{what}: expected {p:?} in stderr:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// `flowpeek run` on one core, no watcher; `extra` last.
fn run_cmd(source: &str, plugins: &Path, logs: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(flowpeek());
    c.args(["run", "--source", source, "--plugins"])
        .arg(plugins)
        .arg("--log-dir")
        .arg(logs)
        .args(["--no-watch", "--cores", "1"])
        .args(extra);
    c
}

fn demo_source() -> String {
    format!("pcap:{}", demo().display())
}

/// A plugin directory with the tagger (and `config` as tagger.toml when not empty).
fn tagger_dir(label: &str, config: &str) -> TempDir {
    let d = TempDir::new(label);
    place(&tagger(&[]), d.path(), "tagger.so");
    if !config.is_empty() {
        std::fs::write(d.join("tagger.toml"), config).unwrap();
    }
    d
}

fn stats(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no stats at {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `flowpeek-bench`, built into the plugin tests' target directory.
fn flowpeek_bench() -> PathBuf {
    let target = workspace().join("target/plugin-tests");
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "--quiet", "-p", "flowpeek-bench", "--target-dir"])
        .arg(&target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building flowpeek-bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug/flowpeek-bench")
}

/// A shm region name of this test process, removed (with any file left) on drop.
struct Region(String);

impl Region {
    fn new(tag: &str) -> Region {
        Region(format!("flowpeek-field-{}-{tag}", std::process::id()))
    }
    fn file(&self) -> PathBuf {
        Path::new("/dev/shm").join(&self.0)
    }
    fn source(&self) -> String {
        format!("shm:{}", self.0)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.file());
    }
}

/// `flowpeek-bench gen` into `region`, slowly, for a minute; returns once the region exists.
fn generator(region: &Region) -> Child {
    let gen = Command::new(flowpeek_bench())
        .args(["gen", "--out", &region.source()])
        .args(["--rate", "2000", "--duration", "60", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !region.file().exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "no region appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    gen
}

// ---------------------------------------------------------------------------------------
// Item 2: SIGTERM and SIGHUP
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_and_sighup_flush_records_and_stats_as_sigint_does() {
    let plugins = tagger_dir("sig-plugins", "");
    for (sig, name) in [(libc::SIGTERM, "TERM"), (libc::SIGHUP, "HUP")] {
        let logs = TempDir::new("sig-logs");
        let stats_path = logs.join("stats.json");
        let r = spawn(
            run_cmd(&demo_source(), plugins.path(), logs.path(), &["--quiet"])
                .args(["--pace", "200", "--loop", "1000", "--stats"])
                .arg(&stats_path),
        );
        std::thread::sleep(Duration::from_secs(2));
        r.signal(sig);
        let out = r.finish(Duration::from_secs(30));
        out.expect_code(0, name);
        let s = stats(&stats_path);
        assert_eq!(s["interrupted"], true, "SIG{name}: {s}");
        assert!(s["packets"].as_u64().unwrap() > 0, "SIG{name}: {s}");
        // Records are buffered 64 KiB at a time: killed by the signal, the file is empty.
        let recs = records(&logs.join("tagger.jsonl"));
        assert!(!recs.is_empty(), "SIG{name}: no records");
        let recorded = s["plugins"]["tagger"]["records"].as_u64().unwrap();
        assert_eq!(recs.len() as u64, recorded, "SIG{name}: records flushed");
    }
}

#[test]
fn a_second_signal_ends_a_run_whose_plugin_is_stuck() {
    let plugins = tagger_dir("stuck-plugins", "sleep_every = 1\nsleep_ms = 600000\n");
    let logs = TempDir::new("stuck-logs");
    let r = spawn(&mut run_cmd(
        &demo_source(),
        plugins.path(),
        logs.path(),
        &["--quiet"],
    ));
    std::thread::sleep(Duration::from_millis(1500));
    r.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    // Before the grace period is over: honoured when it is.
    r.signal(libc::SIGINT);
    let out = r.finish(Duration::from_secs(20));
    out.expect_code(130, "stuck plugin, two SIGINTs")
        .expect_says("stuck plugin", &["exiting at once", "stuck"]);
    assert!(out.took < Duration::from_secs(6), "took {:?}", out.took);
}

// ---------------------------------------------------------------------------------------
// Item 3: a full --log-dir
// ---------------------------------------------------------------------------------------

#[test]
fn a_full_log_dir_loses_whole_records_only_says_so_and_fails() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let ns = Command::new("unshare")
        .args(["-m", "true"])
        .stderr(Stdio::null())
        .status();
    if !ns.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare -m` failed or is missing (no CAP_SYS_ADMIN here?)");
        return;
    }
    let plugins = tagger_dir("full-plugins", "");
    let out = TempDir::new("full-out");
    let logs = out.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let script = r#"
        mount -t tmpfs -o size=64k flowpeek-test "$2" || exit 97
        "$1" run --source "$3" --loop 40 --plugins "$4" --log-dir "$2" --stats "$5/stats.json" \
            --no-watch --quiet --cores 1 2>"$5/err"
        echo $? >"$5/rc"
        cp "$2/tagger.jsonl" "$5/tagger.jsonl"
    "#;
    let st = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            flowpeek(),
        ])
        .arg(&logs)
        .arg(demo_source())
        .arg(plugins.path())
        .arg(out.path())
        .status()
        .unwrap();
    assert!(st.success(), "the namespace script failed: {st:?}");
    let err = std::fs::read_to_string(out.join("err")).unwrap();
    let rc = std::fs::read_to_string(out.join("rc")).unwrap();
    assert_eq!(rc.trim(), "1", "exit status; stderr:\n{err}");
    for p in ["plugin tagger", "No space left on device", "records lost"] {
        assert!(err.contains(p), "expected {p:?} in:\n{err}");
    }
    // Every line whole (records() panics on a torn one).
    let lines = records(&out.join("tagger.jsonl"));
    let s = stats(&out.join("stats.json"));
    let t = &s["plugins"]["tagger"];
    let lost = t["records_lost"].as_u64().unwrap();
    assert!(lost > 0, "{s}");
    assert_eq!(
        lines.len() as u64 + lost,
        t["records"].as_u64().unwrap(),
        "every record is written or counted lost"
    );
}

// ---------------------------------------------------------------------------------------
// Item 8: a timer re-armed with delay 0
// ---------------------------------------------------------------------------------------

#[test]
fn a_timer_rearmed_with_delay_0_from_its_callback_does_not_livelock() {
    let plugins = tagger_dir("rearm-plugins", "rearm_zero = true\n");
    let logs = TempDir::new("rearm-logs");
    let stats_path = logs.join("stats.json");
    let out = spawn(
        run_cmd(&demo_source(), plugins.path(), logs.path(), &["--quiet"])
            .arg("--stats")
            .arg(&stats_path),
    )
    .finish(Duration::from_secs(60));
    out.expect_code(0, "rearm 0");
    assert!(stats(&stats_path)["flows"].as_u64().unwrap() > 0);
    assert!(!records(&logs.join("tagger.jsonl")).is_empty());
}

// ---------------------------------------------------------------------------------------
// Item 9: a constructor that never returns
// ---------------------------------------------------------------------------------------

/// The packets of a classic pcap file.
fn pcap_packets(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    let le = data[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || data[..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let (mut at, mut n) = (24usize, 0u64);
    while at + 16 <= data.len() {
        let b: [u8; 4] = data[at + 8..at + 12].try_into().unwrap();
        let incl = if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        };
        at += 16 + incl as usize;
        n += 1;
    }
    n
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

#[test]
fn a_hung_constructor_at_start_is_reported_and_the_run_goes_on_without_it() {
    let source = format!("pcap:{}", corpus().join("gen/http-small.pcap").display());
    // Reference: streamhash alone.
    let alone = TempDir::new("new-alone-plugins");
    place(&streamhash(), alone.path(), "streamhash.so");
    let alone_logs = TempDir::new("new-alone-logs");
    spawn(&mut run_cmd(
        &source,
        alone.path(),
        alone_logs.path(),
        &["--quiet", "--plugin-budget-ms", "50"],
    ))
    .finish(Duration::from_secs(120))
    .expect_code(0, "streamhash alone");
    // The same with a tagger whose constructor sleeps for ten minutes.
    let plugins = tagger_dir("new-hung-plugins", "new_sleep_ms = 600000\n");
    place(&streamhash(), plugins.path(), "streamhash.so");
    let logs = TempDir::new("new-hung-logs");
    let stats_path = logs.join("stats.json");
    let out = spawn(&mut run_cmd(
        &source,
        plugins.path(),
        logs.path(),
        &[
            "--quiet",
            "--plugin-budget-ms",
            "50",
            "--stats",
            stats_path.to_str().unwrap(),
        ],
    ))
    .finish(Duration::from_secs(120));
    out.expect_code(0, "hung constructor at start").expect_says(
        "hung constructor at start",
        &["plugin tagger: its constructor (new) for core 0 has run for over"],
    );
    assert!(out.took < Duration::from_secs(100), "took {:?}", out.took);
    let s = stats(&stats_path);
    assert_eq!(
        s["plugins"]["tagger"]["slow_constructors"].as_u64(),
        Some(1),
        "{s}"
    );
    assert_eq!(
        s["packets"].as_u64(),
        Some(pcap_packets(&corpus().join("gen/http-small.pcap")))
    );
    // The other plugin saw every connection, as it does alone.
    let with = sorted_lines(&logs.join("streamhash.jsonl"));
    assert!(!with.is_empty());
    assert_eq!(with, sorted_lines(&alone_logs.join("streamhash.jsonl")));
    assert!(records(&logs.join("tagger.jsonl")).is_empty());
}

#[test]
fn a_hung_constructor_on_reload_leaves_every_core_serving_the_old_generation() {
    let capture = corpus().join("gen/http-small.pcap");
    let plugins = tagger_dir("new-reload-plugins", "");
    let logs = TempDir::new("new-reload-logs");
    let stats_path = logs.join("stats.json");
    let mut cmd = Command::new(flowpeek());
    cmd.args(["run", "--source"])
        .arg(format!("pcap:{}", capture.display()))
        .arg("--plugins")
        .arg(plugins.path())
        .arg("--log-dir")
        .arg(logs.path())
        .args(["--cores", "2", "--loop", "2", "--pace", "40000", "--quiet"])
        .args(["--plugin-budget-ms", "50", "--stats"])
        .arg(&stats_path);
    let r = spawn(&mut cmd);
    std::thread::sleep(Duration::from_millis(1200));
    // A new build whose constructor never returns (for ten minutes), renamed into place.
    std::fs::write(plugins.join("tagger.toml"), "new_sleep_ms = 600000\n").unwrap();
    let staged = place(&tagger(&["v2"]), plugins.path(), ".tagger.so.new");
    std::fs::rename(&staged, plugins.join("tagger.so")).unwrap();
    let out = r.finish(Duration::from_secs(120));
    out.expect_code(0, "hung constructor on reload")
        .expect_says(
            "hung constructor on reload",
            &[
                "plugin tagger: its constructor (new) for core 0 has run for over",
                "plugin tagger: its constructor (new) for core 1 has run for over",
            ],
        );
    let s = stats(&stats_path);
    // Every packet of both passes went through the cores.
    assert_eq!(
        s["packets"].as_u64(),
        Some(2 * pcap_packets(&capture)),
        "{s}"
    );
    assert_eq!(
        s["plugins"]["tagger"]["slow_constructors"].as_u64(),
        Some(2),
        "{s}"
    );
    // v1 kept serving: it saw the connections of the second pass too, and v2 never ran.
    let recs = records(&logs.join("tagger.jsonl"));
    let starts = recs.iter().filter(|r| r["ev"] == "start").count();
    assert!(recs.iter().all(|r| r["tag"] == "v1"));
    let first_pass = 9000;
    assert!(
        starts > first_pass,
        "{starts} connection starts recorded by v1"
    );
}

// ---------------------------------------------------------------------------------------
// Items 10 and 15: the shm producer killed, a second consumer
// ---------------------------------------------------------------------------------------

#[test]
fn a_producer_killed_with_sigkill_is_noticed_at_once_and_fails_the_run() {
    let region = Region::new("kill9");
    let plugins = tagger_dir("kill9-plugins", "");
    let logs = TempDir::new("kill9-logs");
    let stats_path = logs.join("stats.json");
    let mut gen = generator(&region);
    let producer = gen.id();
    let r = spawn(
        run_cmd(&region.source(), plugins.path(), logs.path(), &[])
            .arg("--stats")
            .arg(&stats_path),
    );
    std::thread::sleep(Duration::from_secs(3));
    gen.kill().unwrap();
    // Reaped: a zombie still answers kill(pid, 0).
    gen.wait().unwrap();
    let out = r.finish(Duration::from_secs(30));
    out.expect_code(1, "producer killed").expect_says(
        "producer killed",
        &[&format!(
            "producer pid {producer} exited without closing the region"
        )],
    );
    assert!(
        out.took < Duration::from_secs(3),
        "noticed after {:?}",
        out.took
    );
    assert!(
        !out.stderr.contains("dropped-or-ring-full"),
        "the status line calls the producer's retries drops"
    );
    let s = stats(&stats_path);
    assert!(
        s["capture_error"]
            .as_str()
            .is_some_and(|e| e.contains("exited without closing")),
        "{s}"
    );
}

#[test]
fn a_second_consumer_of_a_ring_is_refused() {
    let region = Region::new("two");
    let plugins = tagger_dir("two-plugins", "");
    let (logs_a, logs_b) = (TempDir::new("two-a"), TempDir::new("two-b"));
    let mut gen = generator(&region);
    let a = spawn(&mut run_cmd(
        &region.source(),
        plugins.path(),
        logs_a.path(),
        &["--quiet"],
    ));
    std::thread::sleep(Duration::from_secs(2));
    let b = spawn(&mut run_cmd(
        &region.source(),
        plugins.path(),
        logs_b.path(),
        &["--quiet"],
    ))
    .finish(Duration::from_secs(20));
    let first = a.child.id();
    a.signal(libc::SIGTERM);
    let _ = a.finish(Duration::from_secs(30));
    let _ = gen.kill();
    let _ = gen.wait();
    b.expect_code(2, "second consumer").expect_says(
        "second consumer",
        &[&format!("ring 0 already has a consumer, pid {first}")],
    );
}

// ---------------------------------------------------------------------------------------
// Item 11: a corrupt slot
// ---------------------------------------------------------------------------------------

#[test]
fn a_corrupt_slot_is_skipped_counted_and_reported() {
    use common::{Conn, ACK};
    use flowpeek::io::shm::ShmRegion;
    let region = Region::new("corrupt");
    let plugins = tagger_dir("corrupt-plugins", "");
    let logs = TempDir::new("corrupt-logs");
    let stats_path = logs.join("stats.json");
    let mut p = ShmRegion::create(&region.0, 1, 64, 2048).unwrap();
    let frames: Vec<Vec<u8>> = (0..10u16)
        .map(|i| {
            Conn::new(&format!("10.0.0.1:{}", 40000 + i), "10.0.0.2:80")
                .c(0, 0, ACK)
                .frame()
        })
        .collect();
    for f in &frames {
        p.push(0, f).unwrap();
    }
    // Slot 3 points at a buffer outside the region.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(region.file())
        .unwrap();
    let off = p.region().slot_offset(0, 3) as u64;
    file.write_all_at(&1_000_000u32.to_ne_bytes(), off).unwrap();
    let r = spawn(
        run_cmd(&region.source(), plugins.path(), logs.path(), &["--quiet"])
            .arg("--stats")
            .arg(&stats_path),
    );
    assert!(p.wait_for_consumer(Duration::from_secs(20)));
    // Frames after the bad slot still arrive: the core did not stop.
    for f in &frames {
        while p.push(0, f).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(p);
    let out = r.finish(Duration::from_secs(30));
    out.expect_code(0, "corrupt slot")
        .expect_says("corrupt slot", &["slot 3 buf_idx", "the slot is skipped"]);
    let s = stats(&stats_path);
    assert_eq!(s["corrupt_slots"], 1, "{s}");
    assert_eq!(s["packets"], 19, "every frame but the corrupt one: {s}");
}

// ---------------------------------------------------------------------------------------
// Item 16: an unsupported link type
// ---------------------------------------------------------------------------------------

#[test]
fn an_unsupported_link_type_is_warned_about_and_counted() {
    let dir = TempDir::new("link");
    let pcap = dir.join("radio.pcap");
    let mut bytes = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 9999] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for i in 0..5u32 {
        for v in [1_700_000_000 + i, 0, 60, 60] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&[0u8; 60]);
    }
    std::fs::write(&pcap, bytes).unwrap();
    let plugins = tagger_dir("link-plugins", "");
    let stats_path = dir.join("stats.json");
    let out = spawn(
        run_cmd(
            &format!("pcap:{}", pcap.display()),
            plugins.path(),
            &dir.join("logs"),
            &["--quiet"],
        )
        .arg("--stats")
        .arg(&stats_path),
    )
    .finish(Duration::from_secs(30));
    out.expect_code(0, "link 9999")
        .expect_says("link 9999", &["5 packets of an unsupported link type"]);
    assert_eq!(stats(&stats_path)["unsupported_link"], 5);
}

// ---------------------------------------------------------------------------------------
// Item 18 (the parts of `run`)
// ---------------------------------------------------------------------------------------

#[test]
fn an_unwritable_stats_path_is_refused_before_the_run() {
    let plugins = tagger_dir("stats-plugins", "");
    let logs = TempDir::new("stats-logs");
    let bad = logs.join("no/such/dir/stats.json");
    // A run of about an hour: refused at once, or the test times out.
    let out = spawn(
        run_cmd(&demo_source(), plugins.path(), logs.path(), &["--quiet"])
            .args(["--pace", "10", "--loop", "1000", "--stats"])
            .arg(&bad),
    )
    .finish(Duration::from_secs(20));
    out.expect_code(2, "bad --stats")
        .expect_says("bad --stats", &["cannot write stats to", "no/such/dir"]);
}

#[test]
fn a_run_with_no_plugin_says_so() {
    let plugins = TempDir::new("empty-plugins");
    let logs = TempDir::new("empty-logs");
    let out = spawn(&mut run_cmd(
        &demo_source(),
        plugins.path(),
        logs.path(),
        &["--quiet"],
    ))
    .finish(Duration::from_secs(30));
    out.expect_code(0, "no plugin")
        .expect_says("no plugin", &["no plugin (*.so) in", "nothing is recorded"]);
}

#[test]
fn an_unknown_source_kind_and_loop_0_are_refused_for_what_they_are() {
    let plugins = TempDir::new("args-plugins");
    let logs = TempDir::new("args-logs");
    spawn(&mut run_cmd("foo:bar", plugins.path(), logs.path(), &[]))
        .finish(Duration::from_secs(20))
        .expect_code(2, "foo:bar")
        .expect_says("foo:bar", &["unknown kind \"foo\""]);
    let out = spawn(&mut run_cmd(
        &demo_source(),
        plugins.path(),
        logs.path(),
        &["--loop", "0"],
    ))
    .finish(Duration::from_secs(20));
    out.expect_code(2, "--loop 0")
        .expect_says("--loop 0", &["--loop"]);
}

#[test]
fn bench_run_refuses_a_zero_duration() {
    let out = spawn(Command::new(flowpeek_bench()).args(["run", "--duration", "0"]))
        .finish(Duration::from_secs(20));
    out.expect_code(2, "bench --duration 0")
        .expect_says("bench --duration 0", &["duration above 0"]);
}

#[test]
fn a_budget_warning_gives_the_cpu_time_of_the_callback() {
    let plugins = tagger_dir("budget-plugins", "sleep_every = 50\nsleep_ms = 40\n");
    let logs = TempDir::new("budget-logs");
    let out = spawn(&mut run_cmd(
        &demo_source(),
        plugins.path(),
        logs.path(),
        &["--quiet", "--plugin-budget-ms", "10"],
    ))
    .finish(Duration::from_secs(60));
    out.expect_code(0, "budget")
        .expect_says("budget", &["past the budget", "ms of it on the CPU"]);
}
