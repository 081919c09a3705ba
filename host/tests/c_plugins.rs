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

// ---------------------------------------------------------------------------------------
// Every errno of the man page, from C
// ---------------------------------------------------------------------------------------

/// Runs the probe monitor in `mode` over `script` (batches of segments); returns its records.
fn probe(mode: &str, script: &[Vec<Seg>]) -> Vec<serde_json::Value> {
    let dir = TempDir::new(&format!("probe-{mode}"));
    let logs = TempDir::new(&format!("probe-{mode}-logs"));
    place(&cc(&test_src("probe.c"), "probe"), dir.path(), "libprobe.so");
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
        .map(|r| (r["ret"].as_i64().unwrap(), r["errno"].as_str().unwrap().to_string()))
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
    assert_eq!(results(&recs, "never_a_socket"), [failed("EBADF"), failed("EBADF")]);
    assert_eq!(results(&recs, "negative"), [failed("EBADF"), failed("EBADF")]);
    // The second connection reads through the first one's socket, ended by then.
    assert_eq!(results(&recs, "ended_flow"), [failed("EBADF")], "{recs:?}");
}

#[test]
fn einval_for_a_disabled_buffer_a_bad_side_and_a_wrong_hook() {
    let recs = probe("einval", &exchange(&Conn::v4()));
    assert_eq!(results(&recs, "disable_svrbuf"), [(0, "0".to_string())], "{recs:?}");
    assert_eq!(results(&recs, "disabled_side"), [failed("EINVAL")]);
    assert_eq!(results(&recs, "bad_side"), [failed("EINVAL")]);
    // mOS's event/hook rule: CONN_NEW_DATA only at MOS_NULL.
    assert_eq!(results(&recs, "init_bad_hook"), [failed("EINVAL")]);
}

#[test]
fn esocktnosupport_for_the_monitoring_socket() {
    let recs = probe("esocktnosupport", &exchange(&Conn::v4()));
    assert_eq!(results(&recs, "monitoring_socket"), [failed("ESOCKTNOSUPPORT")], "{recs:?}");
}

#[test]
fn enotconn_for_a_side_whose_stream_does_not_exist_yet() {
    let recs = probe("enotconn", &exchange(&Conn::v4()));
    // At the client's SYN (CONN_START, MOS_HK_SND) the server has received nothing yet.
    assert_eq!(results(&recs, "svr_at_syn"), [failed("ENOTCONN")], "{recs:?}");
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
    assert_eq!(results(&recs, "before_stop"), [(100, "0".to_string())], "{recs:?}");
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
    let frag = recs.iter().find(|r| r["what"] == "fragments").expect("fragments");
    assert_eq!((frag["ret"].as_i64(), frag["hex"].as_str()), (Some(2), Some("0+100,200+100")));
    let hex = |b: &[u8]| b.iter().take(8).map(|x| format!("{x:02x}")).collect::<String>();
    let one = |what: &str| {
        let r = recs.iter().find(|r| r["what"] == what).unwrap_or_else(|| panic!("{what}"));
        (r["ret"].as_i64().unwrap(), r["hex"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(one("from_zero"), (100, hex(&data[..100])), "stops at the gap");
    assert_eq!(results(&recs, "in_gap")[0], failed("ENODATA"));
    assert_eq!(one("inside_ooo"), (50, hex(&data[250..])), "to the fragment's end");
    assert_eq!(one("ooo_start"), (100, hex(&data[200..])));
}
