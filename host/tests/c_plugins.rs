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
use flowpeek::run::RunOptions;
use plugin_util::*;

use common::*;

/// Builds the C file `src` as `lib<name>.so` with exactly the documented command (run from
/// the repository root, so the include path is the README's); returns a private copy.
fn cc(src: &Path, name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(PathBuf, String, PathBuf)>>> = OnceLock::new();
    static STORE: OnceLock<TempDirHolder> = OnceLock::new();
    let store = &STORE
        .get_or_init(|| TempDirHolder(TempDir::new("c-built")))
        .0;
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = built.iter().find(|b| b.0 == src && b.1 == name) {
        return b.2.clone();
    }
    let stem = src.file_stem().unwrap().to_string_lossy();
    let dir = store.join(&stem);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("lib{name}.so"));
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

/// (uid, client, server, c2s bytes, c2s crc32, s2c bytes, s2c crc32) of one record: the
/// C monitor's `uid` comes from `flowpeek_flow_info`, so it must be the flow id `streams`
/// prints.
fn direction_key(r: &serde_json::Value) -> String {
    format!(
        "{} {} {} c2s {} {} s2c {} {}",
        r["uid"].as_str().unwrap(),
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
    place(
        &cc(&shipped("cstreams.c"), "cstreams"),
        dir.path(),
        "libcstreams.so",
    );
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
                    write: None,
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
    eprintln!(
        "{} captures, {conns} connections, {bytes} bytes compared",
        files.len()
    );
    assert!(
        conns > 10_000 && bytes > 10_000_000,
        "{conns} connections, {bytes} bytes"
    );
    assert!(
        diffs.is_empty(),
        "{} of {} captures differ:\n{}",
        diffs.len(),
        files.len(),
        diffs[..diffs.len().min(5)].join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Every errno of the man page, from C
// ---------------------------------------------------------------------------------------

/// Runs the probe monitor in `mode` over `script` (batches of segments); returns its records.
fn probe(mode: &str, script: &[Vec<Seg>]) -> Vec<serde_json::Value> {
    let dir = TempDir::new(&format!("probe-{mode}"));
    let logs = TempDir::new(&format!("probe-{mode}-logs"));
    place(
        &cc(&test_src("probe.c"), "probe"),
        dir.path(),
        "libprobe.so",
    );
    std::fs::write(dir.join("probe.toml"), format!("mode = {mode}\n")).unwrap();
    let (mut host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, SEC, false).unwrap();
    assert!(host.failures.is_empty(), "{:?}", host.failures);
    let log = new_log();
    let mut net = Net::new(Config::default(), &log, monitors);
    for batch in script {
        net.batch(batch);
    }
    net.engine.finish(EndReason::Eof);
    host.shutdown(&mut net.engine);
    host.flush();
    records(&logs.join("probe.jsonl"))
}

/// A connection with a request and a reply, each packet its own batch, then the close.
fn exchange(c: &Conn) -> Vec<Vec<Seg>> {
    let mut out: Vec<Vec<Seg>> = c.handshake().into_iter().map(|s| vec![s]).collect();
    out.push(vec![c.c(0, 0, ACK | PSH).data(&pattern(100, 1))]);
    out.push(vec![c.s(0, 100, ACK | PSH).data(&pattern(50, 2))]);
    out.push(vec![c.c(100, 50, FIN | ACK)]);
    out.push(vec![c.s(50, 101, FIN | ACK)]);
    out.push(vec![c.c(101, 51, ACK)]);
    out
}

/// The records `what`, as (ret, errno).
fn results(recs: &[serde_json::Value], what: &str) -> Vec<(i64, String)> {
    recs.iter()
        .filter(|r| r["what"] == what)
        .map(|r| {
            (
                r["ret"].as_i64().unwrap(),
                r["errno"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn failed(errno: &str) -> (i64, String) {
    (-1, errno.to_string())
}

#[test]
fn eacces_for_another_context_and_outside_a_callback() {
    let recs = probe("eacces", &exchange(&Conn::v4()));
    assert_eq!(results(&recs, "init_ppeek"), [failed("EACCES")], "{recs:?}");
    assert_eq!(results(&recs, "foreign_mctx"), [failed("EACCES")]);
    assert_eq!(results(&recs, "null_mctx"), [failed("EACCES")]);
}

#[test]
fn ebadf_for_a_socket_that_names_no_live_flow() {
    let a = Conn::v4();
    let b = Conn::new("10.0.0.1:40001", "10.0.0.2:80");
    let mut script = exchange(&a);
    script.extend(exchange(&b));
    let recs = probe("ebadf", &script);
    assert_eq!(
        results(&recs, "never_a_socket"),
        [failed("EBADF"), failed("EBADF")]
    );
    assert_eq!(
        results(&recs, "negative"),
        [failed("EBADF"), failed("EBADF")]
    );
    // The second connection reads through the first one's socket, ended by then.
    assert_eq!(results(&recs, "ended_flow"), [failed("EBADF")], "{recs:?}");
}

#[test]
fn einval_for_a_disabled_buffer_a_bad_side_and_a_wrong_hook() {
    let recs = probe("einval", &exchange(&Conn::v4()));
    assert_eq!(
        results(&recs, "disable_svrbuf"),
        [(0, "0".to_string())],
        "{recs:?}"
    );
    assert_eq!(results(&recs, "disabled_side"), [failed("EINVAL")]);
    assert_eq!(results(&recs, "bad_side"), [failed("EINVAL")]);
    // mOS's event/hook rule: CONN_NEW_DATA only at MOS_NULL.
    assert_eq!(results(&recs, "init_bad_hook"), [failed("EINVAL")]);
}

#[test]
fn esocktnosupport_for_the_monitoring_socket() {
    let recs = probe("esocktnosupport", &exchange(&Conn::v4()));
    assert_eq!(
        results(&recs, "monitoring_socket"),
        [failed("ESOCKTNOSUPPORT")],
        "{recs:?}"
    );
}

#[test]
fn enotconn_for_a_side_whose_stream_does_not_exist_yet() {
    let recs = probe("enotconn", &exchange(&Conn::v4()));
    // At the client's SYN (CONN_START, MOS_HK_SND) the server has received nothing yet.
    assert_eq!(
        results(&recs, "svr_at_syn"),
        [failed("ENOTCONN")],
        "{recs:?}"
    );
}

#[test]
fn enodata_where_no_byte_is_stored() {
    let recs = probe("enodata", &exchange(&Conn::v4()));
    let beyond = results(&recs, "beyond");
    assert_eq!(beyond, [failed("ENODATA"), failed("ENODATA")], "{recs:?}");
    // The same callbacks read offset 0: the request (100 bytes) and the reply (50).
    let at_zero = results(&recs, "at_zero");
    assert_eq!(at_zero, [(100, "0".to_string()), (50, "0".to_string())]);
}

#[test]
fn eperm_after_the_monitor_stopped_monitoring_the_flow() {
    let recs = probe("eperm", &exchange(&Conn::v4()));
    assert_eq!(
        results(&recs, "before_stop"),
        [(100, "0".to_string())],
        "{recs:?}"
    );
    assert_eq!(results(&recs, "stop_both"), [(0, "0".to_string())]);
    assert_eq!(results(&recs, "after_stop"), [failed("EPERM")]);
}

/// Client bytes [0, 100) and [200, 300) in one batch: NEW_DATA sees both fragments.
#[test]
fn short_reads_at_a_gap_and_offsets_inside_an_out_of_order_fragment() {
    let c = Conn::v4();
    let data = pattern(300, 7);
    let mut script: Vec<Vec<Seg>> = c.handshake().into_iter().map(|s| vec![s]).collect();
    script.push(vec![
        c.c(0, 0, ACK).data(&data[..100]),
        c.c(200, 0, ACK).data(&data[200..]),
    ]);
    let recs = probe("gap", &script);
    // The first CONN_NEW_DATA (the capture's end later skips the gap and raises another).
    let frag = recs
        .iter()
        .find(|r| r["what"] == "fragments")
        .expect("fragments");
    assert_eq!(
        (frag["ret"].as_i64(), frag["hex"].as_str()),
        (Some(2), Some("0+100,200+100"))
    );
    let hex = |b: &[u8]| {
        b.iter()
            .take(8)
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let one = |what: &str| {
        let r = recs
            .iter()
            .find(|r| r["what"] == what)
            .unwrap_or_else(|| panic!("{what}"));
        (
            r["ret"].as_i64().unwrap(),
            r["hex"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        one("from_zero"),
        (100, hex(&data[..100])),
        "stops at the gap"
    );
    assert_eq!(results(&recs, "in_gap")[0], failed("ENODATA"));
    assert_eq!(
        one("inside_ooo"),
        (50, hex(&data[250..])),
        "to the fragment's end"
    );
    assert_eq!(one("ooo_start"), (100, hex(&data[200..])));
}

// ---------------------------------------------------------------------------------------
// Filters, refusals
// ---------------------------------------------------------------------------------------

fn two_servers() -> Vec<Vec<Seg>> {
    let mut s = exchange(&Conn::new("10.0.0.1:40000", "10.0.0.2:80"));
    s.extend(exchange(&Conn::new("10.0.0.1:40001", "10.0.0.2:8080")));
    s
}

#[test]
fn a_bound_filter_narrows_the_flows_and_the_toml_overrides_it() {
    // mtcp_bind_monitor_filter(stream_syn_filter = "tcp port 8080").
    let recs = probe("filter", &two_servers());
    assert_eq!(
        results(&recs, "server_port"),
        [(8080, "0".to_string())],
        "{recs:?}"
    );
    // `filter = "tcp port 80"` in probe.toml wins over the bound filter.
    let dir = TempDir::new("probe-filter-toml");
    let logs = TempDir::new("probe-filter-toml-logs");
    place(
        &cc(&test_src("probe.c"), "probe"),
        dir.path(),
        "libprobe.so",
    );
    std::fs::write(
        dir.join("probe.toml"),
        "mode = filter\nfilter = \"tcp port 80\"\n",
    )
    .unwrap();
    let (mut host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, SEC, false).unwrap();
    let mut net = Net::new(Config::default(), &new_log(), monitors);
    for b in two_servers() {
        net.batch(&b);
    }
    net.engine.finish(EndReason::Eof);
    host.shutdown(&mut net.engine);
    host.flush();
    let recs = records(&logs.join("probe.jsonl"));
    assert_eq!(
        results(&recs, "server_port"),
        [(80, "0".to_string())],
        "{recs:?}"
    );
}

/// Opens a directory holding `libbad.so` built from `src`; returns the load failures.
fn load_failures(src: &str, toml: Option<&str>) -> Vec<String> {
    let dir = TempDir::new("c-refused");
    let logs = TempDir::new("c-refused-logs");
    place(
        &cc(&test_src(src), src.trim_end_matches(".c")),
        dir.path(),
        "libbad.so",
    );
    if let Some(t) = toml {
        std::fs::write(dir.join("bad.toml"), t).unwrap();
    }
    let (host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, SEC, false).unwrap();
    assert!(monitors.is_empty());
    host.failures
}

#[test]
fn init_returning_minus_one_refuses_the_plugin() {
    let f = load_failures("probe.c", Some("mode = refuse\n"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("mos_plugin_init returned -1"), "{f:?}");
}

#[test]
fn a_bad_bound_filter_refuses_the_plugin() {
    let f = load_failures("probe.c", Some("mode = badfilter\n"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("mos_plugin_init returned -1"), "{f:?}");
}

#[test]
fn a_library_of_neither_kind_is_refused_naming_both() {
    let f = load_failures("neither.c", None);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("export_monitor!") && f[0].contains("mos_plugin_init"),
        "{f:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The shipped stats monitor against the Rust midstat
// ---------------------------------------------------------------------------------------

#[test]
fn cmidstat_counts_equal_the_rust_midstat() {
    let dir = TempDir::new("cmidstat");
    place(
        &cc(&shipped("cmidstat.c"), "cmidstat"),
        dir.path(),
        "libcmidstat.so",
    );
    place(
        &build("flowpeek-plugin-midstat", "midstat", &[]),
        dir.path(),
        "midstat.so",
    );
    let conf = "interval_ms = 250\nmax_rows = 50\n";
    std::fs::write(dir.join("midstat.toml"), conf).unwrap();
    std::fs::write(dir.join("cmidstat.toml"), conf).unwrap();
    let mut rows = 0;
    for capture in [
        "gen/http-keepalive.pcap",
        "gen/mixed.pcap",
        "gen/http-small.pcap",
    ] {
        let logs = TempDir::new("cmidstat-logs");
        let stop = Arc::new(AtomicBool::new(false));
        let report = flowpeek::run::run(
            &run_opts(&corpus().join(capture), dir.path(), logs.path()),
            &stop,
            |_| {},
        )
        .unwrap();
        assert!(
            report.load_failures.is_empty(),
            "{:?}",
            report.load_failures
        );
        let c = records(&logs.join("cmidstat.jsonl"));
        let r = records(&logs.join("midstat.jsonl"));
        assert!(r.len() >= 2, "{capture}: {} Rust records", r.len());
        assert_eq!(c.len(), r.len(), "{capture}: record counts");
        for (k, (c, r)) in c.iter().zip(&r).enumerate() {
            assert_eq!(c, r, "{capture}: record {k}");
            rows += r["table"].as_array().unwrap().len();
        }
    }
    assert!(rows > 100, "{rows} rows compared");
}

// ---------------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------------

#[test]
fn a_c_plugin_hot_reloaded_under_traffic_with_the_binary() {
    let v1 = cc(&test_src("tagger.c"), "tagger");
    let v2 = cc(&test_src("tagger_v2.c"), "tagger");
    let dir = TempDir::new("c-reload");
    let logs = TempDir::new("c-reload-logs");
    let stats = logs.join("stats.json");
    place(&v1, dir.path(), "libtagger.so");
    let capture = corpus().join("gen/http-small.pcap");
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowpeek"))
        .arg("run")
        .arg(format!("--source=pcap:{}", capture.display()))
        .arg("--plugins")
        .arg(dir.path())
        .arg("--log-dir")
        .arg(logs.path())
        .arg("--stats")
        .arg(&stats)
        .args([
            "--pace",
            "25000",
            "--drain-timeout",
            "3600",
            "--quiet",
            "--cores",
            "1",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let tmp = dir.join("libtagger.so.tmp");
    std::fs::copy(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("libtagger.so")).unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("flowpeek run did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success());
    let recs = records(&logs.join("tagger.jsonl"));
    let first_v2 = recs
        .iter()
        .position(|r| r["tag"] == "v2")
        .expect("v2 records");
    assert!(
        !recs[first_v2..]
            .iter()
            .any(|r| r["tag"] == "v1" && r["ev"] == "start"),
        "new flows go to the newest generation"
    );
    let (v1n, v2n) = check_no_flow_switched(&recs);
    assert!(v1n > 0 && v2n > 0, "v1 {v1n}, v2 {v2n}");
    assert_eq!(v1n + v2n, 9000, "every connection, once");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let t = &s["plugins"]["tagger"];
    assert_eq!(t["generations"], 2, "{s}");
    assert!(t["retired"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["load_failures"].as_array().unwrap().len(), 0, "{s}");
}

#[test]
fn hot_reload_in_process_keeps_every_flow_on_its_generation() {
    let dir = TempDir::new("c-reload-lib");
    let logs = TempDir::new("c-reload-lib-logs");
    let file = place(
        &cc(&test_src("tagger.c"), "tagger"),
        dir.path(),
        "libtagger.so",
    );
    let v2 = cc(&test_src("tagger_v2.c"), "tagger");
    let (mut host, monitors) =
        PluginHost::open(dir.path(), logs.path(), 0, 3600 * SEC, false).unwrap();
    assert!(host.failures.is_empty(), "{:?}", host.failures);
    let cap = flowpeek::io::pcap::CaptureFile::open(&corpus().join("gen/http-small.pcap")).unwrap();
    let mut engine = flowpeek::flow::Engine::new(Config::default(), monitors);
    let mut during = Vec::new();
    for (i, p) in cap.packets().enumerate() {
        if i >= 40_000 && during.is_empty() && engine.stats().flows_live > 0 {
            engine.end_batch();
            host.apply(
                Update::Loaded {
                    file: file.clone(),
                    lib: load::load(&v2).unwrap(),
                    config: String::new(),
                },
                &mut engine,
            );
            during = host.live_generations()["tagger"].clone();
        }
        let p = p.unwrap();
        engine.on_frame(p.link, p.data, p.ts_nanos);
        if i % 32 == 31 {
            engine.end_batch();
        }
    }
    engine.end_batch();
    assert_eq!(during, ["v1", "v2"]);
    engine.finish(EndReason::Eof);
    assert_eq!(
        host.live_generations()["tagger"],
        ["v2"],
        "v1 retired after its last flow"
    );
    host.shutdown(&mut engine);
    host.flush();
    let st = host.stats()["tagger"].clone();
    assert_eq!((st.generations, st.retired), (2, 2), "{st:?}");
    let (v1n, v2n) = check_no_flow_switched(&records(&logs.join("tagger.jsonl")));
    assert!(
        v1n > 0 && v2n > 0 && v1n + v2n == 9000,
        "v1 {v1n}, v2 {v2n}"
    );
}

// ---------------------------------------------------------------------------------------
// User-defined events, per-flow registrations
// ---------------------------------------------------------------------------------------

/// mtcp_define_event on CONN_NEW_DATA with a filter that reads the flow (request side
/// only), a callback for it, and a child from mtcp_alloc_event raised from that callback.
#[test]
fn user_defined_events_filter_fire_and_raise() {
    let recs = probe("ude", &exchange(&Conn::v4()));
    // The filter ran (for the request, before its event), could ppeek, and could not peek
    // (a filter has no cursor of its own).
    assert_eq!(
        results(&recs, "filter_calls"),
        [(1, "0".to_string())],
        "{recs:?}"
    );
    assert_eq!(results(&recs, "filter_peek"), [failed("EACCES")]);
    assert_eq!(results(&recs, "filter_ppeek"), [(4, "0".to_string())]);
    // It let only the request side through; the child fired once from its callback.
    assert_eq!(
        results(&recs, "ude_side"),
        [(1, "0".to_string())],
        "{recs:?}"
    );
    assert_eq!(results(&recs, "raise"), [(0, "0".to_string())]);
    assert_eq!(results(&recs, "raised_side"), [(1, "0".to_string())]);
    // Defining the same (event, filter, arg) again gives the same event.
    assert_eq!(results(&recs, "same_event"), [(1, "0".to_string())]);
}

/// A NULL callback on a flow's socket unregisters for that flow only.
#[test]
fn a_null_callback_on_a_flow_socket_unregisters_that_flow_only() {
    let recs = probe("unreg", &two_servers());
    let ports: Vec<i64> = results(&recs, "data_port")
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ports, [80, 80], "{recs:?}");
    assert_eq!(results(&recs, "unregister"), [(0, "0".to_string())]);
}

/// The C template of plugins/template builds with the documented command and counts what
/// `flowpeek streams` counts.
#[test]
fn the_c_template_builds_and_counts_every_byte() {
    let dir = TempDir::new("c-template");
    let logs = TempDir::new("c-template-logs");
    let lib = cc(&workspace().join("plugins/template/monitor.c"), "monitor");
    place(&lib, dir.path(), "libmonitor.so");
    let capture = corpus().join("gen/http-keepalive.pcap");
    let stop = Arc::new(AtomicBool::new(false));
    let report =
        flowpeek::run::run(&run_opts(&capture, dir.path(), logs.path()), &stop, |_| {}).unwrap();
    assert!(
        report.load_failures.is_empty(),
        "{:?}",
        report.load_failures
    );
    let key = |r: &serde_json::Value, c2s: &serde_json::Value, s2c: &serde_json::Value| {
        format!("{} {} {c2s} {s2c}", r["client"], r["server"])
    };
    let mut got: Vec<String> = records(&logs.join("monitor.jsonl"))
        .iter()
        .map(|r| key(r, &r["c2s"], &r["s2c"]))
        .collect();
    let opts = flowpeek::streams::StreamsOptions {
        sha256: false,
        engine: big_config(),
        buffer: 1 << 18,
        write: None,
    };
    let want = flowpeek::streams::run(&capture, &opts, |_, _| {}).unwrap();
    let mut want: Vec<String> = want
        .records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            key(&v, &v["c2s"]["bytes"], &v["s2c"]["bytes"])
        })
        .collect();
    got.sort();
    want.sort();
    assert!(want.len() > 100, "{} connections", want.len());
    assert_eq!(got, want);
}

/// cstreams on 1 and 2 worker cores (one instance per core, each with its own context):
/// the same records, order aside.
#[test]
fn cstreams_gives_the_same_records_on_two_cores() {
    let dir = TempDir::new("cstreams-cores");
    place(
        &cc(&shipped("cstreams.c"), "cstreams"),
        dir.path(),
        "libcstreams.so",
    );
    let capture = corpus().join("gen/mixed.pcap");
    let mut outs = Vec::new();
    for cores in [1, 2] {
        let logs = TempDir::new("cstreams-cores-logs");
        let stop = Arc::new(AtomicBool::new(false));
        let opts = RunOptions {
            cores,
            ..run_opts(&capture, dir.path(), logs.path())
        };
        let report = flowpeek::run::run(&opts, &stop, |_| {}).unwrap();
        assert!(
            report.load_failures.is_empty(),
            "{:?}",
            report.load_failures
        );
        let mut recs: Vec<String> = records(&logs.join("cstreams.jsonl"))
            .iter()
            .map(|r| r.to_string())
            .collect();
        recs.sort();
        outs.push(recs);
    }
    assert!(outs[0].len() > 1000, "{} records", outs[0].len());
    assert_eq!(outs[0], outs[1]);
}

/// IPv6 flows: mtcp_getpeername gives sockaddr_in6 (flowpeek's addition; mOS 0.3 is IPv4
/// only), two of them for MOS_SIDE_BOTH, and EINVAL when the caller's room is a sockaddr_in.
#[test]
fn getpeername_gives_ipv6_addresses() {
    let recs = probe(
        "addr6",
        &exchange(&Conn::new("[2001:db8::1]:40000", "[2001:db8::2]:443")),
    );
    let n = std::mem::size_of::<libc::sockaddr_in6>() as i64;
    assert_eq!(
        results(&recs, "both_len"),
        [(2 * n, "0".to_string())],
        "{recs:?}"
    );
    assert_eq!(
        results(&recs, "cli_family_port"),
        [(40000, "0".to_string())]
    );
    assert_eq!(results(&recs, "svr_family_port"), [(443, "0".to_string())]);
    assert_eq!(results(&recs, "v6_into_sockaddr_in"), [failed("EINVAL")]);
}

/// A MOS_SOCK_MONITOR_RAW socket with MOS_ON_PKT_IN at MOS_NULL sees every packet once; its
/// socket is not a flow's (ESOCKTNOSUPPORT from mtcp_ppeek); mos_plugin_exit may emit.
#[test]
fn a_raw_socket_sees_every_packet() {
    let script = exchange(&Conn::v4());
    let packets = script.iter().map(Vec::len).sum::<usize>() as i64;
    let recs = probe("raw", &script);
    assert_eq!(
        results(&recs, "raw_packets"),
        [(packets, "0".to_string())],
        "{recs:?}"
    );
    assert_eq!(results(&recs, "raw_ppeek"), [failed("ESOCKTNOSUPPORT")]);
}

/// The callback time budget and the counters apply to C plugins: a callback that sleeps
/// 300 ms on every 40,000th packet, under a 50 ms budget, is an overrun each time.
#[test]
fn a_slow_c_callback_is_counted_under_the_budget() {
    use flowpeek::plugin::{CallBudget, OverrunPolicy};
    let dir = TempDir::new("c-slow");
    let logs = TempDir::new("c-slow-logs");
    place(
        &cc(&test_src("probe.c"), "probe"),
        dir.path(),
        "libprobe.so",
    );
    std::fs::write(dir.join("probe.toml"), "mode = slow\n").unwrap();
    let capture = corpus().join("gen/http-small.pcap");
    let stop = Arc::new(AtomicBool::new(false));
    let opts = RunOptions {
        budget: CallBudget {
            limit: std::time::Duration::from_millis(50),
            policy: OverrunPolicy::Warn,
        },
        ..run_opts(&capture, dir.path(), logs.path())
    };
    let report = flowpeek::run::run(&opts, &stop, |_| {}).unwrap();
    let p = &report.plugins["probe"];
    let sleeps = report.stats.packets / 40_000;
    assert!(sleeps >= 2, "{} packets", report.stats.packets);
    assert_eq!(
        p.overruns, sleeps,
        "each 300 ms callback and nothing else: {p:?}"
    );
    // Every packet (PKT_IN), the starts and both ends of every connection.
    assert!(p.events > report.stats.packets, "{p:?}");
    assert_eq!(p.generations, 1);
}
