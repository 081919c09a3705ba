//! Stream bytes out (issue 15, item 4): `flowpeek streams --write DIR` and `flowpeek follow`,
//! the real binary on the shared corpus, checked against the consensus of four reassemblers
//! (shared/corpus/expected-by-peers.tsv), against tcpflow's own files and against tshark's
//! `-z follow,tcp,raw`, where their policies agree with flowpeek's (SPEC.md: first copy
//! wins, gaps skipped, mid-stream pick-up).
//!
//! tcpflow and tshark are Debian packages the test scripts install (scripts/lib.sh,
//! TEST_PACKAGES); a test that needs one and does not find it fails, naming the package.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn corpus() -> PathBuf {
    flowpeek::testing::corpus_dir()
}

fn flowpeek() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowpeek"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "flowpeek-stream-bytes-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tool the tests compare with; fails with the package to install when it is missing.
fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: apt-get install {name} (scripts/lib.sh TEST_PACKAGES lists it)"
    );
    Command::new(name)
}

/// The consensus rows of one capture: `sender>receiver` → (bytes, crc32, votes,
/// dissenting peers). 4-tuples the peers split differently (`#n`, `split`) are left out.
/// One direction's consensus: bytes, crc32, votes, dissenting peers.
type Row = (u64, String, String, String);

fn consensus() -> BTreeMap<String, HashMap<String, Row>> {
    let tsv = std::fs::read_to_string(corpus().join("expected-by-peers.tsv")).unwrap();
    let mut out: BTreeMap<String, HashMap<String, _>> = BTreeMap::new();
    for line in tsv.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5 || f[2] == "split" || f[1].contains('#') {
            continue;
        }
        out.entry(f[0].to_string()).or_default().insert(
            f[1].to_string(),
            (
                f[2].parse().unwrap(),
                f[3].to_string(),
                f[4].to_string(),
                f.get(5).unwrap_or(&"").to_string(),
            ),
        );
    }
    out
}

/// `streams --json --write dir` on `capture`: the records, parsed.
fn write_run(capture: &Path, dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = flowpeek()
        .args(["streams", "--json", "--write"])
        .arg(dir)
        .args(extra)
        .arg(capture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn crc(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// A direction's file, or nothing when the record names none.
fn file_bytes(dir: &Path, d: &serde_json::Value) -> Vec<u8> {
    match d["file"].as_str() {
        Some(name) => std::fs::read(dir.join(name)).unwrap(),
        None => Vec::new(),
    }
}

/// Every public capture (and one of the generated ones): each direction's file holds
/// exactly the bytes its record hashed, and where the peers agree unanimously (or all but
/// libnids, whose policy stops at holes and needs a handshake) the file is their bytes.
#[test]
fn written_files_are_the_streams_the_peers_agree_on() {
    let root = corpus();
    let consensus = consensus();
    let mut captures: Vec<&str> = consensus.keys().map(String::as_str).collect();
    // Real traffic with many connections (not in the consensus: its records are checked
    // against the served bodies in corpus.rs).
    captures.push("gen/http-keepalive.pcap");
    let none = HashMap::new();
    let (mut files, mut agreed, mut mismatches) = (0, 0, Vec::new());
    for capture in captures {
        let out = TempDir::new("w");
        let records = write_run(&root.join(capture), &out.0, &[]);
        let rows = consensus.get(capture).unwrap_or(&none);
        let mut seen: HashMap<String, u32> = HashMap::new();
        for r in &records {
            for (dir, from, to) in [("c2s", "client", "server"), ("s2c", "server", "client")] {
                let d = &r[dir];
                let bytes = file_bytes(&out.0, d);
                // The file is what the record describes, whatever the peers say.
                assert_eq!(
                    bytes.len() as u64,
                    d["bytes"].as_u64().unwrap(),
                    "{capture} {r}"
                );
                assert_eq!(crc(&bytes), d["crc32"].as_str().unwrap(), "{capture} {r}");
                assert!(d["gaps"].is_array(), "{r}");
                if !bytes.is_empty() {
                    files += 1;
                }
                let key = format!("{}>{}", r[from].as_str().unwrap(), r[to].as_str().unwrap());
                let n = seen.entry(key.clone()).or_insert(0);
                *n += 1;
                if *n > 1
                    || r["c2s"]["bytes"].as_u64().unwrap() + r["s2c"]["bytes"].as_u64().unwrap()
                        == 0
                {
                    continue; // a reused 4-tuple, or a connection the peers do not report
                }
                let Some((want_len, want_crc, votes, dissent)) = rows.get(&key) else {
                    continue;
                };
                if votes == "4/4" || dissent == "libnids" {
                    if (bytes.len() as u64, crc(&bytes)) == (*want_len, want_crc.clone()) {
                        agreed += 1;
                    } else {
                        mismatches.push(format!(
                            "{capture} {key}: file {} bytes {}, peers ({votes}) {want_len} {want_crc}",
                            bytes.len(),
                            crc(&bytes)
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "{files} files; {agreed} equal to the consensus; {} differ: {mismatches:#?}",
        mismatches.len()
    );
    // Where flowpeek's policy differs from the peers' on purpose (tests/corpus.rs
    // DIFFERENCES gives the reasons; the records there differ the same way).
    let differing: Vec<String> = mismatches
        .iter()
        .map(|m| m.split(": file").next().unwrap().to_string())
        .collect();
    assert_eq!(differing, DIFFERENCES, "{mismatches:#?}");
    assert!(agreed > 2000, "only {agreed} directions compared");
}

/// (capture direction) pairs where the file, like the record, deliberately differs from the
/// unanimous or all-but-libnids peers.
/// None today: smb-filename's server reply after the client's RST was the last, until a RST
/// lingered while the other direction is open (SPEC §3.1).
const DIFFERENCES: &[&str] = &[];

/// tcpflow itself on captures whose directions it agrees on: `--gaps zero` (tcpflow's
/// behaviour) gives files of tcpflow's names with tcpflow's bytes.
#[test]
fn gaps_zero_gives_tcpflows_files() {
    let root = corpus();
    let consensus = consensus();
    let mut compared = 0;
    for capture in [
        "public/zeek/tcp/ssh-dups.pcap",
        "public/zeek/tcp/reassembly.pcap",
        "public/zeek/tcp/miss_end_data.pcap",
        "public/zeek/http-vlan-0.pcap",
        "public/suricata-verify/community-id-ipv6/input.pcap",
        "gen/http-keepalive.pcap",
    ] {
        let ours = TempDir::new("ours");
        let theirs = TempDir::new("tcpflow");
        let records = write_run(&root.join(capture), &ours.0, &["--gaps", "zero"]);
        let st = tool("tcpflow")
            .arg("-r")
            .arg(root.join(capture))
            .arg("-o")
            .arg(&theirs.0)
            .output()
            .unwrap();
        assert!(st.status.success(), "tcpflow on {capture}: {st:?}");
        let rows = consensus.get(capture).cloned().unwrap_or_default();
        // tcpflow adds the VLAN (`--ID`) to the name; flowpeek's default leaves it out.
        let strip_vlan = |n: &str| -> String {
            match n.find("--") {
                Some(i) => {
                    let rest = &n[i + 2..];
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    format!("{}{}", &n[..i], &rest[digits..])
                }
                None => n.to_string(),
            }
        };
        let mut names: HashMap<String, String> = HashMap::new();
        for r in &records {
            for (dir, from, to) in [("c2s", "client", "server"), ("s2c", "server", "client")] {
                if let Some(f) = r[dir]["file"].as_str() {
                    let key = format!("{}>{}", r[from].as_str().unwrap(), r[to].as_str().unwrap());
                    names.insert(f.to_string(), key);
                }
            }
        }
        for entry in std::fs::read_dir(&theirs.0).unwrap() {
            let theirs_name = entry.unwrap().file_name().into_string().unwrap();
            if theirs_name == "report.xml" {
                continue;
            }
            let name = strip_vlan(&theirs_name);
            let Some(key) = names.get(&name) else {
                // Every file tcpflow writes has flowpeek's counterpart, of the same name.
                panic!(
                    "{capture}: tcpflow wrote {name}, flowpeek has no file of that name: {:?}",
                    names.keys().collect::<Vec<_>>()
                );
            };
            // Where the peers voted, compare only what they all agree on (tcpflow's policy,
            // last copy wins and Ethernet padding appended, may differ elsewhere); the
            // generated captures (clean traffic, no vote) are compared whole.
            match rows.get(key) {
                Some((_, _, votes, _)) if votes != "4/4" => continue,
                None if !capture.starts_with("gen/") => continue,
                _ => {}
            }
            let a = std::fs::read(ours.0.join(&name)).unwrap();
            let b = std::fs::read(theirs.0.join(&theirs_name)).unwrap();
            assert!(
                a == b,
                "{capture} {name}: {} bytes here, {} from tcpflow",
                a.len(),
                b.len()
            );
            compared += 1;
        }
    }
    assert!(
        compared >= 20,
        "only {compared} files compared with tcpflow's"
    );
}

/// A gap: skipped, the file holds the delivered bytes; zero-filled, the file is the stream
/// with zeros at the gaps the record lists (offset, length), and the delivered bytes
/// around them are the skipped file's.
#[test]
fn gaps_are_listed_and_skipped_or_zero_filled() {
    let capture =
        corpus().join("public/suricata-verify/eve-overlap-payload-05-gap/tcp-simple-gap2.pcap");
    let skip = TempDir::new("skip");
    let zero = TempDir::new("zero");
    let a = write_run(&capture, &skip.0, &[]);
    let b = write_run(&capture, &zero.0, &["--gaps", "zero"]);
    assert_eq!(a.len(), b.len());
    let mut gaps_seen = 0;
    for (ra, rb) in a.iter().zip(&b) {
        for dir in ["c2s", "s2c"] {
            let (da, db) = (&ra[dir], &rb[dir]);
            assert_eq!(da["gaps"], db["gaps"], "{ra}");
            let skipped = file_bytes(&skip.0, da);
            let filled = file_bytes(&zero.0, db);
            let missing = da["missing"].as_u64().unwrap();
            let gaps = da["gaps"].as_array().unwrap();
            let listed: u64 = gaps.iter().map(|g| g[1].as_u64().unwrap()).sum();
            assert_eq!(listed, missing, "the gaps add up to missing: {ra}");
            if gaps.is_empty() {
                assert_eq!(skipped, filled);
                continue;
            }
            gaps_seen += gaps.len();
            // Rebuild the skipped file from the filled one by cutting the gaps out.
            let mut rebuilt = Vec::new();
            let mut at = 0usize;
            for g in gaps {
                let (off, len) = (
                    g[0].as_u64().unwrap() as usize,
                    g[1].as_u64().unwrap() as usize,
                );
                if off > filled.len() {
                    break;
                }
                rebuilt.extend_from_slice(&filled[at..off]);
                let end = (off + len).min(filled.len());
                assert!(
                    filled[off..end].iter().all(|&x| x == 0),
                    "zeros at the gap {g}"
                );
                at = end;
            }
            rebuilt.extend_from_slice(&filled[at.min(filled.len())..]);
            assert_eq!(rebuilt, skipped, "{ra}");
            // The zero-filled file is the whole stream: delivered bytes plus every gap.
            assert_eq!(filled.len() as u64, skipped.len() as u64 + listed, "{ra}");
        }
    }
    assert!(gaps_seen > 0, "the capture has a gap: {a:?}");
}

/// A microsecond pcap, Ethernet, of `frames` (1 ms apart).
fn write_pcap(path: &Path, frames: impl IntoIterator<Item = Vec<u8>>) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.into_iter().enumerate() {
        let us = 1_000_000_000u64 + i as u64 * 1000;
        out.extend_from_slice(&((us / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((us % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    std::fs::write(path, out).unwrap();
}

/// A 4-tuple used again after a close gets tcpflow's numbered suffix, as tcpflow names it
/// (compared with tcpflow's own files); every file is kept, with its connection's bytes.
#[test]
fn reused_four_tuples_get_numbered_names() {
    use common::{Conn, ACK, FIN, PSH};
    let work = TempDir::new("reuse");
    let capture = work.0.join("reuse.pcap");
    let mut frames = Vec::new();
    for round in 0..3u32 {
        // The same endpoints, a fresh ISN each time: three connections.
        let c = Conn::new("10.0.0.1:5555", "10.0.0.2:80")
            .isn(1000 + round * 100_000, 9000 + round * 100_000);
        for seg in c.handshake() {
            frames.push(seg.frame());
        }
        let body = vec![b'a' + round as u8; 100 + round as usize];
        frames.push(c.c(0, 0, ACK | PSH).data(&body).frame());
        frames.push(c.s(0, body.len() as u32, ACK | PSH).data(b"ok").frame());
        frames.push(c.c(body.len() as u32, 2, FIN | ACK).frame());
        frames.push(c.s(2, body.len() as u32 + 1, FIN | ACK).frame());
        frames.push(c.c(body.len() as u32 + 1, 3, ACK).frame());
    }
    write_pcap(&capture, frames);
    let ours = TempDir::new("reuse-ours");
    let records = write_run(&capture, &ours.0, &[]);
    assert_eq!(records.len(), 3, "{records:?}");
    let base = "010.000.000.001.05555-010.000.000.002.00080";
    for (i, r) in records.iter().enumerate() {
        let want = if i == 0 {
            base.to_string()
        } else {
            format!("{base}c{i}")
        };
        assert_eq!(r["c2s"]["file"], want.as_str(), "{r}");
        let bytes = std::fs::read(ours.0.join(&want)).unwrap();
        assert_eq!(bytes, vec![b'a' + i as u8; 100 + i]);
    }
    // tcpflow names them the same way.
    let theirs = TempDir::new("reuse-tcpflow");
    let st = tool("tcpflow")
        .arg("-r")
        .arg(&capture)
        .arg("-o")
        .arg(&theirs.0)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    for i in 0..3 {
        let name = if i == 0 {
            base.to_string()
        } else {
            format!("{base}c{i}")
        };
        assert_eq!(
            std::fs::read(theirs.0.join(&name)).ok(),
            std::fs::read(ours.0.join(&name)).ok(),
            "{name}"
        );
    }
}

/// tshark's follow (raw) of a connection, as (client-to-server?, bytes) chunks, merged
/// where consecutive chunks go the same way.
fn merge(chunks: impl IntoIterator<Item = (bool, Vec<u8>)>) -> Vec<(bool, Vec<u8>)> {
    let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
    for (c2s, b) in chunks {
        if b.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((d, v)) if *d == c2s => v.extend_from_slice(&b),
            _ => out.push((c2s, b)),
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `follow --raw` output: the chunks, server-to-client lines indented by a tab.
fn parse_raw(text: &str, client_first: bool) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut node0: Option<SocketAddr> = None;
    let mut client: Option<SocketAddr> = None;
    for line in text.lines() {
        if let Some(a) = line.strip_prefix("Node 0: ") {
            node0 = a.trim().parse().ok();
            continue;
        }
        if line.starts_with("====")
            || line.starts_with("Follow:")
            || line.starts_with("Filter:")
            || line.starts_with("Connection:")
            || line.starts_with("Node 1: ")
            || line.is_empty()
        {
            continue;
        }
        if client.is_none() && client_first {
            client = node0;
        }
        let (indented, hex) = match line.strip_prefix('\t') {
            Some(h) => (true, h),
            None => (false, line),
        };
        out.push((!indented, unhex(hex.trim())));
    }
    out
}

/// `flowpeek follow --raw` against `tshark -z follow,tcp,raw` on every connection of some
/// captures that the peers agree on both ways: the same bytes, in the same interleaving.
#[test]
fn follow_matches_tshark() {
    let root = corpus();
    let consensus = consensus();
    let mut compared = 0;
    for capture in [
        "public/zeek/tcp/ssh-dups.pcap",
        "public/zeek/tcp/reassembly.pcap",
        "public/zeek/tcp/miss_end_data.pcap",
        "public/zeek/http-vlan-0.pcap",
        "public/suricata-verify/community-id-ipv6/input.pcap",
        "public/zeek/http/methods.pcap",
        "public/zeek/ssh/ssh.pcap",
        "public/zeek/wikipedia.pcap",
    ] {
        let rows = consensus.get(capture).expect("in the consensus");
        let out = flowpeek()
            .args(["streams", "--json"])
            .arg(root.join(capture))
            .output()
            .unwrap();
        let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // tshark numbers conversations in order of first packet, as flowpeek numbers
        // connections; find tshark's by its endpoints.
        let convs = tool("tshark")
            .arg("-r")
            .arg(root.join(capture))
            .args([
                "-T",
                "fields",
                "-e",
                "tcp.stream",
                "-e",
                "ip.src",
                "-e",
                "ipv6.src",
                "-e",
                "tcp.srcport",
                "-e",
                "ip.dst",
                "-e",
                "ipv6.dst",
                "-e",
                "tcp.dstport",
            ])
            .output()
            .unwrap();
        let convs = String::from_utf8(convs.stdout).unwrap();
        // Each connection costs a tshark run: at most 12 per capture.
        for (n, r) in records.iter().enumerate().take(12) {
            let (c, s) = (r["client"].as_str().unwrap(), r["server"].as_str().unwrap());
            let ok = |k: String| rows.get(&k).is_some_and(|(_, _, v, _)| v == "4/4");
            if !ok(format!("{c}>{s}")) || !ok(format!("{s}>{c}")) {
                continue;
            }
            let (ca, sa): (SocketAddr, SocketAddr) = (c.parse().unwrap(), s.parse().unwrap());
            let stream = convs.lines().find_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let ip = |a: &str, b: &str| {
                    if a.is_empty() {
                        b.to_string()
                    } else {
                        a.to_string()
                    }
                };
                let src = format!(
                    "{}",
                    SocketAddr::new(
                        ip(f[1], f[2]).split(',').next()?.parse().ok()?,
                        f[3].parse().ok()?
                    )
                );
                let dst = format!(
                    "{}",
                    SocketAddr::new(
                        ip(f[4], f[5]).split(',').next()?.parse().ok()?,
                        f[6].parse().ok()?
                    )
                );
                let pair = (
                    src.parse::<SocketAddr>().ok()?,
                    dst.parse::<SocketAddr>().ok()?,
                );
                (pair == (ca, sa) || pair == (sa, ca)).then(|| f[0].to_string())
            });
            let Some(stream) = stream else { continue };
            let theirs = tool("tshark")
                .arg("-r")
                .arg(root.join(capture))
                .args(["-q", "-z", &format!("follow,tcp,raw,{stream}")])
                .output()
                .unwrap();
            let theirs = String::from_utf8(theirs.stdout).unwrap();
            // tshark's node 0 is the first packet's sender: the client here.
            let node0: SocketAddr = theirs
                .lines()
                .find_map(|l| l.strip_prefix("Node 0: "))
                .and_then(|a| a.trim().parse().ok())
                .unwrap();
            let mut t = parse_raw(&theirs, true);
            if node0 != ca {
                for (d, _) in &mut t {
                    *d = !*d;
                }
            }
            let ours = flowpeek()
                .args(["follow", "--raw", "--conn", &n.to_string()])
                .arg(root.join(capture))
                .output()
                .unwrap();
            assert!(
                ours.status.success(),
                "{}",
                String::from_utf8_lossy(&ours.stderr)
            );
            let o = parse_raw(&String::from_utf8(ours.stdout).unwrap(), true);
            let (t, o) = (merge(t), merge(o));
            assert_eq!(
                o.iter().map(|(d, b)| (*d, b.len())).collect::<Vec<_>>(),
                t.iter().map(|(d, b)| (*d, b.len())).collect::<Vec<_>>(),
                "{capture} connection {n} ({c} - {s}): chunk order differs from tshark's"
            );
            assert!(
                o == t,
                "{capture} connection {n}: bytes differ from tshark's"
            );
            compared += 1;
        }
    }
    eprintln!("{compared} connections compared with tshark's follow");
    assert!(
        compared >= 20,
        "only {compared} connections compared with tshark"
    );
}

/// `follow` by number, by uid and by endpoints (either way round) is one connection; a
/// selector that matches none says so and fails.
#[test]
fn follow_selects_by_number_uid_and_endpoints() {
    let capture = corpus().join("public/zeek/tcp/ssh-dups.pcap");
    let records = String::from_utf8(
        flowpeek()
            .args(["streams", "--json"])
            .arg(&capture)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let r: serde_json::Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    let (c, s, uid) = (
        r["client"].as_str().unwrap(),
        r["server"].as_str().unwrap(),
        r["uid"].as_str().unwrap(),
    );
    let run = |conn: &str, layout: &str| {
        let o = flowpeek()
            .args(["follow", layout, "--conn", conn])
            .arg(&capture)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        )
    };
    let by_number = run("0", "--hex");
    assert_eq!(by_number.0, Some(0), "{}", by_number.2);
    assert!(
        by_number.1.contains(&format!("uid {uid}")),
        "{}",
        by_number.1
    );
    for conn in [uid.to_string(), format!("{c}-{s}"), format!("{s}-{c}")] {
        assert_eq!(run(&conn, "--hex").1, by_number.1, "{conn}");
    }
    // The hex dump's bytes are the record's: c2s at the margin, s2c indented.
    let mut c2s = Vec::new();
    let dump = |l: &&str| {
        l.len() > 10 && l.as_bytes()[..8].iter().all(u8::is_ascii_hexdigit) && &l[8..10] == "  "
    };
    for line in by_number.1.lines().filter(dump) {
        c2s.extend(
            line[10..58]
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap()),
        );
    }
    assert_eq!(c2s.len() as u64, r["c2s"]["bytes"].as_u64().unwrap());
    assert_eq!(crc(&c2s), r["c2s"]["crc32"].as_str().unwrap());
    let ascii = run("0", "--ascii");
    assert!(ascii.1.contains("SSH-2.0-OpenSSH_7.9"), "{}", ascii.1);
    let none = run("99", "--raw");
    assert_eq!(none.0, Some(1));
    assert!(none.2.contains("no connection number 99"), "{}", none.2);
    let bad = run("10.0.0.1-10.0.0.2", "--raw");
    assert_eq!(bad.0, Some(2), "{}", bad.2);
    assert!(bad.2.contains("CLIENT-SERVER"), "{}", bad.2);
}

/// Errors while writing files are reported with the file and the cause, exit 1, never a
/// panic: a full disk (/dev/full as the target of a name), a directory that cannot be
/// made, a template that leaves the directory.
#[test]
fn write_errors_are_reported() {
    let capture = corpus().join("public/zeek/tcp/ssh-dups.pcap");
    // Every file name is a symlink to /dev/full: each write fails with ENOSPC.
    let dir = TempDir::new("full");
    for name in [
        "192.168.000.102.53206-192.168.000.112.00022",
        "192.168.000.112.00022-192.168.000.102.53206",
    ] {
        std::os::unix::fs::symlink("/dev/full", dir.0.join(name)).unwrap();
    }
    let out = flowpeek()
        .args(["streams", "--json", "--write"])
        .arg(&dir.0)
        .arg(&capture)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("192.168.000."),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // A directory that cannot be created (its parent is a file).
    let file = TempDir::new("notdir");
    std::fs::write(file.0.join("f"), b"x").unwrap();
    let out = flowpeek()
        .args(["streams", "--write"])
        .arg(file.0.join("f/sub"))
        .arg(&capture)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot write files in") && err.contains("f/sub"),
        "{err}"
    );
    // A template that would leave the directory is refused before anything is read.
    let out = flowpeek()
        .args(["streams", "--write"])
        .arg(&dir.0)
        .args(["--name", "../%A"])
        .arg(&capture)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("inside the --write directory"), "{err}");
}

/// `--name`: flowpeek's fields and subdirectories.
#[test]
fn name_templates() {
    let capture = corpus().join("public/zeek/tcp/ssh-dups.pcap");
    let dir = TempDir::new("name");
    let records = write_run(&capture, &dir.0, &["--name", "%n/%u.%d"]);
    let uid = records[0]["uid"].as_str().unwrap();
    for d in ["c2s", "s2c"] {
        let want = format!("0/{uid}.{d}");
        assert_eq!(records[0][d]["file"], want.as_str());
        assert!(dir.0.join(&want).is_file(), "{want}");
    }
}

/// The table (issue 15, item 6): every line fits 120 columns, IPv4 and IPv6 alike; the
/// headers label `bytes`, `missing` and `overlap` under each direction; each row's numbers
/// are the JSON record's, direction by direction.
#[test]
fn table_fits_120_columns_with_per_direction_counts() {
    let root = corpus();
    for capture in [
        "public/zeek/tcp/ssh-dups.pcap",
        "public/suricata-verify/community-id-ipv6/input.pcap",
        "public/zeek/ipv6-http-atomic-frag.pcap",
        "public/suricata-verify/eve-overlap-payload-05-gap/tcp-simple-gap2.pcap",
    ] {
        let run = |json: bool| {
            let mut c = flowpeek();
            c.arg("streams");
            if json {
                c.arg("--json");
            }
            let o = c.arg(root.join(capture)).output().unwrap();
            assert!(o.status.success());
            String::from_utf8(o.stdout).unwrap()
        };
        let table = run(false);
        let records: Vec<serde_json::Value> = run(true)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("client to server") && lines[0].contains("server to client"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "client", "server", "close", "bytes", "missing", "overlap", "bytes", "missing",
                "overlap", "flags"
            ]
        );
        // Rows end where the summary line starts.
        let rows: Vec<&str> = lines[2..]
            .iter()
            .take_while(|l| !l.contains(" packets, "))
            .copied()
            .collect();
        // Every line, the summary under the table too.
        assert!(
            table.contains(" packets, ") && table.contains(" bytes missing, "),
            "{table}"
        );
        for l in &lines {
            assert!(
                l.chars().count() <= 120,
                "{capture}: {} columns: {l}",
                l.chars().count()
            );
        }
        // Join a two-line row (an address wider than its column) back into one.
        let mut joined = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let f: Vec<&str> = rows[i].split_whitespace().collect();
            if f.len() == 2 {
                joined.push(format!("{} {}", rows[i], rows[i + 1]));
                i += 2;
            } else {
                joined.push(rows[i].to_string());
                i += 1;
            }
        }
        assert_eq!(joined.len(), records.len(), "{capture}:\n{table}");
        for (row, r) in joined.iter().zip(&records) {
            let f: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(f[0], r["client"].as_str().unwrap());
            assert_eq!(f[1], r["server"].as_str().unwrap());
            assert_eq!(f[2], r["close"].as_str().unwrap());
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            for (k, (dir, key)) in [
                ("c2s", "bytes"),
                ("c2s", "missing"),
                ("c2s", "overlap"),
                ("s2c", "bytes"),
                ("s2c", "missing"),
                ("s2c", "overlap"),
            ]
            .iter()
            .enumerate()
            {
                assert_eq!(
                    n(3 + k),
                    r[dir][key].as_u64().unwrap(),
                    "{capture} {dir} {key}: {row}"
                );
            }
            let flags = match (r["partial"] == true, r["buffer_refused"] == true) {
                (true, true) => "PR",
                (true, false) => "P",
                (false, true) => "R",
                (false, false) => "-",
            };
            assert_eq!(f[9], flags, "{row}");
        }
    }
}
