//! The generator's output, reassembled by the engine, equals what the generator says it sent.

use std::collections::HashMap;

use flowpeek::flow::Config;
use flowpeek::streams::{self, StreamsOptions};
use flowpeek_bench::gen::{imix, GenConfig, Generator};
use flowpeek_bench::out::{Output, OutputSpec};

fn check(cfg: GenConfig, packets: u64) -> usize {
    let path = std::env::temp_dir().join(format!(
        "flowpeek-gen-{}-{}.pcap",
        std::process::id(),
        cfg.seed
    ));
    let mut gen = Generator::new(cfg);
    gen.record = true;
    let mut out = Output::open(&OutputSpec::Pcap(path.clone()), 1, 2).unwrap();
    let mut frame = vec![0u8; 2048];
    for i in 0..packets {
        let n = gen.next(&mut frame);
        assert!(out.send(&frame[..n], 1_000_000_000 + i * 1000).unwrap());
    }
    out.finish().unwrap();
    let opts = StreamsOptions {
        write: None,
        sha256: true,
        engine: Config {
            max_flows: 1 << 16,
            ..Config::default()
        },
        buffer: 1 << 16,
    };
    let report = streams::run(&path, &opts, |_, _| {}).unwrap();
    std::fs::remove_file(&path).unwrap();
    let got: HashMap<(String, String), _> = report
        .records
        .iter()
        .map(|r| ((r.client.to_string(), r.server.to_string()), r))
        .collect();
    assert!(!gen.finished.is_empty());
    for c in &gen.finished {
        let r = got
            .get(&(c.client.to_string(), c.server.to_string()))
            .unwrap_or_else(|| panic!("no record for {}", c.client));
        assert_eq!(r.c2s.bytes, c.c2s, "{c:?}");
        assert_eq!(r.s2c.bytes, c.s2c, "{c:?}");
        assert_eq!(r.c2s.sha256, gen.expected(c.seed, true, c.c2s), "{c:?}");
        assert_eq!(r.s2c.sha256, gen.expected(c.seed, false, c.s2c), "{c:?}");
        assert_eq!((r.c2s.missing, r.s2c.missing), (0, 0), "{c:?}");
        assert_eq!(r.close, "fin");
        assert!(!r.partial);
    }
    gen.finished.len()
}

#[test]
fn clean_traffic_reassembles_to_the_seeds() {
    let n = check(
        GenConfig {
            flows: 100,
            sizes: vec![64, 600, 1514],
            conn_packets: 10,
            seed: 7,
            ..GenConfig::default()
        },
        30_000,
    );
    assert!(n > 1000, "{n} connections");
}

#[test]
fn loss_reordering_and_retransmission_keep_the_streams_exact() {
    let cfg = GenConfig {
        flows: 40,
        sizes: imix(),
        conn_packets: 20,
        seed: 11,
        loss: 0.03,
        reorder: 0.03,
        retransmit: 0.03,
        checksums: true,
    };
    let n = check(cfg, 40_000);
    assert!(n > 500, "{n} connections");
}

#[test]
fn checksums_are_right_when_asked() {
    let mut gen = Generator::new(GenConfig {
        flows: 3,
        sizes: vec![300],
        checksums: true,
        seed: 3,
        ..GenConfig::default()
    });
    let mut frame = vec![0u8; 2048];
    for _ in 0..200 {
        let n = gen.next(&mut frame);
        let flowpeek::wire::Decoded::Tcp(seg) =
            flowpeek::wire::decode(flowpeek::wire::LinkType::Ethernet, &frame[..n]).unwrap()
        else {
            panic!("not TCP")
        };
        assert_eq!(
            flowpeek::wire::tcp_checksum_ok(&frame[..n], &seg),
            Some(true)
        );
        assert_eq!(
            flowpeek::wire::ipv4_header_checksum_ok(&frame[..n], &seg),
            Some(true)
        );
    }
}
