//! Tests over hand-built frames, plus a pass over the shared capture corpus.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

// ---------------------------------------------------------------------------------------
// Frame builder. Checksums are computed here with a naive word sum, independent of the
// decoder's `checksum::Sum`.
// ---------------------------------------------------------------------------------------

const V4_SRC: [u8; 4] = [192, 0, 2, 1];
const V4_DST: [u8; 4] = [198, 51, 100, 7];
const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xef,
];

fn naive_sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.concat();
    let mut s: u32 = 0;
    for w in bytes.chunks(2) {
        s += (u32::from(w[0]) << 8) | u32::from(*w.get(1).unwrap_or(&0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[derive(Clone)]
struct Tcp {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    urgent: u16,
    /// Raw option bytes, padded with NOPs... by the caller (must be a multiple of 4).
    options: Vec<u8>,
    payload: Vec<u8>,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            src_port: 40000,
            dst_port: 80,
            seq: 0x0102_0304,
            ack: 0xa0b0_c0d0,
            flags: TcpFlags::ACK | TcpFlags::PSH,
            window: 0xfaf0,
            urgent: 0,
            options: Vec::new(),
            payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        }
    }
}

impl Tcp {
    /// Header + payload with a zero checksum.
    fn bytes(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let doff = (20 + self.options.len()) / 4;
        let mut b = Vec::new();
        b.extend_from_slice(&self.src_port.to_be_bytes());
        b.extend_from_slice(&self.dst_port.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.ack.to_be_bytes());
        b.push((doff as u8) << 4);
        b.push(self.flags);
        b.extend_from_slice(&self.window.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.urgent.to_be_bytes());
        b.extend_from_slice(&self.options);
        b.extend_from_slice(&self.payload);
        b
    }

    fn v4(&self) -> Vec<u8> {
        let mut seg = self.bytes();
        let len = (seg.len() as u16).to_be_bytes();
        let c = naive_sum(&[&V4_SRC, &V4_DST, &[0, 6], &len, &seg]);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        seg
    }

    fn v6(&self) -> Vec<u8> {
        let mut seg = self.bytes();
        let len = (seg.len() as u32).to_be_bytes();
        let c = naive_sum(&[&V6_SRC, &V6_DST, &len, &[0, 0, 0, 6], &seg]);
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        seg
    }
}

/// An IPv4 packet with a valid header checksum.
fn ipv4(proto: u8, options: &[u8], flags_frag: u16, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let hl = 20 + options.len();
    let total = (hl + payload.len()) as u16;
    let mut h = vec![0x40 | (hl / 4) as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34]);
    h.extend_from_slice(&flags_frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&V4_SRC);
    h.extend_from_slice(&V4_DST);
    h.extend_from_slice(options);
    let c = naive_sum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv4_tcp(tcp: &Tcp) -> Vec<u8> {
    ipv4(6, &[], 0x4000, &tcp.v4())
}

/// An IPv6 packet: `next` is the first next-header, `rest` the extension headers and
/// upper-layer data.
fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&V6_SRC);
    h.extend_from_slice(&V6_DST);
    h.extend_from_slice(rest);
    h
}

fn ipv6_tcp(tcp: &Tcp) -> Vec<u8> {
    ipv6(6, &tcp.v6())
}

/// A generic (RFC 8200 format) extension header of `8 * (n + 1)` bytes.
fn ext(next: u8, n: u8) -> Vec<u8> {
    let mut e = vec![0u8; 8 * (usize::from(n) + 1)];
    e[0] = next;
    e[1] = n;
    // A PadN option filling the rest, as real stacks send.
    e[2] = 1;
    e[3] = (e.len() - 4) as u8;
    e
}

fn frag_ext(next: u8, offset_words: u16, more: bool) -> Vec<u8> {
    let v = (offset_words << 3) | u16::from(more);
    let mut e = vec![next, 0];
    e.extend_from_slice(&v.to_be_bytes());
    e.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    e
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn vlan(tpid: u16, vid: u16, inner: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = tpid.to_be_bytes().to_vec();
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&inner.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet frame whose header is followed by `tags` (each a TPID) then IPv4.
fn eth_tagged(tags: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut inner = payload.to_vec();
    let mut next = 0x0800;
    for (i, &tpid) in tags.iter().enumerate().rev() {
        inner = vlan(tpid, 100 + i as u16, next, &inner)[2..].to_vec();
        next = tpid;
    }
    eth(next, &inner)
}

fn mpls_label(label: u32, bos: bool) -> [u8; 4] {
    (label << 12 | u32::from(bos) << 8 | 64).to_be_bytes()
}

fn tcp_of(d: Result<Decoded<'_>, DecodeError>) -> TcpSegment<'_> {
    match d {
        Ok(Decoded::Tcp(seg)) => seg,
        other => panic!("expected TCP, got {other:?}"),
    }
}

fn err_of(d: Result<Decoded<'_>, DecodeError>) -> DecodeError {
    match d {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Checks the segment against the builder's default fields and both checksums.
fn assert_default_segment(frame: &[u8], seg: &TcpSegment<'_>, l3: u16, l4: u16) {
    let t = Tcp::default();
    assert_eq!(seg.src_port, t.src_port);
    assert_eq!(seg.dst_port, t.dst_port);
    assert_eq!(seg.seq, t.seq);
    assert_eq!(seg.ack, t.ack);
    assert_eq!(seg.flags, TcpFlags(t.flags));
    assert!(seg.flags.ack() && seg.flags.psh() && !seg.flags.syn());
    assert_eq!(seg.window, t.window);
    assert_eq!(seg.payload, &t.payload[..]);
    assert_eq!(seg.payload_len_on_wire, t.payload.len() as u32);
    assert_eq!(seg.l3_offset, l3);
    assert_eq!(seg.l4_offset, l4);
    assert_eq!(tcp_checksum_ok(frame, seg), Some(true));
    if seg.src.is_ipv4() {
        assert_eq!(seg.src, IpAddr::V4(Ipv4Addr::from(V4_SRC)));
        assert_eq!(seg.dst, IpAddr::V4(Ipv4Addr::from(V4_DST)));
        assert_eq!(ipv4_header_checksum_ok(frame, seg), Some(true));
    } else {
        assert_eq!(seg.src, IpAddr::V6(Ipv6Addr::from(V6_SRC)));
        assert_eq!(seg.dst, IpAddr::V6(Ipv6Addr::from(V6_DST)));
        assert_eq!(ipv4_header_checksum_ok(frame, seg), None);
    }
}

// ---------------------------------------------------------------------------------------
// Link layers
// ---------------------------------------------------------------------------------------

#[test]
fn ethernet_ipv4() {
    let f = eth(0x0800, &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 14, 34);
    assert_eq!(seg.vlan_depth, 0);
    assert!(!seg.is_truncated());
    assert_eq!(seg.seq_len(), Tcp::default().payload.len() as u32);
}

#[test]
fn ethernet_ipv6() {
    let f = eth(0x86dd, &ipv6_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 14, 54);
}

#[test]
fn vlan_802_1q() {
    let f = eth_tagged(&[0x8100], &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 18, 38);
    assert_eq!(seg.vlan_depth, 1);
}

#[test]
fn qinq_802_1ad_and_legacy_9100() {
    let f = eth_tagged(&[0x88a8, 0x8100], &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 22, 42);
    assert_eq!(seg.vlan_depth, 2);

    let f = eth_tagged(&[0x9100, 0x9100, 0x8100], &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 26, 46);
    assert_eq!(seg.vlan_depth, 3);
}

#[test]
fn vlan_stack_limit() {
    let tags = [0x8100u16; MAX_VLAN_TAGS as usize];
    let f = eth_tagged(&tags, &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(seg.vlan_depth, MAX_VLAN_TAGS);

    let tags = [0x8100u16; MAX_VLAN_TAGS as usize + 1];
    let f = eth_tagged(&tags, &ipv4_tcp(&Tcp::default()));
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &f)),
        DecodeError::TooManyVlanTags
    );
}

#[test]
fn vlan_truncated() {
    let f = eth(0x8100, &[0, 100, 0x08]);
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &f)),
        DecodeError::Truncated { layer: Layer::Vlan }
    );
}

#[test]
fn mpls_ipv4_and_ipv6() {
    let mut p = Vec::new();
    p.extend_from_slice(&mpls_label(100, false));
    p.extend_from_slice(&mpls_label(200, true));
    p.extend_from_slice(&ipv4_tcp(&Tcp::default()));
    let f = eth(0x8847, &p);
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 22, 42);

    let mut p = mpls_label(16, true).to_vec();
    p.extend_from_slice(&ipv6_tcp(&Tcp::default()));
    // MPLS under a VLAN tag.
    let f = eth(0x8100, &vlan(0x8100, 7, 0x8847, &p)[2..]);
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 22, 62);
    assert_eq!(seg.vlan_depth, 1);
}

#[test]
fn mpls_non_ip_payload_is_not_tcp() {
    // Pseudowire control word (first nibble 0).
    let mut p = mpls_label(300, true).to_vec();
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(&eth(0x0800, &ipv4_tcp(&Tcp::default())));
    assert_eq!(
        decode(LinkType::Ethernet, &eth(0x8847, &p)),
        Ok(Decoded::NotTcp)
    );
}

#[test]
fn mpls_errors() {
    let mut p = Vec::new();
    for i in 0..=MAX_MPLS_LABELS {
        p.extend_from_slice(&mpls_label(u32::from(i) + 16, false));
    }
    p.extend_from_slice(&ipv4_tcp(&Tcp::default()));
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x8847, &p))),
        DecodeError::TooManyMplsLabels
    );
    // Label cut short, and nothing after the bottom label.
    for p in [&mpls_label(16, true)[..2], &mpls_label(16, true)[..]] {
        assert_eq!(
            err_of(decode(LinkType::Ethernet, &eth(0x8847, p))),
            DecodeError::Truncated { layer: Layer::Mpls }
        );
    }
}

#[test]
fn raw_ip() {
    let f = ipv4_tcp(&Tcp::default());
    let seg = tcp_of(decode(LinkType::RawIp, &f));
    assert_default_segment(&f, &seg, 0, 20);
    let f = ipv6_tcp(&Tcp::default());
    let seg = tcp_of(decode(LinkType::RawIp, &f));
    assert_default_segment(&f, &seg, 0, 40);

    assert_eq!(
        err_of(decode(LinkType::RawIp, &[0x55; 40])),
        DecodeError::BadIpVersion { found: 5 }
    );
    assert_eq!(
        err_of(decode(LinkType::RawIp, &[])),
        DecodeError::Truncated { layer: Layer::Link }
    );
}

#[test]
fn linux_sll_and_sll2() {
    let mut f = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
    f.extend_from_slice(&ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::LinuxSll, &f));
    assert_default_segment(&f, &seg, 16, 36);

    let mut f = vec![
        0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0,
    ];
    f.extend_from_slice(&ipv6_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::LinuxSll2, &f));
    assert_default_segment(&f, &seg, 20, 60);

    // SLL with a VLAN tag left in the packet.
    let mut f = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x81, 0x00];
    f.extend_from_slice(&[0, 5, 0x08, 0x00]);
    f.extend_from_slice(&ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::LinuxSll, &f));
    assert_eq!((seg.vlan_depth, seg.l3_offset), (1, 20));

    for link in [LinkType::LinuxSll, LinkType::LinuxSll2] {
        assert_eq!(
            err_of(decode(
                link,
                &[0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08]
            )),
            DecodeError::Truncated { layer: Layer::Link }
        );
    }
}

#[test]
fn null_loopback_both_byte_orders() {
    let v4 = ipv4_tcp(&Tcp::default());
    let v6 = ipv6_tcp(&Tcp::default());
    let cases: [(u32, &[u8]); 4] = [(2, &v4), (24, &v6), (28, &v6), (30, &v6)];
    for (family, ip) in cases {
        for hdr in [family.to_le_bytes(), family.to_be_bytes()] {
            let mut f = hdr.to_vec();
            f.extend_from_slice(ip);
            let seg = tcp_of(decode(LinkType::Null, &f));
            assert_default_segment(&f, &seg, 4, if family == 2 { 24 } else { 44 });
        }
    }
    let mut f = 7u32.to_le_bytes().to_vec();
    f.extend_from_slice(&v4);
    assert_eq!(decode(LinkType::Null, &f), Ok(Decoded::NotTcp));
    assert_eq!(
        err_of(decode(LinkType::Null, &[2, 0, 0])),
        DecodeError::Truncated { layer: Layer::Link }
    );
}

#[test]
fn non_ip_ethertypes_are_not_tcp() {
    // ARP request, LLDP, and an 802.3 frame (length field).
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(
        decode(LinkType::Ethernet, &eth(0x0806, &arp)),
        Ok(Decoded::NotTcp)
    );
    assert_eq!(
        decode(LinkType::Ethernet, &eth(0x88cc, &[0; 30])),
        Ok(Decoded::NotTcp)
    );
    assert_eq!(
        decode(LinkType::Ethernet, &eth(46, &[0xaa; 46])),
        Ok(Decoded::NotTcp)
    );
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &[0; 13])),
        DecodeError::Truncated { layer: Layer::Link }
    );
}

#[test]
fn from_pcap_codes() {
    assert_eq!(LinkType::from_pcap(1), Some(LinkType::Ethernet));
    for code in [12, 14, 101, 228, 229] {
        assert_eq!(LinkType::from_pcap(code), Some(LinkType::RawIp));
    }
    assert_eq!(LinkType::from_pcap(113), Some(LinkType::LinuxSll));
    assert_eq!(LinkType::from_pcap(276), Some(LinkType::LinuxSll2));
    assert_eq!(LinkType::from_pcap(0), Some(LinkType::Null));
    assert_eq!(LinkType::from_pcap(108), Some(LinkType::Null));
    assert_eq!(LinkType::from_pcap(105), None);
}

// ---------------------------------------------------------------------------------------
// IPv4
// ---------------------------------------------------------------------------------------

#[test]
fn ipv4_options_skipped() {
    // Record Route (7) with room for one address, padded with EOL: 8 bytes.
    let opts = [7, 7, 4, 0, 0, 0, 0, 0];
    let f = eth(0x0800, &ipv4(6, &opts, 0, &Tcp::default().v4()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 14, 42);
}

#[test]
fn ipv4_fragments() {
    let seg = Tcp::default().v4();
    // MF set, offset 0: first fragment.
    let f = eth(0x0800, &ipv4(6, &[], 0x2000, &seg));
    assert_eq!(decode(LinkType::Ethernet, &f), Ok(Decoded::Fragment));
    // Offset != 0, MF clear: last fragment.
    let f = eth(0x0800, &ipv4(6, &[], 0x00b9, &seg[..8]));
    assert_eq!(decode(LinkType::Ethernet, &f), Ok(Decoded::Fragment));
    // DF alone is not a fragment.
    let f = eth(0x0800, &ipv4(6, &[], 0x4000, &seg));
    assert!(matches!(
        decode(LinkType::Ethernet, &f),
        Ok(Decoded::Tcp(_))
    ));
    // A UDP fragment is simply not TCP.
    let f = eth(0x0800, &ipv4(17, &[], 0x2000, &seg));
    assert_eq!(decode(LinkType::Ethernet, &f), Ok(Decoded::NotTcp));
}

#[test]
fn ipv4_other_protocols_are_not_tcp() {
    for proto in [1u8, 17, 47, 50, 132] {
        let f = eth(0x0800, &ipv4(proto, &[], 0, &[0; 16]));
        assert_eq!(
            decode(LinkType::Ethernet, &f),
            Ok(Decoded::NotTcp),
            "proto {proto}"
        );
    }
}

#[test]
fn ipv4_errors() {
    let good = ipv4_tcp(&Tcp::default());

    let mut p = good.clone();
    p[0] = 0x65;
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x0800, &p))),
        DecodeError::BadIpVersion { found: 6 }
    );

    let mut p = good.clone();
    p[0] = 0x44;
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x0800, &p))),
        DecodeError::BadIpHeaderLength { ihl: 4 }
    );

    let mut p = good.clone();
    p[2..4].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x0800, &p))),
        DecodeError::BadIpTotalLength {
            total: 19,
            header: 20
        }
    );

    // Total length 0 (TSO capture) is not an error: the captured length is used.
    let mut p = good.clone();
    p[2..4].copy_from_slice(&[0, 0]);
    let f = eth(0x0800, &p);
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(seg.payload, &Tcp::default().payload[..]);
    assert_eq!(seg.payload_len_on_wire, Tcp::default().payload.len() as u32);

    // Header cut by the snapshot length: fixed part, then options.
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x0800, &good[..19]))),
        DecodeError::Truncated { layer: Layer::Ipv4 }
    );
    let with_opts = ipv4(6, &[1, 1, 1, 0], 0, &Tcp::default().v4());
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x0800, &with_opts[..22]))),
        DecodeError::Truncated { layer: Layer::Ipv4 }
    );
}

#[test]
fn ipv4_header_checksum() {
    let f = eth(0x0800, &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(ipv4_header_checksum_ok(&f, &seg), Some(true));
    let mut bad = f.clone();
    bad[14 + 8] ^= 0x01; // TTL
    let seg = tcp_of(decode(LinkType::Ethernet, &bad));
    assert_eq!(ipv4_header_checksum_ok(&bad, &seg), Some(false));
    // The TCP checksum does not cover the TTL.
    assert_eq!(tcp_checksum_ok(&bad, &seg), Some(true));
}

#[test]
fn snaplen_truncation_keeps_captured_payload() {
    let t = Tcp {
        payload: (0..200u8).collect(),
        ..Tcp::default()
    };
    let full = eth(0x0800, &ipv4_tcp(&t));
    let cut = &full[..14 + 20 + 20 + 50];
    let seg = tcp_of(decode(LinkType::Ethernet, cut));
    assert_eq!(seg.payload, &t.payload[..50]);
    assert_eq!(seg.payload_len_on_wire, 200);
    assert!(seg.is_truncated());
    assert_eq!(seg.seq_len(), 200);
    assert_eq!(tcp_checksum_ok(cut, &seg), None);
    assert_eq!(ipv4_header_checksum_ok(cut, &seg), Some(true));

    // Same over IPv6.
    let full = eth(0x86dd, &ipv6_tcp(&t));
    let cut = &full[..14 + 40 + 20 + 1];
    let seg = tcp_of(decode(LinkType::Ethernet, cut));
    assert_eq!(seg.payload, &t.payload[..1]);
    assert_eq!(seg.payload_len_on_wire, 200);
    assert_eq!(tcp_checksum_ok(cut, &seg), None);

    // Cut exactly after the TCP header: empty payload, still decoded.
    let cut = &full[..14 + 40 + 20];
    let seg = tcp_of(decode(LinkType::Ethernet, cut));
    assert!(seg.payload.is_empty());
    assert_eq!(seg.payload_len_on_wire, 200);
}

#[test]
fn ethernet_padding_is_trimmed() {
    let t = Tcp {
        payload: b"hi".to_vec(),
        ..Tcp::default()
    };
    let mut f = eth(0x0800, &ipv4_tcp(&t));
    assert!(f.len() < 60);
    f.resize(60, 0xee);
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(seg.payload, b"hi");
    assert_eq!(seg.payload_len_on_wire, 2);
    assert_eq!(tcp_checksum_ok(&f, &seg), Some(true));

    // A pure ACK padded to 60 bytes: no payload.
    let t = Tcp {
        payload: Vec::new(),
        ..Tcp::default()
    };
    let mut f = eth(0x86dd, &ipv6_tcp(&t));
    f.extend_from_slice(&[0xee; 6]);
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert!(seg.payload.is_empty());
    assert_eq!(tcp_checksum_ok(&f, &seg), Some(true));
}

// ---------------------------------------------------------------------------------------
// IPv6
// ---------------------------------------------------------------------------------------

#[test]
fn ipv6_hop_by_hop_and_destination_options() {
    let mut rest = ext(60, 0); // Hop-by-Hop -> Destination Options
    rest.extend_from_slice(&ext(6, 1)); // Destination Options (16 bytes) -> TCP
    rest.extend_from_slice(&Tcp::default().v6());
    let f = eth(0x86dd, &ipv6(0, &rest));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 14, 14 + 40 + 8 + 16);
}

#[test]
fn ipv6_routing_and_ah() {
    let mut rest = ext(51, 2); // Routing (24 bytes) -> AH
                               // AH with payload length 4 -> (4 + 2) * 4 = 24 bytes.
    let mut ah = vec![0u8; 24];
    ah[0] = 6;
    ah[1] = 4;
    rest.extend_from_slice(&ah);
    rest.extend_from_slice(&Tcp::default().v6());
    let f = eth(0x86dd, &ipv6(43, &rest));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_default_segment(&f, &seg, 14, 14 + 40 + 24 + 24);
}

#[test]
fn ipv6_fragments() {
    let seg = Tcp::default().v6();
    // First fragment (offset 0, M set).
    let mut rest = frag_ext(6, 0, true);
    rest.extend_from_slice(&seg[..16]);
    assert_eq!(
        decode(LinkType::RawIp, &ipv6(44, &rest)),
        Ok(Decoded::Fragment)
    );
    // Later fragment, after a Hop-by-Hop header.
    let mut rest = ext(44, 0);
    rest.extend_from_slice(&frag_ext(6, 2, false));
    rest.extend_from_slice(&seg[16..]);
    assert_eq!(
        decode(LinkType::RawIp, &ipv6(0, &rest)),
        Ok(Decoded::Fragment)
    );
    // Fragment of UDP.
    let mut rest = frag_ext(17, 0, true);
    rest.extend_from_slice(&[0; 16]);
    assert_eq!(
        decode(LinkType::RawIp, &ipv6(44, &rest)),
        Ok(Decoded::NotTcp)
    );
    // Atomic fragment: decoded as TCP.
    let mut rest = frag_ext(6, 0, false);
    rest.extend_from_slice(&seg);
    let f = ipv6(44, &rest);
    let seg = tcp_of(decode(LinkType::RawIp, &f));
    assert_default_segment(&f, &seg, 0, 48);
}

#[test]
fn ipv6_not_tcp() {
    // No Next Header, ESP, UDP, ICMPv6; and No Next Header after an extension header.
    for next in [59u8, 50, 17, 58] {
        assert_eq!(
            decode(LinkType::RawIp, &ipv6(next, &[0; 24])),
            Ok(Decoded::NotTcp)
        );
    }
    assert_eq!(
        decode(LinkType::RawIp, &ipv6(60, &ext(59, 0))),
        Ok(Decoded::NotTcp)
    );
    // Payload length 0 with No Next Header is legal.
    assert_eq!(decode(LinkType::RawIp, &ipv6(59, &[])), Ok(Decoded::NotTcp));
}

#[test]
fn ipv6_errors() {
    let good = ipv6_tcp(&Tcp::default());

    let mut p = good.clone();
    p[0] = 0x45;
    assert_eq!(
        err_of(decode(LinkType::Ethernet, &eth(0x86dd, &p))),
        DecodeError::BadIpVersion { found: 4 }
    );

    assert_eq!(
        err_of(decode(LinkType::RawIp, &good[..39])),
        DecodeError::Truncated { layer: Layer::Ipv6 }
    );

    let mut p = good.clone();
    p[4..6].copy_from_slice(&[0, 0]);
    assert_eq!(err_of(decode(LinkType::RawIp, &p)), DecodeError::Jumbogram);

    // Too many extension headers.
    let n = usize::from(MAX_EXTENSION_HEADERS) + 1;
    let mut rest = Vec::new();
    for i in 0..n {
        rest.extend_from_slice(&ext(if i + 1 == n { 6 } else { 60 }, 0));
    }
    rest.extend_from_slice(&Tcp::default().v6());
    assert_eq!(
        err_of(decode(LinkType::RawIp, &ipv6(60, &rest))),
        DecodeError::TooManyExtensionHeaders
    );
    // ...while exactly the maximum is fine.
    let mut rest = Vec::new();
    for i in 0..n - 1 {
        rest.extend_from_slice(&ext(if i + 2 == n { 6 } else { 60 }, 0));
    }
    rest.extend_from_slice(&Tcp::default().v6());
    assert!(matches!(
        decode(LinkType::RawIp, &ipv6(60, &rest)),
        Ok(Decoded::Tcp(_))
    ));

    // Extension header longer than the payload length.
    let long = ext(6, 3);
    let mut p = ipv6(60, &long[..8]);
    p.extend_from_slice(&long[8..]); // captured, but not declared
    p.extend_from_slice(&Tcp::default().v6());
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p)),
        DecodeError::BadExtensionHeaderLength
    );
    // Extension header cut by the snapshot length (declared, not captured).
    let mut rest = ext(6, 3);
    rest.extend_from_slice(&Tcp::default().v6());
    let p = ipv6(60, &rest);
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p[..40 + 16])),
        DecodeError::Truncated { layer: Layer::Ipv6 }
    );
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p[..41])),
        DecodeError::Truncated { layer: Layer::Ipv6 }
    );
}

#[test]
fn ipv6_checksum_corrupted() {
    let mut f = eth(0x86dd, &ipv6_tcp(&Tcp::default()));
    let last = f.len() - 1;
    f[last] ^= 0x20;
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(tcp_checksum_ok(&f, &seg), Some(false));
}

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

fn options_of(opts: &[u8]) -> TcpOptions {
    let t = Tcp {
        options: opts.to_vec(),
        flags: TcpFlags::SYN,
        payload: Vec::new(),
        ..Tcp::default()
    };
    let f = ipv4_tcp(&t);
    let seg = tcp_of(decode(LinkType::RawIp, &f));
    assert_eq!(seg.l4_offset, 20);
    assert_eq!(tcp_checksum_ok(&f, &seg), Some(true));
    assert!(seg.payload.is_empty());
    assert_eq!(seg.seq_len(), 1);
    seg.options
}

#[test]
fn tcp_option_each_kind() {
    assert_eq!(options_of(&[2, 4, 0x05, 0xb4]).mss, Some(1460));
    assert_eq!(options_of(&[1, 3, 3, 7]).window_scale, Some(7));
    assert!(options_of(&[1, 1, 4, 2]).sack_permitted);
    assert_eq!(
        options_of(&[1, 1, 8, 10, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe]).timestamps,
        Some((1, 0xffff_fffe))
    );
    assert_eq!(options_of(&[]), TcpOptions::default());
}

#[test]
fn tcp_options_typical_syn() {
    // Linux SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
    let o = options_of(&[
        2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7,
    ]);
    assert_eq!(
        o,
        TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some((0x1234, 0)),
        }
    );
}

#[test]
fn tcp_options_unknown_skipped_and_eol_stops() {
    // Unknown kind 30 (MPTCP) with length 6, then MSS.
    let o = options_of(&[30, 6, 0, 0, 0, 0, 2, 4, 0x02, 0x18, 1, 1]);
    assert_eq!(o.mss, Some(536));
    // SACK blocks (kind 5) skipped.
    let o = options_of(&[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 3, 3, 2, 0]);
    assert_eq!(o.window_scale, Some(2));
    // EOL: what follows is padding, not options.
    let o = options_of(&[0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
    assert_eq!(o, TcpOptions::default());
    // Known kind with a wrong length: skipped by its length, parsing goes on.
    let o = options_of(&[2, 3, 5, 3, 3, 1, 1, 1]);
    assert_eq!((o.mss, o.window_scale), (None, Some(1)));
}

#[test]
fn tcp_options_malformed_stop_parsing() {
    // Length 0 and length 1 after a good MSS: MSS kept, the rest ignored.
    for bad_len in [0u8, 1] {
        let o = options_of(&[2, 4, 0x05, 0xb4, 30, bad_len, 3, 3, 7, 1, 1, 1]);
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.window_scale, None);
    }
    // Option running past the header.
    let o = options_of(&[3, 3, 7, 8, 10, 0, 0, 0]);
    assert_eq!((o.window_scale, o.timestamps), (Some(7), None));
    // Kind without a length byte at the very end.
    let o = options_of(&[4, 2, 1, 2]);
    assert!(o.sack_permitted);
    assert_eq!(o.mss, None);
}

#[test]
fn tcp_fields_and_flags() {
    let t = Tcp {
        flags: TcpFlags::FIN | TcpFlags::ACK | TcpFlags::URG | TcpFlags::CWR,
        urgent: 0x1234,
        ..Tcp::default()
    };
    let f = ipv4_tcp(&t);
    let seg = tcp_of(decode(LinkType::RawIp, &f));
    assert!(seg.flags.fin() && seg.flags.ack() && seg.flags.urg());
    assert!(!seg.flags.syn() && !seg.flags.rst() && !seg.flags.psh());
    assert_eq!(seg.flags.0 & TcpFlags::CWR, TcpFlags::CWR);
    assert_eq!(seg.urgent, 0x1234);
    assert_eq!(seg.seq_len(), t.payload.len() as u32 + 1);
}

#[test]
fn tcp_errors() {
    // Data offset below 5.
    let mut seg = Tcp::default().v4();
    seg[12] = 4 << 4;
    let p = ipv4(6, &[], 0, &seg);
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p)),
        DecodeError::BadTcpDataOffset {
            offset: 4,
            len: seg.len() as u32
        }
    );
    // Data offset beyond the IP-declared length.
    let t = Tcp {
        payload: Vec::new(),
        ..Tcp::default()
    };
    let mut seg = t.v4();
    seg[12] = 15 << 4;
    let p = ipv4(6, &[], 0, &seg);
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p)),
        DecodeError::BadTcpDataOffset {
            offset: 15,
            len: 20
        }
    );
    // IP leaves fewer than 20 bytes for TCP.
    let seg = Tcp::default().v4();
    let p = ipv4(6, &[], 0, &seg[..12]);
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p)),
        DecodeError::ShortTcpSegment { len: 12 }
    );
    let p = ipv6(6, &seg[..19]);
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p)),
        DecodeError::ShortTcpSegment { len: 19 }
    );
    // Capture cut inside the fixed header, then inside the options.
    let p = ipv4_tcp(&Tcp::default());
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p[..20 + 19])),
        DecodeError::Truncated { layer: Layer::Tcp }
    );
    let t = Tcp {
        options: vec![2, 4, 5, 0xb4],
        ..Tcp::default()
    };
    let p = ipv4_tcp(&t);
    assert_eq!(
        err_of(decode(LinkType::RawIp, &p[..20 + 22])),
        DecodeError::Truncated { layer: Layer::Tcp }
    );
}

#[test]
fn tcp_checksum_corrupted_fails() {
    let f = eth(0x0800, &ipv4_tcp(&Tcp::default()));
    for at in [14 + 20 + 4, f.len() - 1] {
        let mut bad = f.clone();
        bad[at] ^= 0x01;
        let seg = tcp_of(decode(LinkType::Ethernet, &bad));
        assert_eq!(
            tcp_checksum_ok(&bad, &seg),
            Some(false),
            "flipped byte {at}"
        );
    }
    // Odd payload length.
    let t = Tcp {
        payload: b"odd".to_vec(),
        ..Tcp::default()
    };
    let f = eth(0x0800, &ipv4_tcp(&t));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(tcp_checksum_ok(&f, &seg), Some(true));
}

#[test]
fn checksum_fns_reject_mismatched_frames() {
    let f = eth(0x0800, &ipv4_tcp(&Tcp::default()));
    let seg = tcp_of(decode(LinkType::Ethernet, &f));
    assert_eq!(tcp_checksum_ok(&f[..40], &seg), None);
    assert_eq!(tcp_checksum_ok(&[], &seg), None);
    assert_eq!(ipv4_header_checksum_ok(&f[..20], &seg), None);
    let mut moved = seg;
    moved.l3_offset = 0;
    assert_eq!(ipv4_header_checksum_ok(&f, &moved), None);
    assert_eq!(tcp_checksum_ok(&f, &moved), None);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn every_error_has_a_message_and_a_kind() {
    let layers = [
        Layer::Link,
        Layer::Vlan,
        Layer::Mpls,
        Layer::Ipv4,
        Layer::Ipv6,
        Layer::Tcp,
    ];
    let mut all: Vec<DecodeError> = layers
        .iter()
        .map(|&layer| DecodeError::Truncated { layer })
        .collect();
    all.extend([
        DecodeError::TooManyVlanTags,
        DecodeError::TooManyMplsLabels,
        DecodeError::BadIpVersion { found: 5 },
        DecodeError::BadIpHeaderLength { ihl: 3 },
        DecodeError::BadIpTotalLength {
            total: 10,
            header: 20,
        },
        DecodeError::Jumbogram,
        DecodeError::BadExtensionHeaderLength,
        DecodeError::TooManyExtensionHeaders,
        DecodeError::ShortTcpSegment { len: 3 },
        DecodeError::BadTcpDataOffset { offset: 2, len: 40 },
    ]);
    let kinds: Vec<&str> = all.iter().map(|e| e.kind_name()).collect();
    assert_eq!(kinds, DecodeError::KIND_NAMES);
    for e in &all {
        let msg = e.to_string();
        assert!(!msg.is_empty());
        let _: &dyn std::error::Error = e;
    }
    assert_eq!(
        DecodeError::Truncated { layer: Layer::Ipv6 }.to_string(),
        "frame truncated inside the ipv6 header"
    );
    assert_eq!(
        DecodeError::BadTcpDataOffset { offset: 2, len: 40 }.to_string(),
        "bad TCP data offset 2 (header 8 bytes) for a 40-byte segment"
    );
}

// ---------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------

/// Every prefix of valid frames decodes without panicking, to TCP (possibly truncated)
/// or an error, never to something else.
#[test]
fn every_prefix_of_valid_frames() {
    let t = Tcp {
        options: vec![2, 4, 5, 0xb4, 1, 3, 3, 7],
        ..Tcp::default()
    };
    let mut v6rest = ext(60, 0);
    v6rest.extend_from_slice(&ext(6, 0));
    v6rest.extend_from_slice(&t.v6());
    let mut mpls = mpls_label(1, false).to_vec();
    mpls.extend_from_slice(&mpls_label(2, true));
    mpls.extend_from_slice(&ipv4_tcp(&t));
    let frames = [
        (
            LinkType::Ethernet,
            eth_tagged(&[0x88a8, 0x8100], &ipv4_tcp(&t)),
        ),
        (LinkType::Ethernet, eth(0x8847, &mpls)),
        (LinkType::RawIp, ipv6(0, &v6rest)),
    ];
    for (link, f) in &frames {
        tcp_of(decode(*link, f));
        for len in 0..f.len() {
            match decode(*link, &f[..len]) {
                Ok(Decoded::Tcp(seg)) => {
                    assert!(seg.is_truncated());
                    assert_eq!(tcp_checksum_ok(&f[..len], &seg), None);
                }
                Err(_) => {}
                other => panic!("prefix {len}: {other:?}"),
            }
        }
    }
}

/// Pseudo-random mutations of valid frames: no panic, and offsets stay in the frame.
#[test]
fn mutated_frames_do_not_panic() {
    let base = eth_tagged(&[0x8100], &ipv4_tcp(&Tcp::default()));
    let base6 = eth(0x86dd, &ipv6_tcp(&Tcp::default()));
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut f = if round % 2 == 0 {
            base.clone()
        } else {
            base6.clone()
        };
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % f.len() as u64) as usize;
            f[at] = next() as u8;
        }
        let len = (next() % (f.len() as u64 + 1)) as usize;
        f.truncate(len.max(f.len() / 2));
        for link in [
            LinkType::Ethernet,
            LinkType::RawIp,
            LinkType::LinuxSll,
            LinkType::Null,
        ] {
            if let Ok(Decoded::Tcp(seg)) = decode(link, &f) {
                assert!(usize::from(seg.l4_offset) + 20 <= f.len());
                assert!(seg.l3_offset < seg.l4_offset);
                let _ = tcp_checksum_ok(&f, &seg);
                let _ = ipv4_header_checksum_ok(&f, &seg);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Capture corpus
// ---------------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct CorpusStats {
    files: usize,
    packets: usize,
    unsupported_link: usize,
    tcp: usize,
    not_tcp: usize,
    fragments: usize,
    errors: std::collections::BTreeMap<&'static str, usize>,
    checksum_checked: usize,
    checksum_ok: usize,
    gen_checksum_bad: usize,
}

fn corpus_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            corpus_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pcap" | "pcapng")
        ) {
            out.push(path);
        }
    }
}

fn decode_one(stats: &mut CorpusStats, link: Option<LinkType>, data: &[u8], generated: bool) {
    stats.packets += 1;
    let Some(link) = link else {
        stats.unsupported_link += 1;
        return;
    };
    match decode(link, data) {
        Ok(Decoded::Tcp(seg)) => {
            stats.tcp += 1;
            assert!(usize::from(seg.l4_offset) + 20 <= data.len());
            if let Some(ok) = tcp_checksum_ok(data, &seg) {
                stats.checksum_checked += 1;
                stats.checksum_ok += usize::from(ok);
                if generated && !ok {
                    stats.gen_checksum_bad += 1;
                }
            }
            if seg.src.is_ipv4() {
                assert!(ipv4_header_checksum_ok(data, &seg).is_some());
            }
        }
        Ok(Decoded::NotTcp) => stats.not_tcp += 1,
        Ok(Decoded::Fragment) => stats.fragments += 1,
        Err(e) => *stats.errors.entry(e.kind_name()).or_default() += 1,
    }
}

fn decode_capture(path: &std::path::Path, stats: &mut CorpusStats) {
    use pcap_parser::traits::PcapNGPacketBlock;
    use pcap_parser::{Block, PcapBlockOwned, PcapError};

    let generated = path.components().any(|c| c.as_os_str() == "gen");
    let file = std::fs::File::open(path).expect("open capture");
    let Ok(mut reader) = pcap_parser::create_reader(1 << 20, file) else {
        eprintln!("skipping unreadable capture {}", path.display());
        return;
    };
    stats.files += 1;
    let mut legacy_link = None;
    let mut if_links: Vec<Option<LinkType>> = Vec::new();
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        legacy_link = u32::try_from(h.network.0)
                            .ok()
                            .and_then(LinkType::from_pcap);
                    }
                    PcapBlockOwned::Legacy(b) => {
                        decode_one(stats, legacy_link, b.data, generated);
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => if_links.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        if_links.push(
                            u32::try_from(idb.linktype.0)
                                .ok()
                                .and_then(LinkType::from_pcap),
                        );
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let link = if_links.get(epb.if_id as usize).copied().flatten();
                        decode_one(stats, link, epb.packet_data(), generated);
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let link = if_links.first().copied().flatten();
                        decode_one(stats, link, spb.packet_data(), generated);
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.refill().is_err() {
                    break;
                }
            }
            Err(e) => {
                eprintln!(
                    "{}: stopped at a capture parse error: {e:?}",
                    path.display()
                );
                break;
            }
        }
    }
}

/// Decodes every packet of every capture in the shared corpus (found by
/// [`crate::testing::corpus_dir`]: `FLOWPEEK_CORPUS`, else `../shared/corpus` beside the
/// clone); fails if it is missing or holds no capture.
#[test]
fn corpus_decodes_without_panic() {
    let dir = crate::testing::corpus_dir();
    let mut files = Vec::new();
    corpus_files(&dir, &mut files);
    assert!(!files.is_empty(), "no captures under {}", dir.display());
    files.sort();
    let mut stats = CorpusStats::default();
    for path in &files {
        decode_capture(path, &mut stats);
    }
    eprintln!("corpus {}: {stats:#?}", dir.display());
    let supported = stats.packets - stats.unsupported_link;
    assert!(stats.files > 0 && supported > 0);
    // The corpus is TCP-focused: most packets must decode to TCP.
    assert!(
        stats.tcp * 10 >= supported * 8,
        "only {} of {} packets decoded to TCP",
        stats.tcp,
        supported
    );
    // Generated captures were made with offloads off: every checksum must verify.
    assert_eq!(stats.gen_checksum_bad, 0);
}
