//! Latency stamping checked against a known delay: frames stamped at push time, consumed
//! 20 ms later, must show a latency of at least 20 ms (and not absurdly more).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use flowpeek::flow::Config;
use flowpeek::run::{RunOptions, Source};
use flowpeek_bench::gen::{GenConfig, Generator};
use flowpeek_bench::out::{Output, OutputSpec};

const DELAY: Duration = Duration::from_millis(20);

/// Pushes `n` stamped frames into a new one-ring region, waits DELAY, closes the region but
/// keeps its file (a consumer opened afterwards drains it and stops).
fn stamped_region(tag: &str, n: usize) -> String {
    let name = format!("flowpeek-test-latency-{tag}-{}", std::process::id());
    let mut out = Output::open(&OutputSpec::Shm(name.clone()), 1, 1024).unwrap();
    let mut gen = Generator::new(GenConfig {
        flows: 10,
        sizes: vec![64],
        conn_packets: 0,
        seed: 3,
        loss: 0.0,
        reorder: 0.0,
        retransmit: 0.0,
        checksums: false,
    });
    let mut frame = vec![0u8; 2048];
    for _ in 0..n {
        let len = gen.next(&mut frame);
        assert!(out.send(&frame[..len], 0).unwrap(), "the ring has room");
    }
    std::thread::sleep(DELAY);
    if let Output::Shm { producer, .. } = &mut out {
        producer.keep_file(true);
    }
    drop(out);
    name
}

struct Remove(String);
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
    }
}

fn empty_dir(tag: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = std::env::temp_dir().join(format!("flowpeek-latency-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn opts(name: &str, plugins: &std::path::Path, sample: u64) -> RunOptions {
    RunOptions {
        source: Source::Shm(name.into()),
        plugins: plugins.into(),
        log_dir: plugins.join("logs"),
        engine: Config::default(),
        pace: 0,
        loops: 1,
        drain_timeout: 1_000_000_000,
        watch: false,
        cores: 1,
        latency_sample: sample,
        budget: Default::default(),
        latency_warmup: 0,
    }
}

#[test]
fn flowpeek_run_latency_shows_a_known_delay() {
    let name = stamped_region("run", 500);
    let _rm = Remove(name.clone());
    let dir = empty_dir("run");
    let stop = Arc::new(AtomicBool::new(false));
    let report = flowpeek::run::run(&opts(&name, &dir, 1), &stop, |_| {}).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(report.stats.packets, 500);
    let h = report.latency.as_ref().expect("sampling was on");
    assert_eq!(h.len(), 500, "every packet sampled (--latency-sample 1)");
    let delay = DELAY.as_nanos() as u64;
    assert!(
        h.value_at_quantile(0.5) >= delay,
        "p50 {} ns",
        h.value_at_quantile(0.5)
    );
    assert!(h.min() >= delay * 999 / 1000, "min {} ns", h.min());
    assert!(h.max() < 5_000_000_000, "max {} ns", h.max());
    let j = report.to_json();
    let l = &j["latency_ns"];
    assert_eq!(l["samples"], 500);
    for k in ["p50", "p99", "p999", "max"] {
        assert!(l[k].as_u64().unwrap() >= delay * 999 / 1000, "{k}: {l}");
    }
}

#[test]
fn every_nth_packet_and_off_by_default() {
    let name = stamped_region("nth", 640);
    let _rm = Remove(name.clone());
    let dir = empty_dir("nth");
    let stop = Arc::new(AtomicBool::new(false));
    let report = flowpeek::run::run(&opts(&name, &dir, 64), &stop, |_| {}).unwrap();
    assert_eq!(report.latency.as_ref().unwrap().len(), 10, "640 / 64");
    let name = stamped_region("off", 100);
    let _rm2 = Remove(name.clone());
    let report = flowpeek::run::run(&opts(&name, &dir, 0), &stop, |_| {}).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(report.latency.is_none());
    assert!(report.to_json()["latency_ns"].is_null());
}

#[test]
fn null_consumer_latency_shows_a_known_delay() {
    let name = stamped_region("null", 300);
    let _rm = Remove(name.clone());
    let r = flowpeek_bench::null::consume(&name, 1).unwrap();
    assert_eq!(r.per_ring, vec![(300, 300 * 64)]);
    let h = r.latency.unwrap();
    assert_eq!(h.len(), 300);
    assert!(h.value_at_quantile(0.5) >= DELAY.as_nanos() as u64);
}
