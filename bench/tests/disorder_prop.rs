//! Property: any permutation inside windows of up to 32 packets, with duplicates, of real
//! generated traffic (shared/corpus/gen/http-keepalive.pcap) gives the streams of the
//! clean capture, without a panic and within the engine's buffer-memory bound.

use std::path::Path;

use flowpeek::flow::Config;
use flowpeek::streams::{self, StreamsOptions, StreamsReport};
use flowpeek_bench::mangle::{mangle_file, MangleConfig};
use proptest::prelude::*;

#[path = "../../host/tests/plugin_util/mod.rs"]
mod plugin_util;

/// Receive-buffer memory of the engine: out-of-order data held for a gap must fit.
const MEMORY: u64 = 64 << 20;

fn run(path: &Path) -> StreamsReport {
    let opts = StreamsOptions {
        write: None,
        engine: Config {
            buffer_memory: MEMORY,
            ..Config::default()
        },
        buffer: 256 * 1024,
        sha256: false,
    };
    let report = streams::run(path, &opts, |_, _| {}).expect("streams");
    assert!(report.capture_error.is_none(), "{:?}", report.capture_error);
    report
}

/// (client, server, close, c2s bytes and CRC, s2c bytes and CRC) per connection, sorted.
fn summary(r: &StreamsReport) -> Vec<String> {
    let mut v: Vec<String> = r
        .records
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {:08x} {} {:08x}",
                r.client, r.server, r.close, r.c2s.bytes, r.c2s.crc32, r.s2c.bytes, r.s2c.crc32
            )
        })
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn permuted_and_duplicated_traffic_gives_the_clean_streams(
        window in 2usize..=32,
        dup in 0.0f64..0.1,
        seed in any::<u64>(),
    ) {
        let clean_path = plugin_util::corpus().join("gen/http-keepalive.pcap");
        let dir = std::env::temp_dir().join(format!("flowpeek-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join(format!("{window}-{seed}.pcap"));
        let cfg = MangleConfig { window, dup, seed, ..MangleConfig::default() };
        mangle_file(&clean_path, &out, &cfg).expect("mangle");
        let clean = run(&clean_path);
        let mangled = run(&out);
        std::fs::remove_file(&out).ok();
        prop_assert_eq!(summary(&mangled), summary(&clean));
        let s = &mangled.stats;
        prop_assert_eq!(s.buffer_memory_refusals, 0, "held data beyond {} bytes", MEMORY);
        prop_assert_eq!(s.buffer_bytes, 0, "buffers left after the run");
        prop_assert_eq!(s.bytes_missing, clean.stats.bytes_missing);
    }
}
