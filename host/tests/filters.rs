//! Stream filters (SPEC §2.3), end to end: `--filter` on `streams`, `events` and `run`
//! against tcpdump's own selection of the same expression on corpus captures; a plugin
//! filtered by its `<name>.toml` beside one that is not; a hot reload that changes only
//! the filter; bad expressions refused with libpcap's message. Needs tcpdump (.ci/run
//! installs it).

mod plugin_util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use flowpeek::filter::StreamFilter;
use flowpeek::flow::{Config, EndReason};
use flowpeek::plugin::{load, PluginHost, Update};
use flowpeek::run::{RunOptions, Source};
use plugin_util::*;

const SEC: u64 = 1_000_000_000;

fn flowpeek(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowpeek"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        err,
    )
}

/// `flowpeek streams --json` records of `capture` (with `extra` options), parsed and sorted.
fn streams(capture: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["streams", capture.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = flowpeek(&args);
    assert_eq!(code, 0, "{err}");
    let mut v: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    v.sort_by_key(|r| r.to_string());
    v
}

/// The packets of `capture` that tcpdump selects with `expr`, as a new capture in `dir`.
fn tcpdump(capture: &Path, expr: &str, dir: &Path) -> PathBuf {
    let out = dir.join("selected.pcap");
    let st = Command::new("tcpdump")
        .args([
            "-r",
            capture.to_str().unwrap(),
            "-w",
            out.to_str().unwrap(),
            expr,
        ])
        .output()
        .expect("tcpdump is needed by these tests (.ci/run installs it)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

/// For each (capture, expression): `flowpeek streams -f EXPR` gives the same records as
/// `flowpeek streams` on tcpdump's selection. The expressions match every packet of a
/// connection or none, so the two must agree on every byte and every field; and each
/// selects some connections but not all, so the filter is seen to act.
#[test]
fn streams_filter_is_tcpdumps_selection() {
    let c = corpus();
    let cases = [
        ("gen/mixed.pcap", "tcp port 80"),
        ("gen/mixed.pcap", "portrange 5200-5210"),
        ("public/zeek/ssh/ssh.pcap", "net 10.0.0.0/8"),
        ("public/zeek/ssh/ssh.pcap", "not port 22"),
        ("public/zeek/ftp/ipv6.pcap", "ip6 and tcp port 21"),
        ("public/zeek/ftp/ipv6.pcap", "ip6 and not port 21"),
        ("public/zeek/mixed-vlan-mpls.pcap", "vlan and tcp"),
    ];
    for (file, expr) in cases {
        let capture = c.join(file);
        let dir = TempDir::new("sel");
        let want = streams(&tcpdump(&capture, expr, dir.path()), &[]);
        let got = streams(&capture, &["-f", expr]);
        let all = streams(&capture, &[]);
        assert!(
            !got.is_empty() && got.len() < all.len(),
            "{file} {expr:?}: {} of {}",
            got.len(),
            all.len()
        );
        assert_eq!(got, want, "{file} {expr:?}");
        // The long form is the same option.
        assert_eq!(
            streams(&capture, &["--filter", expr]),
            got,
            "{file} {expr:?}"
        );
    }
}

/// `host A and dst port B` matches only the client's packets: tcpdump's selection has no
/// server bytes, while the filter, decided on the SYN, tracks both directions. The
/// connections and their client-to-server bytes are the same.
#[test]
fn a_one_direction_expression_selects_the_connections() {
    let capture = corpus().join("gen/mixed.pcap");
    let expr = "host 198.18.0.1 and dst port 5201";
    let dir = TempDir::new("dir");
    let key = |r: &serde_json::Value| {
        (
            r["client"].to_string(),
            r["server"].to_string(),
            r["c2s"].to_string(),
        )
    };
    let want: BTreeSet<_> = streams(&tcpdump(&capture, expr, dir.path()), &[])
        .iter()
        .map(key)
        .collect();
    let got = streams(&capture, &["-f", expr]);
    assert!(!want.is_empty());
    assert_eq!(got.iter().map(key).collect::<BTreeSet<_>>(), want);
    assert!(
        got.iter().any(|r| r["s2c"]["bytes"].as_u64() > Some(0)),
        "both directions tracked"
    );
}

#[test]
fn events_takes_the_filter() {
    let capture = corpus().join("gen/mixed.pcap");
    let path = capture.to_str().unwrap();
    let (code, all, err) = flowpeek(&["events", path]);
    assert_eq!(code, 0, "{err}");
    let (code, some, err) = flowpeek(&["events", path, "-f", "tcp port 5202"]);
    assert_eq!(code, 0, "{err}");
    let (n_all, n_some) = (all.lines().count(), some.lines().count());
    assert!(n_some > 0 && n_some * 10 < n_all, "{n_some} of {n_all}");
}

#[test]
fn a_bad_expression_is_refused_with_libpcaps_message() {
    let capture = corpus().join("gen/mixed.pcap");
    let dir = TempDir::new("bad-cli");
    for args in [
        vec!["streams", capture.to_str().unwrap(), "-f", "tcp prot 80"],
        vec![
            "events",
            capture.to_str().unwrap(),
            "--filter",
            "tcp prot 80",
        ],
        vec![
            "run",
            "--source",
            "pcap:x.pcap",
            "--plugins",
            dir.path().to_str().unwrap(),
            "-f",
            "tcp prot 80",
        ],
    ] {
        let (code, _, err) = flowpeek(&args);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("\"tcp prot 80\"") && err.contains("syntax error"),
            "{err}"
        );
    }
    let e = StreamFilter::new("port 70000").unwrap_err();
    assert!(
        e.to_string().contains("port 70000") && !e.message.is_empty(),
        "{e}"
    );
}

fn run_opts(capture: &Path, plugins: &Path, logs: &Path) -> RunOptions {
    RunOptions {
        source: Source::Pcap(capture.into()),
        plugins: plugins.into(),
        log_dir: logs.into(),
        engine: Config {
            tcp_timeout: 3600 * SEC,
            max_flows: 1 << 20,
            buffer_capacity: 1 << 20,
            buffer_memory: 8 << 30,
            ..Config::default()
        },
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

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = records(path).iter().map(|r| r.to_string()).collect();
    v.sort();
    v
}

fn streams_lib(capture: &Path, filter: Option<&str>) -> Vec<String> {
    let opts = flowpeek::streams::StreamsOptions {
        write: None,
        sha256: true,
        engine: Config {
            filter: filter.map(|f| StreamFilter::new(f).unwrap()),
            ..run_opts(capture, Path::new("."), Path::new(".")).engine
        },
        buffer: 1 << 18,
    };
    let mut v: Vec<String> = flowpeek::streams::run(capture, &opts, |_, _| {})
        .unwrap()
        .records
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.to_json())
                .unwrap()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

/// The client and server ports of a tagger record's flow ("c:p>s:p").
fn ports(r: &serde_json::Value) -> (u16, u16) {
    let flow = r["flow"].as_str().unwrap();
    let (c, s) = flow.split_once('>').unwrap();
    let port = |a: &str| a.rsplit(':').next().unwrap().parse().unwrap();
    (port(c), port(s))
}

/// `run` with `--filter`: the streamhash plugin sees only the selected connections, the
/// same as `streams` with the filter; the refused ones are counted.
#[test]
fn run_applies_the_filter_before_every_plugin() {
    let dir = TempDir::new("run-f");
    let logs = TempDir::new("run-f-logs");
    place(&streamhash(), dir.path(), "streamhash.so");
    let capture = corpus().join("gen/mixed.pcap");
    let mut opts = run_opts(&capture, dir.path(), logs.path());
    opts.engine.filter = Some(StreamFilter::new("portrange 5200-5210").unwrap());
    let report = flowpeek::run::run(&opts, &Arc::new(AtomicBool::new(false)), |_| {}).unwrap();
    assert!(
        report.load_failures.is_empty(),
        "{:?}",
        report.load_failures
    );
    let got = sorted_lines(&logs.join("streamhash.jsonl"));
    let want = streams_lib(&capture, Some("portrange 5200-5210"));
    assert_eq!(got.len(), 5);
    assert_eq!(got, want);
    assert!(report.stats.filtered >= 1541, "{:?}", report.stats);
    assert_eq!(
        report.to_json()["filtered"],
        report.stats.filtered,
        "{}",
        report.to_json()
    );
}

/// tagger filtered by its tagger.toml, streamhash not, on the same run: streamhash sees
/// every connection, tagger only the port-5201/5202 ones, and no flow is refused outright.
#[test]
fn one_plugin_filtered_and_another_not() {
    let dir = TempDir::new("per-plugin");
    let logs = TempDir::new("per-plugin-logs");
    place(&streamhash(), dir.path(), "streamhash.so");
    place(&tagger(&[]), dir.path(), "tagger.so");
    std::fs::write(
        dir.join("tagger.toml"),
        "filter = \"tcp portrange 5201-5202\"\n",
    )
    .unwrap();
    let capture = corpus().join("gen/mixed.pcap");
    let report = flowpeek::run::run(
        &run_opts(&capture, dir.path(), logs.path()),
        &Arc::new(AtomicBool::new(false)),
        |_| {},
    )
    .unwrap();
    assert!(
        report.load_failures.is_empty(),
        "{:?}",
        report.load_failures
    );
    assert_eq!(
        sorted_lines(&logs.join("streamhash.jsonl")),
        streams_lib(&capture, None)
    );
    let tags = records(&logs.join("tagger.jsonl"));
    let flows = plugin_util::flows(&tags);
    assert_eq!(
        flows.len(),
        streams_lib(&capture, Some("tcp portrange 5201-5202")).len()
    );
    assert!(
        tags.iter().all(|r| matches!(ports(r).1, 5201 | 5202)),
        "only the filtered flows"
    );
    assert_eq!(report.stats.filtered, 0, "streamhash wants every flow");
}

#[test]
fn a_bad_filter_in_the_toml_refuses_the_plugin() {
    let dir = TempDir::new("bad-toml");
    let logs = TempDir::new("bad-toml-logs");
    place(&tagger(&[]), dir.path(), "tagger.so");
    std::fs::write(dir.join("tagger.toml"), "filter = \"tcp prot 80\"\n").unwrap();
    let (host, monitors) = PluginHost::open(dir.path(), logs.path(), 0, 30 * SEC, false).unwrap();
    assert!(monitors.is_empty());
    assert_eq!(host.failures.len(), 1, "{:?}", host.failures);
    let msg = &host.failures[0];
    assert!(
        msg.contains("tagger") && msg.contains("\"tcp prot 80\"") && msg.contains("syntax error"),
        "{msg}"
    );
}

/// A reload of the same library whose tagger.toml now says `filter = "not port 80"`: the
/// flows open at the reload stay with the plugin to their end; of the flows after it,
/// only the non-port-80 ones reach it.
#[test]
fn a_hot_reload_that_changes_only_the_filter() {
    let dir = TempDir::new("reload-filter");
    let logs = TempDir::new("reload-filter-logs");
    let file = place(&tagger(&[]), dir.path(), "tagger.so");
    let capture = corpus().join("gen/mixed.pcap");
    let (mut host, monitors) =
        PluginHost::open(dir.path(), logs.path(), 0, 3600 * SEC, false).unwrap();
    let cap = flowpeek::io::pcap::CaptureFile::open(&capture).unwrap();
    let mut engine = flowpeek::flow::Engine::new(Config::default(), monitors);
    let mut filtered_at_reload = None;
    for (i, p) in cap.packets().enumerate() {
        if i == 20_000 {
            engine.end_batch();
            filtered_at_reload = Some(engine.stats().filtered);
            host.apply(
                Update::Loaded {
                    file: file.clone(),
                    lib: load::load(&file).unwrap(),
                    config: "filter = \"not port 80\"\n".into(),
                },
                &mut engine,
            );
        }
        let p = p.unwrap();
        engine.on_frame(p.link, p.data, p.ts_nanos);
        if i % 32 == 31 {
            engine.end_batch();
        }
    }
    engine.end_batch();
    engine.finish(EndReason::Eof);
    assert_eq!(filtered_at_reload, Some(0));
    assert!(
        engine.stats().filtered > 0,
        "port-80 flows after the reload are refused"
    );
    host.shutdown(&mut engine);
    host.flush();
    let recs = records(&logs.join("tagger.jsonl"));
    let (v1, _) = check_no_flow_switched(&recs);
    let flows = plugin_util::flows(&recs);
    let all80 = streams_lib(&capture, Some("tcp port 80")).len();
    let logged80 = flows.keys().filter(|k| k.contains(":80#")).count();
    assert!(
        logged80 > 0 && logged80 < all80,
        "{logged80} of {all80} port-80 flows"
    );
    assert_eq!(v1, flows.len());
    let others = streams_lib(&capture, Some("not port 80")).len();
    assert_eq!(
        flows.len() - logged80,
        others,
        "every other flow, before and after"
    );
}
