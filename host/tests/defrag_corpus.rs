//! IP defragmentation end to end, through `flowpeek streams`:
//!
//! - the corpus's fragment cases (public zeek and suricata-verify traces with IPv4 and IPv6
//!   fragments) give, direction by direction, the bytes tshark's "follow" gives with its
//!   defragmentation on (tshark runs here: it must be installed);
//! - evasion: one TCP segment cut into Novak's overlapping fragments (bytes that differ
//!   under every overlap) gives, under each `--defrag-policy`, the bytes that policy's
//!   stack delivers, and raises the overlap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use flowpeek::flow::Config;
use flowpeek::ip::{self, Policy};
use flowpeek::streams::{self, StreamRecord, StreamsOptions, StreamsReport};
use flowpeek::wire::internet_checksum;

mod plugin_util;

fn options(policy: Policy) -> StreamsOptions {
    StreamsOptions {
        write: None,
        engine: Config {
            defrag: ip::Config {
                policy,
                ..ip::Config::default()
            },
            ..Config::default()
        },
        buffer: 1 << 18,
        sha256: false,
    }
}

fn streams_of(path: &Path, policy: Policy) -> StreamsReport {
    let report = streams::run(path, &options(policy), |_, _| {}).expect("streams");
    assert!(report.capture_error.is_none(), "{:?}", report.capture_error);
    report
}

/// One TCP conversation as tshark's `follow,tcp,raw` prints it: the two nodes and the bytes
/// each sent.
#[derive(Debug)]
struct Followed {
    node0: String,
    node1: String,
    from0: Vec<u8>,
    from1: Vec<u8>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Every TCP stream of `path`, followed by tshark with IPv4 and IPv6 defragmentation on.
fn tshark_follow(path: &Path) -> Vec<Followed> {
    let tshark = |args: &[&str]| {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(path)
            .args(["-o", "ip.defragment:TRUE", "-o", "ipv6.defragment:TRUE"])
            .args(args)
            .output()
            .expect("tshark must be installed (apt-get install tshark)");
        assert!(
            out.status.success(),
            "tshark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("tshark prints text")
    };
    let mut streams: Vec<u32> = tshark(&["-T", "fields", "-e", "tcp.stream"])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    streams
        .into_iter()
        .map(|n| {
            let text = tshark(&["-q", "-z", &format!("follow,tcp,raw,{n}")]);
            let mut f = Followed {
                node0: String::new(),
                node1: String::new(),
                from0: Vec::new(),
                from1: Vec::new(),
            };
            let mut body = false;
            for line in text.lines() {
                if let Some(a) = line.strip_prefix("Node 0: ") {
                    f.node0 = a.to_string();
                } else if let Some(a) = line.strip_prefix("Node 1: ") {
                    f.node1 = a.to_string();
                    body = true;
                } else if line.starts_with("=====") {
                    body = false;
                } else if body {
                    if let Some(h) = line.strip_prefix('\t') {
                        f.from1.extend(hex(h.trim()));
                    } else {
                        f.from0.extend(hex(line.trim()));
                    }
                }
            }
            f
        })
        .collect()
}

fn crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}

/// (bytes, crc32) each endpoint sent, by (sender, receiver), from flowpeek's records.
fn sent_by(records: &[StreamRecord]) -> HashMap<(String, String), (u64, u32)> {
    let mut m = HashMap::new();
    for r in records {
        let (c, s) = (r.client.to_string(), r.server.to_string());
        m.insert((c.clone(), s.clone()), (r.c2s.bytes, r.c2s.crc32));
        m.insert((s, c), (r.s2c.bytes, r.s2c.crc32));
    }
    m
}

/// The corpus's captures with TCP in IP fragments (found with `tshark -Y 'ip.flags.mf==1 or
/// ip.frag_offset>0 or ipv6.fragment'`): (capture, the policy that resolves its overlaps as
/// tshark does, datagrams reassembled, fragments dropped as tiny). Left out: zeek's
/// tunnels/gtp/gtp1_gn_normal_incl_fragmentation (the fragments are of the outer UDP/GTP
/// packets: flowpeek does not decode GTP tunnels) and suricata-verify's two
/// bug-6887-defrag-ppp-* captures (PPP framing, a link type flowpeek does not decode).
const CASES: &[(&str, Policy, u64, u64)] = &[
    // An overlap evasion: the fragment at offset 24 rewrites bytes 48..72 that the one at
    // 48 sent before. tshark keeps the lower offset's bytes, as `bsd` does (the test below
    // checks that `first` delivers the other bytes and raises the overlap).
    ("public/zeek/ipv4/fragmented-4.pcap", Policy::Bsd, 1, 0),
    ("public/suricata-verify/defrag/bug-6887-defrag-ipv6-tcp/frag-ip-tcp.pcap", Policy::First, 1, 0),
    ("public/suricata-verify/defrag/bug-6887-defrag-eth-vlan-ipv6-tcp/frag-eth-vlan-ipv6-tcp.pcap", Policy::First, 1, 0),
    // A SYN in three 8-byte fragments: the first cannot hold the TCP header and the second
    // lies at offset 8 (RFC 1858, RFC 3128), so both are dropped and the datagram never
    // completes. The SYN carries no bytes: tshark's follow is empty, as flowpeek's streams.
    ("public/suricata-verify/defrag/bug-6887-defrag-ipv4-tcp-syn/frag-ip-tcp-syn.pcap", Policy::First, 0, 2),
    ("public/suricata-verify/defrag/bug-6887-defrag-eth-vlan-ipv4-tcp-syn/frag-eth-vlan-ip-tcp-syn.pcap", Policy::First, 0, 2),
];

#[test]
fn corpus_fragment_cases_give_the_bytes_tshark_follows() {
    let root = plugin_util::corpus();
    let mut failures = Vec::new();
    let mut compared = 0;
    for &(capture, policy, reassembled, tiny) in CASES {
        let path = root.join(capture);
        let report = streams_of(&path, policy);
        let d = report.stats.defrag;
        if (d.reassembled, d.dropped(ip::DropReason::Tiny)) != (reassembled, tiny) {
            failures.push(format!(
                "{capture}: {} reassembled, {} tiny (want {reassembled}, {tiny}): {d:?}",
                d.reassembled,
                d.dropped(ip::DropReason::Tiny)
            ));
        }
        let ours = sent_by(&report.records);
        for f in tshark_follow(&path) {
            for (from, to, bytes) in [
                (&f.node0, &f.node1, &f.from0),
                (&f.node1, &f.node0, &f.from1),
            ] {
                let want = (bytes.len() as u64, crc(bytes));
                let got = ours
                    .get(&(from.clone(), to.clone()))
                    .copied()
                    .unwrap_or((0, crc(&[])));
                compared += 1;
                if got != want {
                    failures.push(format!(
                        "{capture} {from}>{to}: flowpeek {got:?}, tshark {want:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        compared >= 2 * CASES.len(),
        "{compared} directions compared"
    );
}

#[test]
fn the_zeek_overlap_evasion_depends_on_the_policy_and_is_raised() {
    let path = plugin_util::corpus().join("public/zeek/ipv4/fragmented-4.pcap");
    let get = |p: Policy| {
        let report = streams_of(&path, p);
        assert_eq!(report.stats.defrag.overlaps_differing, 1, "{p}");
        let r = report
            .records
            .iter()
            .find(|r| r.c2s.bytes == 69)
            .expect("the GET");
        r.c2s.crc32
    };
    // `bsd`, `linux`, `solaris` and `last` take the later fragment (it starts before and
    // ends with the original); `first` and `windows` keep the original.
    assert_eq!(get(Policy::Bsd), get(Policy::Last));
    assert_eq!(get(Policy::Linux), get(Policy::Solaris));
    assert_eq!(get(Policy::First), get(Policy::Windows));
    assert_ne!(get(Policy::First), get(Policy::Bsd));
}

// --- Evasion ----------------------------------------------------------------------------------

/// A pcap (Ethernet, microseconds) of `frames`, one per millisecond.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(65_535u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend(1_700_000_000u32.to_le_bytes());
        out.extend((i as u32 * 1000).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend((f.len() as u32).to_le_bytes());
        out.extend(f);
    }
    std::fs::write(path, out).unwrap();
}

const CLIENT: [u8; 4] = [192, 168, 0, 1];
const SERVER: [u8; 4] = [192, 168, 0, 2];

/// An Ethernet IPv4 frame from `src` carrying `ip_payload` with id, offset and MF.
fn ipv4(src: [u8; 4], dst: [u8; 4], id: u16, off: usize, more: bool, ip_payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip[2..4].copy_from_slice(&((20 + ip_payload.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (off / 8) as u16 | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(ip_payload);
    f
}

/// A TCP header (no options, checksum left 0: flowpeek does not verify by default).
fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&65_535u16.to_be_bytes());
    t
}

/// Novak's scenario (as in the unit tests of `ip::defrag`), shifted past a first fragment
/// that holds the TCP header and 4 bytes "GET ".
const NOVAK: [(usize, usize, u8); 17] = [
    (0, 24, b'A'),
    (32, 16, b'B'),
    (48, 24, b'C'),
    (80, 8, b'D'),
    (104, 16, b'E'),
    (120, 24, b'F'),
    (144, 16, b'G'),
    (160, 16, b'H'),
    (176, 8, b'I'),
    (8, 32, b'J'),
    (48, 24, b'K'),
    (72, 24, b'L'),
    (96, 24, b'M'),
    (128, 8, b'N'),
    (152, 8, b'O'),
    (160, 8, b'P'),
    (176, 16, b'Q'),
];

fn novak_result(p: Policy) -> &'static str {
    match p {
        Policy::First => "AAAJBBCCCLDLMEEFFFGGHHIQ",
        Policy::Last => "AJJJJBKKKLLLMMMFNFGOPHQQ",
        Policy::Bsd => "AAAJJBCCCLLLMMMFFFGGHHIQ",
        Policy::Linux => "AAAJJBKKKLLLMMMFFFGGPHQQ",
        Policy::Windows => "AAAJBBCCCLLLMEEFFFGGHHIQ",
        Policy::Solaris => "AAAJBBCCCLLLMMMFFFGGHHIQ",
    }
}

fn evasion_capture(path: &Path) {
    let (cp, sp) = (40_000, 80);
    let mut frames = vec![
        ipv4(CLIENT, SERVER, 1, 0, false, &tcp(cp, sp, 100, 0, 0x02)),
        ipv4(SERVER, CLIENT, 1, 0, false, &tcp(sp, cp, 500, 101, 0x12)),
        ipv4(CLIENT, SERVER, 2, 0, false, &tcp(cp, sp, 101, 501, 0x10)),
    ];
    // The data segment: 4 + 192 bytes after the header, in Novak's 17 fragments after one
    // that holds the header and "GET ".
    let mut first = tcp(cp, sp, 101, 501, 0x18);
    first.extend_from_slice(b"GET ");
    frames.push(ipv4(CLIENT, SERVER, 3, 0, true, &first));
    for (i, &(off, len, c)) in NOVAK.iter().enumerate() {
        let more = i + 1 < NOVAK.len();
        frames.push(ipv4(CLIENT, SERVER, 3, 24 + off, more, &vec![c; len]));
    }
    let acked = 101 + 4 + 192;
    frames.push(ipv4(
        SERVER,
        CLIENT,
        2,
        0,
        false,
        &tcp(sp, cp, 501, acked, 0x10),
    ));
    frames.push(ipv4(
        CLIENT,
        SERVER,
        4,
        0,
        false,
        &tcp(cp, sp, acked, 501, 0x11),
    ));
    frames.push(ipv4(
        SERVER,
        CLIENT,
        3,
        0,
        false,
        &tcp(sp, cp, 501, acked + 1, 0x11),
    ));
    frames.push(ipv4(
        CLIENT,
        SERVER,
        5,
        0,
        false,
        &tcp(cp, sp, acked + 1, 502, 0x10),
    ));
    write_pcap(path, &frames);
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowpeek-defrag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn overlapping_fragments_give_each_policys_bytes() {
    let path = temp("evasion.pcap");
    evasion_capture(&path);
    for p in Policy::ALL {
        let report = streams_of(&path, p);
        let want: Vec<u8> = b"GET "
            .iter()
            .copied()
            .chain(novak_result(p).bytes().flat_map(|c| [c; 8]))
            .collect();
        assert_eq!(report.records.len(), 1, "{p}");
        let r = &report.records[0];
        assert_eq!(
            (r.c2s.bytes, r.c2s.crc32),
            (want.len() as u64, crc(&want)),
            "policy {p}"
        );
        assert_eq!(r.close, "fin", "{p}");
        let d = report.stats.defrag;
        assert_eq!((d.reassembled, d.overlaps_differing), (1, 8), "{p}: {d:?}");
        // Monitors hear of it: an Error on the receiving side of the flow.
        let cfg = options(p).engine;
        let lines = flowpeek::trace::run(&path, cfg, 1).expect("events");
        let errors: Vec<&String> = lines.iter().filter(|l| l.contains("IpOverlap")).collect();
        assert_eq!(errors.len(), 1, "{p}: {lines:#?}");
    }
    // Fragments whose overlaps agree raise nothing.
    let zeek = plugin_util::corpus()
        .join("public/suricata-verify/defrag/bug-6887-defrag-ipv6-tcp/frag-ip-tcp.pcap");
    let lines = flowpeek::trace::run(&zeek, options(Policy::First).engine, 1).expect("events");
    assert!(!lines.iter().any(|l| l.contains("IpOverlap")), "{lines:#?}");
    std::fs::remove_file(&path).ok();
}
