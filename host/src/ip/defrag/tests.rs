//! Unit tests of the defragmenter: every RFC rule, every bound, every policy (Novak's
//! scenario), IPv4 and IPv6, checked through `wire::decode` of the datagrams it returns.

use super::*;
use crate::wire::{decode, ipv4_header_checksum_ok, tcp_checksum_ok, Decoded};

const S: u64 = NANOS;

/// A TCP segment (20-byte header, `payload`), checksummed over the IPv4 pseudo-header
/// 10.0.0.1 → 10.0.0.2, ports 1234 → 80.
fn tcp_v4(payload: &[u8]) -> Vec<u8> {
    tcp_segment(payload, |sum_input| {
        sum_input.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, PROTO_TCP]);
    })
}

fn tcp_segment(payload: &[u8], pseudo: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut t = vec![
        0x04, 0xd2, 0x00, 0x50, 0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    t.extend_from_slice(payload);
    let mut p = Vec::new();
    pseudo(&mut p);
    p.extend_from_slice(&(t.len() as u16).to_be_bytes());
    p.extend_from_slice(&t);
    let sum = internet_checksum(&p);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

/// A raw IPv4 packet of protocol `proto` with id `id`, fragment offset `off` (bytes) and
/// MF `more`, carrying `data` (checksummed header).
fn v4_packet(proto: u8, id: u16, off: u32, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (off / 8) as u16 | if more { v4::MF } else { 0 };
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(data);
    ip
}

const SRC6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A raw IPv6 packet with an 8-byte Hop-by-Hop header (when `hbh`), then a Fragment header
/// (next header `next`, id, offset, M), then `data`.
fn v6_packet(hbh: bool, next: u8, id: u32, off: u32, more: bool, data: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, 0, 64];
    ip.extend_from_slice(&SRC6);
    ip.extend_from_slice(&DST6);
    if hbh {
        ip[6] = 0;
        ip.extend_from_slice(&[v6::FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
    } else {
        ip[6] = v6::FRAGMENT;
    }
    let flags = (off as u16 & v6::FRAG_OFFSET_MASK) | u16::from(more);
    ip.extend_from_slice(&[next, 0]);
    ip.extend_from_slice(&flags.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(data);
    let plen = (ip.len() - 40) as u16;
    ip[4..6].copy_from_slice(&plen.to_be_bytes());
    ip
}

fn tcp_v6(payload: &[u8]) -> Vec<u8> {
    tcp_segment(payload, |p| {
        p.extend_from_slice(&SRC6);
        p.extend_from_slice(&DST6);
        // The words of the 32-bit length and of the next header sum as IPv4's do.
        p.extend_from_slice(&[0, PROTO_TCP]);
    })
}

/// Splits `data` at the given payload offsets (multiples of 8) into IPv4 TCP fragments.
fn split_v4(data: &[u8], cuts: &[usize], id: u16) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(data.len());
    bounds
        .windows(2)
        .map(|w| {
            let more = w[1] < data.len();
            v4_packet(PROTO_TCP, id, w[0] as u32, more, &data[w[0]..w[1]])
        })
        .collect()
}

/// Every order of `0..n`.
pub(crate) fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..n {
        let mut next = Vec::new();
        for o in &orders {
            for i in (0..n).filter(|i| !o.contains(i)) {
                let mut longer = o.clone();
                longer.push(i);
                next.push(longer);
            }
        }
        orders = next;
    }
    orders
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Pushes raw-IP frames in order, all at `ts`, and returns the last outcome's datagram.
fn push_all(d: &mut Defragmenter, frames: &[Vec<u8>], ts: u64) -> Option<Vec<u8>> {
    let mut got = None;
    for f in frames {
        if let Outcome::Complete(dg) = d.push(LinkType::RawIp, f, ts) {
            assert!(got.is_none(), "one datagram only");
            got = Some(dg.frame.to_vec());
        }
    }
    got
}

/// The TCP payload of a datagram, checking that the decoder takes it whole and that the
/// rewritten headers verify.
fn tcp_payload_of(frame: &[u8]) -> Vec<u8> {
    match decode(LinkType::RawIp, frame) {
        Ok(Decoded::Tcp(seg)) => {
            assert!(!seg.is_truncated());
            assert_eq!(tcp_checksum_ok(frame, &seg), Some(true), "TCP checksum");
            if seg.src.is_ipv4() {
                assert_eq!(ipv4_header_checksum_ok(frame, &seg), Some(true));
            }
            seg.payload.to_vec()
        }
        other => panic!("not a TCP segment: {other:?}"),
    }
}

#[test]
fn a_packet_that_is_no_fragment_is_handed_back() {
    let mut d = Defragmenter::new(Config::default());
    let tcp = v4_packet(PROTO_TCP, 1, 0, false, &tcp_v4(b"hello"));
    assert_eq!(d.push(LinkType::RawIp, &tcp, S), Outcome::NotFragment);
    assert!(!Defragmenter::is_fragment(&tcp));
    let tcp6 = {
        let mut p = v6_packet(false, PROTO_TCP, 0, 0, false, &tcp_v6(b"x"));
        // An atomic fragment is no fragment.
        assert_eq!(d.push(LinkType::RawIp, &p, S), Outcome::NotFragment);
        assert!(!Defragmenter::is_fragment(&p));
        p[6] = PROTO_TCP;
        p
    };
    assert_eq!(d.push(LinkType::RawIp, &tcp6, S), Outcome::NotFragment);
    assert_eq!(
        d.push(LinkType::Ethernet, &[0u8; 10], S),
        Outcome::NotFragment
    );
    assert_eq!(*d.stats(), Stats::default());
    let frag = v4_packet(PROTO_TCP, 1, 0, true, &tcp_v4(&payload(100))[..80]);
    assert!(Defragmenter::is_fragment(&frag));
    assert!(Defragmenter::is_fragment(&v6_packet(
        true, PROTO_TCP, 1, 8, false, &[1; 8]
    )));
}

#[test]
fn two_and_three_fragments_in_every_order_give_the_segment() {
    let data = payload(1000);
    let seg = tcp_v4(&data);
    for cuts in [&[512][..], &[400, 800]] {
        let frags = split_v4(&seg, cuts, 7);
        let n = frags.len();
        for order in permutations(n) {
            let mut d = Defragmenter::new(Config::default());
            let frames: Vec<Vec<u8>> = order.iter().map(|&i| frags[i].clone()).collect();
            let dg = push_all(&mut d, &frames, S).expect("complete");
            assert_eq!(tcp_payload_of(&dg), data, "order {order:?}");
            let st = d.stats();
            assert_eq!(
                (st.reassembled, st.fragments, st.in_flight),
                (1, n as u64, 0)
            );
            assert_eq!((st.memory, st.overlaps, st.duplicates), (0, 0, 0));
        }
    }
}

#[test]
fn duplicates_are_counted_and_change_nothing() {
    let data = payload(600);
    let frags = split_v4(&tcp_v4(&data), &[200, 400], 9);
    let mut d = Defragmenter::new(Config::default());
    let frames = vec![
        frags[1].clone(),
        frags[1].clone(),
        frags[0].clone(),
        frags[1].clone(),
        frags[2].clone(),
    ];
    let dg = push_all(&mut d, &frames, S).expect("complete");
    assert_eq!(tcp_payload_of(&dg), data);
    assert_eq!(d.stats().duplicates, 2);
    assert_eq!(d.stats().overlaps_differing, 0);
}

#[test]
fn the_datagram_keeps_the_link_header_and_the_last_fragments_time() {
    let data = payload(300);
    let frags = split_v4(&tcp_v4(&data), &[160], 3);
    let eth = |ip: &[u8]| {
        let mut f = vec![
            2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0, 0, 5, 0x08, 0x00,
        ];
        f.extend_from_slice(ip);
        f
    };
    let mut d = Defragmenter::new(Config::default());
    assert_eq!(
        d.push(LinkType::Ethernet, &eth(&frags[1]), 5 * S),
        Outcome::Held
    );
    let Outcome::Complete(dg) = d.push(LinkType::Ethernet, &eth(&frags[0]), 6 * S) else {
        panic!("incomplete");
    };
    assert_eq!(dg.ts, 6 * S);
    assert_eq!(dg.fragments, 2);
    assert!(!dg.overlap_differs);
    let Ok(Decoded::Tcp(seg)) = decode(LinkType::Ethernet, dg.frame) else {
        panic!("not TCP");
    };
    assert_eq!((seg.vlan_depth, seg.payload), (1, &data[..]));
}

#[test]
fn ipv6_fragments_lose_the_fragment_header_and_chain_the_next_header() {
    let data = payload(900);
    let seg = tcp_v6(&data);
    for hbh in [false, true] {
        let mut d = Defragmenter::new(Config::default());
        let frames = vec![
            v6_packet(hbh, PROTO_TCP, 0xdead_beef, 512, false, &seg[512..]),
            v6_packet(hbh, PROTO_TCP, 0xdead_beef, 0, true, &seg[..512]),
        ];
        assert!(Defragmenter::is_fragment(&frames[0]));
        let dg = push_all(&mut d, &frames, S).expect("complete");
        assert_eq!(dg.len(), 40 + usize::from(hbh) * 8 + seg.len());
        assert_eq!(tcp_payload_of(&dg), data, "hop-by-hop: {hbh}");
        assert_eq!(dg[6], if hbh { 0 } else { PROTO_TCP });
    }
}

#[test]
fn ipv4_keys_include_the_protocol_and_ipv6_keys_do_not_mix_with_ipv4() {
    let mut d = Defragmenter::new(Config::default());
    let a = v4_packet(17, 5, 0, true, &[1; 16]);
    let b = v4_packet(1, 5, 16, false, &[2; 8]);
    assert_eq!(d.push(LinkType::RawIp, &a, S), Outcome::Held);
    assert_eq!(d.push(LinkType::RawIp, &b, S), Outcome::Held);
    assert_eq!(d.stats().in_flight, 2);
    let c = v4_packet(17, 5, 16, false, &[2; 8]);
    assert!(matches!(
        d.push(LinkType::RawIp, &c, S),
        Outcome::Complete(_)
    ));
    assert_eq!(d.stats().in_flight, 1);
}

#[test]
fn rfc_rules_drop_bad_fragments() {
    let seg = tcp_v4(&payload(200));
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        // RFC 791: no data.
        (
            v4_packet(PROTO_TCP, 1, 64, true, &[]),
            DropReason::ZeroLength,
        ),
        // RFC 8200 §4.5 (and 791's 8-byte units): a non-last fragment of 12 bytes.
        (
            v4_packet(PROTO_TCP, 1, 64, true, &[0; 12]),
            DropReason::Unaligned,
        ),
        // RFC 791: the datagram would pass 65,535 bytes.
        (
            v4_packet(PROTO_TCP, 1, 65_528, false, &[0; 16]),
            DropReason::TooLarge,
        ),
        // RFC 1858 / 3128: a first fragment of 16 bytes holds no whole TCP header.
        (
            v4_packet(PROTO_TCP, 1, 0, true, &seg[..16]),
            DropReason::Tiny,
        ),
        // RFC 3128: offset 8 can only rewrite the TCP flags.
        (
            v4_packet(PROTO_TCP, 1, 8, true, &seg[8..24]),
            DropReason::Tiny,
        ),
        // RFC 8200: zero-length and oversized IPv6 fragments.
        (
            v6_packet(false, PROTO_TCP, 1, 64, true, &[]),
            DropReason::ZeroLength,
        ),
        (
            v6_packet(false, 17, 1, 65_528, false, &[0; 16]),
            DropReason::TooLarge,
        ),
        (
            v6_packet(false, PROTO_TCP, 1, 0, true, &seg[..16]),
            DropReason::Tiny,
        ),
        (
            v6_packet(false, 17, 1, 0, true, &[0; 20]),
            DropReason::Unaligned,
        ),
    ];
    for (frame, reason) in cases {
        let mut d = Defragmenter::new(Config::default());
        assert_eq!(d.push(LinkType::RawIp, &frame, S), Outcome::Dropped(reason));
        assert_eq!(d.stats().dropped(reason), 1);
        assert_eq!((d.stats().dropped_total(), d.stats().in_flight), (1, 0));
    }
    // The same offsets are fine for another protocol, and for a full TCP header.
    let mut d = Defragmenter::new(Config::default());
    assert_eq!(
        d.push(LinkType::RawIp, &v4_packet(17, 1, 8, true, &[0; 16]), S),
        Outcome::Held
    );
    let first = v4_packet(PROTO_TCP, 2, 0, true, &seg[..24]);
    assert_eq!(d.push(LinkType::RawIp, &first, S), Outcome::Held);
    // A TCP header with options (data offset 8: 32 bytes) must be whole, too.
    let mut opts = seg.clone();
    opts[12] = 0x80;
    let short = v4_packet(PROTO_TCP, 3, 0, true, &opts[..24]);
    assert_eq!(
        d.push(LinkType::RawIp, &short, S),
        Outcome::Dropped(DropReason::Tiny)
    );
}

#[test]
fn a_truncated_fragment_is_dropped() {
    let mut d = Defragmenter::new(Config::default());
    let f = v4_packet(PROTO_TCP, 1, 64, true, &[0; 64]);
    let out = d.push(LinkType::RawIp, &f[..50], S);
    assert_eq!(out, Outcome::Dropped(DropReason::Truncated));
    let f6 = v6_packet(false, PROTO_TCP, 1, 64, true, &[0; 64]);
    let out = d.push(LinkType::RawIp, &f6[..60], S);
    assert_eq!(out, Outcome::Dropped(DropReason::Truncated));
    assert_eq!(d.stats().fragments, 2);
}

#[test]
fn a_contradicting_last_fragment_discards_the_datagram() {
    let mut d = Defragmenter::new(Config::default());
    let p = |off, more, n| v4_packet(17, 1, off, more, &vec![1u8; n]);
    assert_eq!(d.push(LinkType::RawIp, &p(0, true, 16), S), Outcome::Held);
    assert_eq!(d.push(LinkType::RawIp, &p(32, false, 8), S), Outcome::Held);
    // Data past the known end.
    let out = d.push(LinkType::RawIp, &p(40, true, 8), S);
    assert_eq!(out, Outcome::Dropped(DropReason::Inconsistent));
    assert_eq!((d.stats().in_flight, d.stats().memory), (0, 0));
    // A last fragment that ends before data already held.
    assert_eq!(d.push(LinkType::RawIp, &p(64, true, 16), S), Outcome::Held);
    let out = d.push(LinkType::RawIp, &p(16, false, 8), S);
    assert_eq!(out, Outcome::Dropped(DropReason::Inconsistent));
    assert_eq!(d.stats().dropped(DropReason::Inconsistent), 2);
}

#[test]
fn datagrams_time_out_in_packet_time_30_s_for_ipv4_and_60_s_for_ipv6() {
    let mut d = Defragmenter::new(Config::default());
    let seg = tcp_v4(&payload(100));
    let seg6 = tcp_v6(&payload(100));
    assert_eq!(
        d.push(
            LinkType::RawIp,
            &v4_packet(PROTO_TCP, 1, 0, true, &seg[..64]),
            100 * S
        ),
        Outcome::Held
    );
    assert_eq!(
        d.push(
            LinkType::RawIp,
            &v6_packet(false, PROTO_TCP, 1, 0, true, &seg6[..64]),
            100 * S
        ),
        Outcome::Held
    );
    d.expire(130 * S - 1);
    assert_eq!(d.stats().in_flight, 2);
    d.expire(130 * S);
    assert_eq!((d.stats().in_flight, d.stats().timeouts), (1, 1));
    // The late IPv4 rest starts a new datagram that never completes.
    let rest = v4_packet(PROTO_TCP, 1, 64, false, &seg[64..]);
    assert_eq!(d.push(LinkType::RawIp, &rest, 131 * S), Outcome::Held);
    // The IPv6 one is still in time at 159 s.
    let rest6 = v6_packet(false, PROTO_TCP, 1, 64, false, &seg6[64..]);
    assert!(matches!(
        d.push(LinkType::RawIp, &rest6, 159 * S),
        Outcome::Complete(_)
    ));
    // Time never runs backwards: an older packet does not revive anything.
    d.expire(5 * S);
    d.expire(161 * S);
    assert_eq!((d.stats().in_flight, d.stats().timeouts), (0, 2));
}

#[test]
fn too_many_fragments_discard_the_datagram() {
    let cfg = Config {
        max_fragments: 4,
        ..Config::default()
    };
    let mut d = Defragmenter::new(cfg);
    for i in 0..4 {
        let f = v4_packet(17, 1, i * 8, true, &[1; 8]);
        assert_eq!(d.push(LinkType::RawIp, &f, S), Outcome::Held);
    }
    let f = v4_packet(17, 1, 32, false, &[1; 8]);
    assert_eq!(
        d.push(LinkType::RawIp, &f, S),
        Outcome::Dropped(DropReason::TooManyFragments)
    );
    assert_eq!((d.stats().in_flight, d.stats().memory), (0, 0));
}

#[test]
fn past_the_datagram_bound_the_oldest_is_evicted() {
    let cfg = Config {
        max_datagrams: 3,
        ..Config::default()
    };
    let mut d = Defragmenter::new(cfg);
    for id in 0..5u16 {
        let f = v4_packet(17, id, 0, true, &[1; 8]);
        assert_eq!(d.push(LinkType::RawIp, &f, S), Outcome::Held);
    }
    assert_eq!((d.stats().in_flight, d.stats().evictions), (3, 2));
    // Ids 0 and 1 went first: their rest starts new datagrams, 4's completes.
    let last = |id| v4_packet(17, id, 8, false, &[2; 8]);
    assert!(matches!(
        d.push(LinkType::RawIp, &last(4), S),
        Outcome::Complete(_)
    ));
    assert_eq!(d.push(LinkType::RawIp, &last(0), S), Outcome::Held);
    assert_eq!(d.stats().evictions, 2);
}

#[test]
fn past_the_memory_cap_the_oldest_is_evicted_and_a_datagram_alone_past_it_dropped() {
    let cfg = Config {
        memory: 8 * 1024,
        ..Config::default()
    };
    let mut d = Defragmenter::new(cfg);
    for id in 0..20u16 {
        let f = v4_packet(17, id, 0, true, &[1; 1024]);
        assert_eq!(d.push(LinkType::RawIp, &f, S), Outcome::Held);
        assert!(d.stats().memory <= 8 * 1024);
    }
    let st = *d.stats();
    assert!(st.in_flight >= 4 && st.in_flight < 8, "{st:?}");
    assert_eq!(st.evictions + st.in_flight, 20);
    assert!(st.peak_memory <= 8 * 1024);
    let big = v4_packet(17, 99, 0, true, &[1; 9000]);
    assert_eq!(
        d.push(LinkType::RawIp, &big, S),
        Outcome::Dropped(DropReason::Memory)
    );
    assert!(d.stats().memory <= 8 * 1024);
}

#[test]
fn the_cap_holds_when_a_datagram_completes_too() {
    // Found by the defrag fuzzer: the fragment that completes a datagram pushed the held
    // bytes past the cap for an instant, so `peak_memory` went over it. Now the others are
    // evicted first, and a datagram that alone is over the cap is dropped, complete or not.
    let cfg = Config {
        memory: 8 * 1024,
        ..Config::default()
    };
    let mut d = Defragmenter::new(cfg);
    for id in 0..6u16 {
        let f = v4_packet(17, id, 0, true, &[1; 1024]);
        assert_eq!(d.push(LinkType::RawIp, &f, S), Outcome::Held);
    }
    let data = payload(4096);
    let frames = split_v4(&data, &[2048], 77);
    assert_eq!(d.push(LinkType::RawIp, &frames[0], S), Outcome::Held);
    assert!(matches!(
        d.push(LinkType::RawIp, &frames[1], S),
        Outcome::Complete(_)
    ));
    let st = *d.stats();
    assert!(st.evictions > 0, "{st:?}");
    assert!(st.peak_memory <= 8 * 1024, "{st:?}");

    let big = payload(12 * 1024);
    let frames = split_v4(&big, &[6 * 1024], 78);
    assert_eq!(d.push(LinkType::RawIp, &frames[0], S), Outcome::Held);
    assert_eq!(
        d.push(LinkType::RawIp, &frames[1], S),
        Outcome::Dropped(DropReason::Memory)
    );
    let st = *d.stats();
    assert!(st.peak_memory <= 8 * 1024, "{st:?}");
    assert_eq!(st.memory, 0, "{st:?}");
}

#[test]
fn a_million_first_fragments_stay_within_the_cap() {
    for (cfg, bound) in [
        (Config::default(), "datagrams"),
        (
            Config {
                memory: 1 << 20,
                max_datagrams: 1 << 20,
                ..Config::default()
            },
            "memory",
        ),
    ] {
        let mut d = Defragmenter::new(cfg);
        let seg = tcp_v4(&payload(1400));
        let mut frame = v4_packet(PROTO_TCP, 0, 0, true, &seg[..1400]);
        let n = 1_000_000u32;
        for i in 0..n {
            // A new datagram each time: the id, then the source address, change.
            frame[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            frame[14] = (i >> 16) as u8;
            let out = d.push(LinkType::RawIp, &frame, u64::from(i) * 1000);
            assert_eq!(out, Outcome::Held);
            assert!(d.stats().memory <= cfg.memory as u64);
            assert!(d.stats().in_flight <= cfg.max_datagrams as u64);
        }
        let st = *d.stats();
        assert_eq!(st.fragments, u64::from(n));
        assert_eq!(st.evictions + st.in_flight, u64::from(n), "{bound}: {st:?}");
        assert_eq!((st.timeouts, st.reassembled), (0, 0));
        assert!(st.peak_memory <= cfg.memory as u64);
        if bound == "datagrams" {
            assert_eq!(st.in_flight, cfg.max_datagrams as u64);
        } else {
            assert!(st.in_flight < cfg.max_datagrams as u64);
        }
    }
}

// --- Overlaps and policies -----------------------------------------------------------------

/// Novak's scenario ("Target-Based Fragmentation Reassembly", 2005, fig. 2), as Suricata's
/// tests replay it: (offset, length, fill) in arrival order; the last one has MF clear.
const NOVAK: [(u32, usize, u8); 17] = [
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

/// The paper's result per policy, one letter per 8 bytes.
fn novak_expected(p: Policy) -> &'static str {
    match p {
        Policy::First => "AAAJBBCCCLDLMEEFFFGGHHIQ",
        Policy::Last => "AJJJJBKKKLLLMMMFNFGOPHQQ",
        Policy::Bsd => "AAAJJBCCCLLLMMMFFFGGHHIQ",
        Policy::Linux => "AAAJJBKKKLLLMMMFFFGGPHQQ",
        Policy::Windows => "AAAJBBCCCLLLMEEFFFGGHHIQ",
        Policy::Solaris => "AAAJBBCCCLLLMMMFFFGGHHIQ",
    }
}

fn novak_frames(v6: bool) -> Vec<Vec<u8>> {
    NOVAK
        .iter()
        .enumerate()
        .map(|(i, &(off, len, c))| {
            let more = i + 1 < NOVAK.len();
            if v6 {
                v6_packet(false, 58, 1, off, more, &vec![c; len])
            } else {
                v4_packet(1, 1, off, more, &vec![c; len])
            }
        })
        .collect()
}

#[test]
fn every_policy_gives_novaks_result_for_ipv4_and_ipv6() {
    for v6 in [false, true] {
        for p in Policy::ALL {
            let mut d = Defragmenter::new(Config {
                policy: p,
                ..Config::default()
            });
            let dg = push_all(&mut d, &novak_frames(v6), S).expect("complete");
            let body = &dg[if v6 { 40 } else { 20 }..];
            let want: Vec<u8> = novak_expected(p).bytes().flat_map(|c| [c; 8]).collect();
            assert_eq!(
                String::from_utf8_lossy(body),
                String::from_utf8_lossy(&want),
                "policy {p}, IPv6 {v6}"
            );
            let st = d.stats();
            assert_eq!(st.overlaps + st.duplicates, 8, "{p}: {st:?}");
            assert_eq!(st.overlaps_differing, 8);
            // Every byte from exactly one fragment, and it is that fragment's byte.
            let mut at = 0;
            for pr in d.provenance() {
                assert_eq!(pr.start, at);
                let (off, len, c) = NOVAK[pr.push as usize];
                assert!(off <= pr.start && pr.end as usize <= off as usize + len);
                assert!(body[pr.start as usize..pr.end as usize]
                    .iter()
                    .all(|&b| b == c));
                at = pr.end;
            }
            assert_eq!(at, 192);
        }
    }
}

#[test]
fn overlaps_with_equal_bytes_are_counted_but_not_raised() {
    let data = payload(800);
    let seg = tcp_v4(&data);
    let frames = vec![
        v4_packet(PROTO_TCP, 4, 0, true, &seg[..400]),
        v4_packet(PROTO_TCP, 4, 200, true, &seg[200..600]),
        v4_packet(PROTO_TCP, 4, 600, false, &seg[600..]),
    ];
    let mut d = Defragmenter::new(Config::default());
    let mut last = None;
    for f in &frames {
        if let Outcome::Complete(dg) = d.push(LinkType::RawIp, f, S) {
            assert!(!dg.overlap_differs);
            last = Some(dg.frame.to_vec());
        }
    }
    assert_eq!(tcp_payload_of(&last.expect("complete")), data);
    assert_eq!((d.stats().overlaps, d.stats().overlaps_differing), (1, 0));
}

#[test]
fn differing_overlaps_are_raised_and_resolved_by_the_policy() {
    // The classic evasion: the second copy of bytes 200..400 says something else.
    let data = payload(600);
    let seg = tcp_v4(&data);
    let mut evil = seg.clone();
    for b in &mut evil[220..400] {
        *b = b'X';
    }
    for p in Policy::ALL {
        let frames = vec![
            v4_packet(PROTO_TCP, 4, 0, true, &seg[..400]),
            v4_packet(PROTO_TCP, 4, 200, true, &evil[200..400]),
            v4_packet(PROTO_TCP, 4, 400, false, &seg[400..]),
        ];
        let mut d = Defragmenter::new(Config {
            policy: p,
            ..Config::default()
        });
        let mut out = None;
        for f in &frames {
            if let Outcome::Complete(dg) = d.push(LinkType::RawIp, f, S) {
                assert!(dg.overlap_differs);
                out = Some(dg.frame.to_vec());
            }
        }
        let out = out.expect("complete");
        // The later copy starts after and ends with the original: only `last` takes it.
        let tcp = &out[20..];
        let want = if p == Policy::Last { &evil } else { &seg };
        assert_eq!(tcp, &want[..], "{p}");
        assert_eq!(d.stats().overlaps_differing, 1);
    }
}

#[test]
fn a_subsequent_fragment_covering_the_original_wins_under_bsd_linux_windows_solaris() {
    // Original: bytes 8..16; subsequent: 0..24 with other bytes, then the rest.
    for p in Policy::ALL {
        let mut d = Defragmenter::new(Config {
            policy: p,
            ..Config::default()
        });
        let frames = vec![
            v4_packet(17, 1, 8, true, &[b'o'; 8]),
            v4_packet(17, 1, 0, true, &[b'n'; 24]),
            v4_packet(17, 1, 24, false, &[b'z'; 8]),
        ];
        let dg = push_all(&mut d, &frames, S).expect("complete");
        let mid = dg[20 + 8];
        let want = if p == Policy::First { b'o' } else { b'n' };
        assert_eq!(mid, want, "{p}");
    }
}

#[test]
fn policies_parse_by_name() {
    for p in Policy::ALL {
        assert_eq!(p.name().parse::<Policy>(), Ok(p));
        assert_eq!(p.to_string(), p.name());
    }
    assert_eq!("BSD".parse::<Policy>(), Ok(Policy::Bsd));
    let err = "vista".parse::<Policy>().unwrap_err();
    assert!(err.to_string().contains("first, last, bsd"), "{err}");
    assert_eq!(Policy::default(), Policy::First);
}

#[test]
fn stats_add_up_across_cores() {
    let mut a = Stats {
        fragments: 2,
        ..Stats::default()
    };
    a.dropped[DropReason::Tiny.index()] = 1;
    let mut b = a;
    b.add(&a);
    assert_eq!((b.fragments, b.dropped(DropReason::Tiny)), (4, 2));
    let names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), DropReason::COUNT);
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
    }
}
