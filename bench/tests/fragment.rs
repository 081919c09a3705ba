//! Fragmented captures give the streams of the clean capture: every connection of the real
//! traffic in shared/corpus/gen, its TCP packets cut into IP fragments by `flowpeek-bench
//! fragment` (2..=N per packet, every order, repeated fragments, overlaps whose bytes
//! agree), must reassemble to the same bytes (length and CRC-32 per direction) and the same
//! close as the unfragmented capture, connection by connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flowpeek::flow::Config;
use flowpeek::streams::{self, StreamRecord, StreamsOptions, StreamsReport};
use flowpeek_bench::fragment::{fragment_file, FragmentConfig};

#[path = "../../host/tests/plugin_util/mod.rs"]
mod plugin_util;

fn run(path: &Path) -> StreamsReport {
    let opts = StreamsOptions {
        write: None,
        engine: Config::default(),
        buffer: 256 * 1024,
        sha256: false,
    };
    let report = streams::run(path, &opts, |_, _| {}).expect("streams");
    assert!(report.capture_error.is_none(), "{:?}", report.capture_error);
    report
}

type Key = (String, String, usize);

/// Connections keyed by endpoints and their ordinal among connections with those endpoints.
fn by_key(recs: &[StreamRecord]) -> HashMap<Key, &StreamRecord> {
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut out = HashMap::new();
    for r in recs {
        let k = (r.client.to_string(), r.server.to_string());
        let n = seen.entry(k.clone()).or_insert(0);
        out.insert((k.0, k.1, *n), r);
        *n += 1;
    }
    out
}

fn same(a: &StreamRecord, b: &StreamRecord) -> bool {
    (a.c2s.bytes, a.c2s.crc32, a.s2c.bytes, a.s2c.crc32, a.close)
        == (b.c2s.bytes, b.c2s.crc32, b.s2c.bytes, b.s2c.crc32, b.close)
}

fn gen(name: &str) -> PathBuf {
    plugin_util::corpus().join("gen").join(name)
}

#[test]
fn fragmented_gen_captures_reassemble_like_the_clean_ones() {
    let dir = std::env::temp_dir().join(format!("flowpeek-fragment-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let modes = [
        (
            "2-in-order",
            FragmentConfig {
                max_fragments: 2,
                shuffle: false,
                ..FragmentConfig::default()
            },
        ),
        (
            "2..4-shuffled",
            FragmentConfig {
                max_fragments: 4,
                seed: 2,
                ..FragmentConfig::default()
            },
        ),
        (
            "2..8-shuffled+dup+overlap",
            FragmentConfig {
                max_fragments: 8,
                dup: 0.1,
                overlap: 0.3,
                seed: 3,
                ..FragmentConfig::default()
            },
        ),
    ];
    let mut failures = Vec::new();
    for capture in ["http-small.pcap", "http-keepalive.pcap", "mixed.pcap"] {
        let clean = run(&gen(capture));
        let want = by_key(&clean.records);
        for (label, cfg) in &modes {
            let out = dir.join(format!("{capture}.{label}.pcap"));
            let rep = fragment_file(&gen(capture), &out, cfg).expect("fragment");
            assert!(
                rep.fragmented > rep.packets_in / 4,
                "{capture} {label}: {rep:?}"
            );
            let got = run(&out);
            std::fs::remove_file(&out).ok();
            let d = got.stats.defrag;
            assert_eq!(d.overlaps_differing, 0, "{capture} {label}");
            if cfg.dup > 0.0 {
                // A copy sent after its datagram completed starts a new one, which may
                // complete again (the engine then sees a retransmission) or time out.
                assert!(
                    d.reassembled >= rep.fragmented as u64,
                    "{capture} {label}: {d:?}"
                );
                assert!(
                    d.duplicates > 0 && d.overlaps > 0,
                    "{capture} {label}: {d:?}"
                );
            } else {
                assert_eq!(
                    d.reassembled, rep.fragmented as u64,
                    "{capture} {label}: {d:?}"
                );
                assert_eq!(d.in_flight, 0, "{capture} {label}: {d:?}");
            }
            let have = by_key(&got.records);
            let exact = want
                .iter()
                .filter(|(k, r)| have.get(*k).is_some_and(|g| same(r, g)))
                .count();
            eprintln!(
                "{capture:>20} {label:<28} {exact:>6} of {:>6} exact, {} records, {} datagrams",
                want.len(),
                have.len(),
                d.reassembled
            );
            if exact != want.len() || have.len() != want.len() {
                failures.push(format!(
                    "{capture} {label}: {exact} of {} exact",
                    want.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A fragmented capture read by 1 and 3 worker threads (`flowpeek run`, the streamhash
/// plugin): every core reassembles every fragment and keeps the datagrams of its own flows,
/// so the records are those of the clean capture on one core, and every datagram is
/// processed once (the fragments are counted once).
#[test]
fn workers_reassemble_a_fragmented_capture_like_one_core() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use flowpeek::run::{RunOptions, Source};

    let dir = plugin_util::TempDir::new("fragment-workers");
    plugin_util::place(&plugin_util::streamhash(), dir.path(), "streamhash.so");
    let clean = gen("mixed.pcap");
    let frags = dir.join("mixed.fragmented.pcap");
    let cfg = FragmentConfig {
        max_fragments: 4,
        seed: 5,
        ..FragmentConfig::default()
    };
    let rep = fragment_file(&clean, &frags, &cfg).expect("fragment");
    let run = |capture: &Path, cores: usize| {
        let logs = plugin_util::TempDir::new("fragment-workers-logs");
        let opts = RunOptions {
            source: Source::Pcap(capture.into()),
            plugins: dir.path().into(),
            log_dir: logs.path().into(),
            engine: Config {
                tcp_timeout: 3600 * 1_000_000_000,
                buffer_capacity: 1 << 20,
                ..Config::default()
            },
            pace: 0,
            loops: 1,
            drain_timeout: 3600 * 1_000_000_000,
            watch: false,
            cores,
            latency_sample: 0,
            budget: Default::default(),
            latency_warmup: 0,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let report = flowpeek::run::run(&opts, &stop, |_| {}).expect("run");
        let mut lines: Vec<String> = std::fs::read_to_string(logs.join("streamhash.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        (lines, report.stats)
    };
    let (want, _) = run(&clean, 1);
    for cores in [1, 3] {
        let (got, stats) = run(&frags, cores);
        assert_eq!(
            stats.defrag.reassembled, rep.fragmented as u64,
            "{cores} cores"
        );
        assert_eq!(
            stats.packets as usize, rep.frames_out,
            "{cores} cores: every frame once"
        );
        assert_eq!(got.len(), want.len(), "{cores} cores");
        assert!(
            got == want,
            "{cores} cores: the records differ from the clean capture's"
        );
    }
}
