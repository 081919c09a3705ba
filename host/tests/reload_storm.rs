//! A reload storm: 100 in-process reloads of the tagger plugin (alternating v1 and v2)
//! while http-small.pcap goes through an engine. Every flow must stay on the generation it
//! started on, every generation must retire, and memory must stay bounded. Each load maps a
//! new library image that is never unloaded (see `plugin::load`): the retained-image count
//! grows by one per load, by design.

mod plugin_util;

use flowpeek::flow::{Config, EndReason, Engine};
use flowpeek::io::pcap::CaptureFile;
use flowpeek::plugin::{load, PluginHost, Update};
use plugin_util::*;

const SEC: u64 = 1_000_000_000;
const RELOADS: usize = 100;

/// Resident set size of this process (bytes), from /proc/self/statm.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn a_hundred_reloads_under_traffic() {
    let v1 = tagger(&[]);
    let v2 = tagger(&["v2"]);
    let dir = TempDir::new("storm");
    let logs = TempDir::new("storm-logs");
    let file = place(&v1, dir.path(), "tagger.so");
    let capture = corpus().join("gen/http-small.pcap");
    let packets: Vec<_> = {
        let cap = CaptureFile::open(&capture).unwrap();
        cap.packets()
            .map(|p| {
                let p = p.unwrap();
                (p.link, p.data.to_vec(), p.ts_nanos)
            })
            .collect()
    };
    let every = packets.len() / (RELOADS + 1);

    let images0 = load::retained_images();
    let rss0 = rss_bytes();
    let (mut host, monitors) =
        PluginHost::open(dir.path(), logs.path(), 0, 3600 * SEC, false).unwrap();
    assert!(host.failures.is_empty(), "{:?}", host.failures);
    let mut engine = Engine::new(Config::default(), monitors);
    let started = std::time::Instant::now();
    let mut reloads = 0;
    let mut max_live_gens = 0;
    let mut rss_mid = Vec::new();
    for (i, (link, data, ts)) in packets.iter().enumerate() {
        if i > 0 && i % every == 0 && reloads < RELOADS {
            engine.end_batch();
            reloads += 1;
            let lib = if reloads % 2 == 1 { &v2 } else { &v1 };
            host.apply(
                Update::Loaded {
                    file: file.clone(),
                    lib: load::load(lib).unwrap(),
                    config: String::new(),
                },
                &mut engine,
            );
            let live = host.live_generations().get("tagger").map_or(0, |g| g.len());
            max_live_gens = max_live_gens.max(live);
            if reloads % 25 == 0 {
                rss_mid.push(rss_bytes());
            }
        }
        engine.on_frame(*link, data, *ts);
        if i % 32 == 31 {
            engine.end_batch();
        }
    }
    engine.end_batch();
    engine.finish(EndReason::Eof);
    host.shutdown(&mut engine);
    host.flush();
    let elapsed = started.elapsed();
    let rss1 = rss_bytes();
    let images = load::retained_images() - images0;

    assert_eq!(reloads, RELOADS);
    assert!(host.failures.is_empty(), "{:?}", host.failures);
    let st = host.stats()["tagger"].clone();
    assert_eq!(st.generations, RELOADS as u64 + 1, "{st:?}");
    assert_eq!(
        st.retired,
        RELOADS as u64 + 1,
        "every generation retired: {st:?}"
    );
    assert_eq!(st.failures, 0);
    assert_eq!(
        st.drained_flows, 0,
        "no flow was cut off by a drain deadline"
    );
    assert!(host
        .live_generations()
        .get("tagger")
        .is_none_or(|g| g.is_empty()));
    assert_eq!(images, RELOADS as u64 + 1, "one retained image per load");

    let recs = records(&logs.join("tagger.jsonl"));
    assert_eq!(st.records, recs.len() as u64);
    let (n1, n2) = check_no_flow_switched(&recs);
    assert_eq!(n1 + n2, 9000, "every connection of http-small, once");
    assert!(n1 > 0 && n2 > 0);
    let growth = rss1.saturating_sub(rss0);
    eprintln!(
        "reload storm: {RELOADS} reloads in {:.2} s, generations {}, retired {}, max live \
         generations {max_live_gens}, flows v1 {n1} / v2 {n2}, records {}, retained images +{images}, \
         RSS {:.1} MiB -> {:?} -> {:.1} MiB (growth {:.1} MiB, {:.0} KiB per load)",
        elapsed.as_secs_f64(),
        st.generations,
        st.retired,
        recs.len(),
        rss0 as f64 / 1048576.0,
        rss_mid
            .iter()
            .map(|r| format!("{:.1}", *r as f64 / 1048576.0))
            .collect::<Vec<_>>(),
        rss1 as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        growth as f64 / 1024.0 / images as f64,
    );
    assert!(
        growth < 200 << 20,
        "RSS grew by {} MiB over {RELOADS} reloads",
        growth >> 20
    );
}
