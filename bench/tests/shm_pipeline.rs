//! The whole data path on this machine: the generator (a producer thread) writes realistic
//! traffic into netmap-layout shm rings; `flowpeek run --source shm:` consumes them on two
//! worker threads with the real streamhash plugin; every completed connection reassembles to
//! the bytes the generator sent.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use flowpeek::flow::Config;
use flowpeek::run::{RunOptions, Source};
use flowpeek_bench::gen::{imix, GenConfig, Generator};
use flowpeek_bench::out::{Output, OutputSpec};

#[path = "../../host/tests/plugin_util/mod.rs"]
mod plugin_util;

#[test]
fn generator_to_shm_to_two_workers_to_streamhash() {
    let cfg = GenConfig {
        flows: 300,
        sizes: imix(),
        conn_packets: 16,
        seed: 5,
        loss: 0.01,
        reorder: 0.01,
        retransmit: 0.01,
        checksums: false,
    };
    let expected = pipeline("two", cfg, 2, 100_000, 65536);
    assert!(expected > 1000, "{expected} connections");
}

/// 70,000 concurrent connections on one worker: past `PREFETCH_MIN_FLOWS`, so the worker
/// takes the lookahead path (`rx_batch_lookahead` with the engine's prefetch hints).
#[test]
fn seventy_thousand_flows_on_one_worker_take_the_lookahead_path() {
    let cfg = GenConfig {
        flows: 70_000,
        sizes: imix(),
        conn_packets: 4,
        seed: 9,
        loss: 0.0,
        reorder: 0.0,
        retransmit: 0.0,
        checksums: false,
    };
    assert!(cfg.flows as usize > flowpeek::flow::PREFETCH_MIN_FLOWS);
    let expected = pipeline("lookahead", cfg, 1, 1_200_000, 4096);
    assert!(expected >= 70_000, "{expected} connections");
}

/// Generator → `rings` shm rings → `flowpeek run` with streamhash: every packet once, and
/// every connection the generator finished hashes to what it sent. Returns how many.
fn pipeline(tag: &str, cfg: GenConfig, rings: usize, packets: u64, buffer: u32) -> usize {
    let dir = plugin_util::TempDir::new(&format!("shm-pipeline-{tag}"));
    let logs = plugin_util::TempDir::new(&format!("shm-pipeline-{tag}-logs"));
    plugin_util::place(&plugin_util::streamhash(), dir.path(), "streamhash.so");
    std::fs::write(dir.join("streamhash.toml"), format!("buffer = {buffer}\n")).unwrap();
    let name = format!("flowpeek-test-pipeline-{tag}-{}", std::process::id());
    let (ready_tx, ready_rx) = mpsc::channel();
    let spec = OutputSpec::Shm(name.clone());
    let producer = std::thread::spawn(move || {
        let mut out = Output::open(&spec, rings as u32, 1024).unwrap();
        ready_tx.send(()).unwrap();
        let mut gen = Generator::new(cfg);
        gen.record = true;
        let mut frame = vec![0u8; 2048];
        for _ in 0..packets {
            let n = gen.next(&mut frame);
            // A full ring: wait for the consumer (never drop: the streams are checked).
            while !out.send(&frame[..n], 0).unwrap() {
                std::thread::yield_now();
            }
        }
        let expected: Vec<_> = gen
            .finished
            .iter()
            .map(|c| {
                (
                    (c.client.to_string(), c.server.to_string()),
                    (
                        gen.expected(c.seed, true, c.c2s),
                        gen.expected(c.seed, false, c.s2c),
                    ),
                )
            })
            .collect();
        drop(out); // closes the region: the workers end when their rings are drained
        expected
    });
    ready_rx.recv().unwrap();
    let opts = RunOptions {
        source: Source::Shm(name),
        plugins: dir.path().into(),
        log_dir: logs.path().into(),
        engine: Config {
            tcp_timeout: 3600 * 1_000_000_000,
            ..Config::default()
        },
        pace: 0,
        loops: 1,
        drain_timeout: 3600 * 1_000_000_000,
        watch: false,
        cores: 1, // the region's ring count decides
        latency_sample: 0,
        budget: Default::default(),
        latency_warmup: 0,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let report = flowpeek::run::run(&opts, &stop, |_| {}).unwrap();
    let expected = producer.join().unwrap();
    assert_eq!(report.per_core.len(), rings, "one worker per ring");
    assert_eq!(report.stats.packets, packets, "every packet, exactly once");
    assert_eq!(report.stats.buffer_memory_refusals, 0, "{:?}", report.stats);
    assert!(report.per_core.iter().all(|c| c.packets > 0));
    let got: HashMap<(String, String), (String, String)> =
        plugin_util::records(&logs.join("streamhash.jsonl"))
            .into_iter()
            .map(|r| {
                (
                    (
                        r["client"].as_str().unwrap().to_string(),
                        r["server"].as_str().unwrap().to_string(),
                    ),
                    (
                        r["c2s"]["sha256"].as_str().unwrap().to_string(),
                        r["s2c"]["sha256"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect();
    for (key, want) in &expected {
        assert_eq!(got.get(key), Some(want), "{key:?}");
    }
    expected.len()
}
