//! Disorderly captures give the streams of the clean capture: every connection of the real
//! traffic in shared/corpus/gen, reordered by `flowpeek-bench mangle` in each of its modes,
//! must reassemble to the same bytes (length and CRC-32 per direction) and the same close
//! as the unmangled capture, connection by connection, with no extra record; the misses
//! left are named in [`KNOWN`] with their reason (docs/SPEC.md §3.1). About 10 s with the
//! test profile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flowpeek::flow::Config;
use flowpeek::streams::{self, StreamRecord, StreamsOptions};
use flowpeek_bench::mangle::{mangle_file, MangleConfig};

#[path = "../../host/tests/plugin_util/mod.rs"]
mod plugin_util;

fn records(path: &Path) -> Vec<StreamRecord> {
    let (records, error) = records_and_error(path);
    assert!(error.is_none(), "{error:?}");
    records
}

/// The records, and the damage that ended the capture early, if any.
fn records_and_error(path: &Path) -> (Vec<StreamRecord>, Option<String>) {
    records_lingering(path, Config::default().rst_linger)
}

/// As [`records_and_error`], with a RST lingering at most `rst_linger` ns.
fn records_lingering(path: &Path, rst_linger: u64) -> (Vec<StreamRecord>, Option<String>) {
    // As `flowpeek streams` sets them: 256 KiB per side, in the engine too.
    let buffer = 256 * 1024;
    let opts = StreamsOptions {
        write: None,
        engine: Config {
            buffer_capacity: buffer,
            rst_linger,
            ..Config::default()
        },
        buffer,
        sha256: false,
    };
    let report = streams::run(path, &opts, |_, _| {}).expect("streams");
    (report.records, report.capture_error.map(|e| e.to_string()))
}

/// Connections keyed by endpoints and their ordinal among connections with those endpoints.
fn by_key(recs: &[StreamRecord]) -> HashMap<(String, String, usize), &StreamRecord> {
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

/// (connections in the clean capture, of those reassembled identically, extra records).
fn compare(clean: &[StreamRecord], mangled: &[StreamRecord]) -> (usize, usize, usize, Vec<String>) {
    let a = by_key(clean);
    let b = by_key(mangled);
    let mut exact = 0;
    let mut wrong = Vec::new();
    for (k, r) in &a {
        match b.get(k) {
            Some(m)
                if m.c2s.bytes == r.c2s.bytes
                    && m.c2s.crc32 == r.c2s.crc32
                    && m.s2c.bytes == r.s2c.bytes
                    && m.s2c.crc32 == r.s2c.crc32
                    && m.close == r.close =>
            {
                exact += 1
            }
            Some(m) => wrong.push(format!(
                "{}->{}#{}: c2s {}/{} missing {}, s2c {}/{} missing {}, close {} (clean {})",
                k.0,
                k.1,
                k.2,
                m.c2s.bytes,
                r.c2s.bytes,
                m.c2s.missing,
                m.s2c.bytes,
                r.s2c.bytes,
                m.s2c.missing,
                m.close,
                r.close
            )),
            None => wrong.push(format!("{}->{}#{}: no record", k.0, k.1, k.2)),
        }
    }
    wrong.sort();
    (a.len(), exact, b.len().saturating_sub(a.len()), wrong)
}

fn gen(name: &str) -> PathBuf {
    plugin_util::corpus().join("gen").join(name)
}

fn check(capture: &str, label: &str, cfg: MangleConfig) -> (usize, usize, usize, Vec<String>) {
    let clean_path = gen(capture);
    let dir = std::env::temp_dir().join(format!("flowpeek-disorder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{capture}.{label}.pcap"));
    mangle_file(&clean_path, &out, &cfg).expect("mangle");
    let clean = records(&clean_path);
    let mangled = records(&out);
    std::fs::remove_file(&out).ok();
    let (total, exact, extra, wrong) = compare(&clean, &mangled);
    eprintln!(
        "{capture:>20} {label:<24} {exact:>6} of {total:>6} exact, {extra} extra records{}",
        wrong
            .iter()
            .take(3)
            .map(|w| format!("\n    {w}"))
            .collect::<String>()
    );
    (total, exact, extra, wrong)
}

fn modes() -> Vec<(&'static str, MangleConfig)> {
    let m = |window, dup, ack_first, fin_first, late| MangleConfig {
        window,
        dup,
        ack_first,
        fin_first,
        late,
        seed: 7,
    };
    vec![
        ("window2", m(2, 0.0, false, false, false)),
        ("window8+dup4%", m(8, 0.04, false, false, false)),
        ("window32+dup8%", m(32, 0.08, false, false, false)),
        ("ack-first", m(0, 0.0, true, false, false)),
        ("fin-first", m(0, 0.0, false, true, false)),
        ("late-after-close", m(0, 0.0, false, false, true)),
        ("all", m(16, 0.04, true, true, true)),
    ]
}

/// The misses left, each named with why (docs/SPEC.md §3.1): (capture, mode, connection
/// key as `compare` prints it, extra records). Anything else that differs fails the test,
/// and so does one of these that starts to pass (then remove it here and in the SPEC).
const KNOWN: &[(&str, &str, &str, usize)] = &[
    // None left: the iperf role swap went with the port rule for mid-stream roles, the RST
    // overtaking the server's last segment with the lingering RST (docs/SPEC.md §3.1).
];

#[test]
fn mangled_gen_captures_reassemble_like_the_clean_ones() {
    let mut failures = Vec::new();
    for capture in [
        "http-small.pcap",
        "http-keepalive.pcap",
        "http-bulk.pcap",
        "mixed.pcap",
    ] {
        for (label, cfg) in modes() {
            let (total, exact, extra, wrong) = check(capture, label, cfg);
            let known: Vec<_> = KNOWN
                .iter()
                .filter(|k| k.0 == capture && k.1 == label)
                .collect();
            let known_extra: usize = known.iter().map(|k| k.3).sum();
            let unexplained: Vec<&String> = wrong
                .iter()
                .filter(|w| !known.iter().any(|k| w.starts_with(&format!("{}:", k.2))))
                .collect();
            let still: usize = known
                .iter()
                .filter(|k| wrong.iter().any(|w| w.starts_with(&format!("{}:", k.2))))
                .count();
            if !unexplained.is_empty() || extra != known_extra || still != known.len() {
                failures.push(format!(
                    "{capture} {label}: {exact} of {total} exact, {extra} extra (named misses: {} of {} still there, {known_extra} extra expected); unexplained: {unexplained:?}",
                    still,
                    known.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every capture of shared/corpus/public (pcap and pcapng).
fn public_captures() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "pcap" || x == "pcapng") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&plugin_util::corpus().join("public"), &mut out);
    out.sort();
    out
}

/// The public captures with handshakes (zeek's, suricata-verify's, ...): every connection
/// the clean capture shows whole (its SYN seen, nothing missing either way, closed by FIN or
/// RST) should reassemble identically from each mangled version. Connections the clean
/// capture shows damaged (lost bytes, no handshake, cut by the capture's end) have no clean
/// answer to compare with. Not all do yet: at most [`PUBLIC_MISSES_AT_MOST`] differ.
#[test]
fn mangled_public_captures_keep_their_whole_connections() {
    let captures = public_captures();
    assert!(captures.len() > 200, "{} captures", captures.len());
    let dir = std::env::temp_dir().join(format!("flowpeek-disorder-pub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut compared, mut captures_used, mut failures) = (0usize, 0usize, Vec::new());
    let (mut lingered, mut far) = (Vec::new(), Vec::new());
    for capture in &captures {
        let (clean, damaged) = records_and_error(capture);
        if damaged.is_some() {
            continue; // a truncated capture: the mangler refuses it
        }
        // With the ordinal among connections of the same endpoints, as `compare` names them.
        let mut ordinals: HashMap<(String, String), usize> = HashMap::new();
        let whole: Vec<(usize, &StreamRecord)> = clean
            .iter()
            .map(|r| {
                let n = ordinals
                    .entry((r.client.to_string(), r.server.to_string()))
                    .or_insert(0);
                *n += 1;
                (*n - 1, r)
            })
            .filter(|(_, r)| {
                !r.partial
                    && (r.close == "fin" || r.close == "rst")
                    && r.c2s.missing == 0
                    && r.s2c.missing == 0
            })
            .collect();
        if whole.is_empty() {
            continue;
        }
        captures_used += 1;
        let name = capture
            .strip_prefix(plugin_util::corpus())
            .unwrap_or(capture)
            .display()
            .to_string();
        for (label, cfg) in modes() {
            let out = dir.join("mangled.pcap");
            let report = match mangle_file(capture, &out, &cfg) {
                Ok(r) => r,
                Err(e) => {
                    // More than one link type: the mangler refuses it (and says so).
                    assert!(e.contains("link"), "{name}: {e}");
                    break;
                }
            };
            let mangled = records(&out);
            let (_, _, _, wrong) = compare(&clean, &mangled);
            // Misses of connections the window moved across a silence longer than the
            // RST's linger, once more with a linger longer than any shift.
            let mut relaxed = None;
            for &(ordinal, r) in &whole {
                compared += 1;
                let key = format!("{}->{}#{ordinal}:", r.client, r.server);
                let Some(w) = wrong.iter().find(|w| w.starts_with(&key)) else {
                    continue;
                };
                let named = PUBLIC_KNOWN
                    .iter()
                    .any(|k| name.ends_with(k.0) && k.1 == label && w.starts_with(k.2));
                if named {
                    continue;
                }
                let shift = report.shift_of(r.client, r.server);
                let line = format!("{name} {label}: {w}");
                if shift <= FURTHER_THAN_A_TAP {
                    failures.push(line);
                    continue;
                }
                let again = relaxed.get_or_insert_with(|| {
                    let long = report.largest_shift().saturating_mul(2);
                    let (recs, error) = records_lingering(&out, long);
                    assert!(error.is_none(), "{error:?}");
                    compare(&clean, &recs).3
                });
                let line = format!("{line} (a packet moved {:.1} s)", shift as f64 / 1e9);
                if again.iter().any(|w| w.starts_with(&key)) {
                    far.push(line);
                } else {
                    lingered.push(line);
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    eprintln!(
        "{captures_used} public captures with whole connections, {compared} connection-modes \
         compared, {} differ: {} of connections whose packets moved at most a second, and of \
         connections the mangler moved a packet of across a longer silence of the capture \
         (which no tap does) {} that a RST linger longer than the move makes equal and {} \
         others",
        failures.len() + lingered.len() + far.len(),
        failures.len(),
        lingered.len(),
        far.len()
    );
    eprintln!("moved further than a tap, equal with a longer linger: {lingered:#?}");
    eprintln!("moved further than a tap, different even so: {far:#?}");
    eprintln!("moved at most a second: {failures:#?}");
    assert!(captures_used > 100, "only {captures_used} captures used");
    assert!(compared > 7000, "only {compared} connection-modes compared");
    // Issue 11 is open on these: the test fails if more differ than today, and says so when
    // fewer do (then lower the bounds, and the figures in docs/SPEC.md §3.1).
    for (what, list, bound) in [
        ("moved at most a second", &failures, PUBLIC_MISSES_AT_MOST),
        (
            "moved further, different even with a longer linger",
            &far,
            FAR_MISSES_AT_MOST,
        ),
        (
            "moved further, equal with a longer linger",
            &lingered,
            LINGERED_MISSES_AT_MOST,
        ),
    ] {
        assert!(
            list.len() <= bound,
            "{what}: {} differ, more than the {bound} of 2026-12-04: {list:#?}",
            list.len()
        );
        if list.len() < bound {
            eprintln!(
                "{what}: fewer misses than the bound ({} < {bound}): lower it",
                list.len()
            );
        }
    }
}

/// Further than a tap reorders (ns of packet time): a packet the mangler moved further than
/// this was moved across a silence of the capture (its windows count packets, not time).
/// The RST linger (`Config::rst_linger`, 1 s) is the engine's one rule bounded in time.
const FURTHER_THAN_A_TAP: u64 = 1_000_000_000;

/// How many whole connection-modes of the public captures, none of whose packets the
/// mangler moved by more than [`FURTHER_THAN_A_TAP`], differed on 2026-12-04 (of 7,287
/// compared): RSTs that overtake or are overtaken (the smb, tls and evasion captures), flows
/// opened by a stray segment before their SYN, port reuse. docs/SPEC.md §3.1.
const PUBLIC_MISSES_AT_MOST: usize = 34;

/// Misses of connections a packet of which the mangler moved further than a tap reorders,
/// that a longer RST linger does not mend: the capture then shows other traffic (a
/// client's RST after the SYN/ACK of the SYN it retried 3 s later, in tls-subjectaltname).
const FAR_MISSES_AT_MOST: usize = 34;

/// Misses of connections moved further than a tap reorders that a RST linger longer than
/// the move makes equal (smb2-09's 886 s silence): the linger is bounded in time on purpose.
const LINGERED_MISSES_AT_MOST: usize = 9;

/// Whole connections of public captures that a mangled version does not give back, each
/// with why: (capture path suffix, mode, connection as `compare` prints it). Not counted
/// against [`PUBLIC_MISSES_AT_MOST`].
const PUBLIC_KNOWN: &[(&str, &str, &str)] = &[];
