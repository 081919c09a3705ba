//! Tests for the capture file reader: hand-built pcap/pcapng files and the shared corpus.

use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, bytes: &[u8]) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "flowpeek-io-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).expect("write temp capture");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn u16b(v: u16, be: bool) -> [u8; 2] {
    if be {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn u32b(v: u32, be: bool) -> [u8; 4] {
    if be {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

/// Legacy pcap file header. `magic` is written in the file's byte order.
fn pcap_header(be: bool, magic: u32, snaplen: u32, network: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(u32b(magic, be));
    v.extend(u16b(2, be));
    v.extend(u16b(4, be));
    v.extend(u32b(0, be)); // thiszone
    v.extend(u32b(0, be)); // sigfigs
    v.extend(u32b(snaplen, be));
    v.extend(u32b(network, be));
    v
}

fn pcap_record(v: &mut Vec<u8>, be: bool, sec: u32, frac: u32, data: &[u8], orig: u32) {
    v.extend(u32b(sec, be));
    v.extend(u32b(frac, be));
    v.extend(u32b(data.len() as u32, be));
    v.extend(u32b(orig, be));
    v.extend(data);
}

fn collect(file: &CaptureFile) -> (Vec<CapturedPacket<'_>>, Vec<CaptureError>) {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for item in file.packets() {
        match item {
            Ok(p) => ok.push(p),
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

fn open_ok(tmp: &TempFile) -> CaptureFile {
    CaptureFile::open(&tmp.0).unwrap_or_else(|e| panic!("open failed: {e}"))
}

#[test]
fn pcap_little_endian_micros() {
    // Bytes spelled out: magic d4 c3 b2 a1 is 0xa1b2c3d4 little-endian.
    let mut f = vec![
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ];
    // Record: ts 1_700_000_000 s + 123_456 us, caplen 4, orig 60.
    f.extend([
        0x00, 0xf1, 0x53, 0x65, 0x40, 0xe2, 0x01, 0x00, 4, 0, 0, 0, 60, 0, 0, 0,
    ]);
    f.extend([0xde, 0xad, 0xbe, 0xef]);
    pcap_record(&mut f, false, 1_700_000_001, 999_999, b"xyz", 3);
    let tmp = TempFile::new("le.pcap", &f);
    let cap = open_ok(&tmp);
    assert_eq!(cap.format(), CaptureFormat::Pcap);
    assert_eq!(cap.len_bytes(), f.len() as u64);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(pkts.len(), 2);
    assert_eq!(
        pkts[0],
        CapturedPacket {
            ts_nanos: 1_700_000_000_123_456_000,
            link: Some(LinkType::Ethernet),
            link_code: 1,
            data: &[0xde, 0xad, 0xbe, 0xef],
            orig_len: 60,
            offset: 24,
        }
    );
    assert_eq!(pkts[1].ts_nanos, 1_700_000_001_999_999_000);
    assert_eq!(pkts[1].data, b"xyz");
    assert_eq!(pkts[1].orig_len, 3);
    assert_eq!(pkts[1].offset, 24 + 16 + 4);
}

#[test]
fn pcap_big_endian_micros() {
    let mut f = pcap_header(true, 0xa1b2_c3d4, 65535, 101);
    assert_eq!(&f[..4], &[0xa1, 0xb2, 0xc3, 0xd4]);
    pcap_record(&mut f, true, 10, 500_000, &[0x45, 0, 0, 20], 20);
    pcap_record(&mut f, true, 11, 1, &[], 0);
    let tmp = TempFile::new("be.pcap", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(pkts.len(), 2);
    assert_eq!(pkts[0].ts_nanos, 10_500_000_000);
    assert_eq!(pkts[0].link, Some(LinkType::RawIp));
    assert_eq!(pkts[0].link_code, 101);
    assert_eq!(pkts[0].data, &[0x45, 0, 0, 20]);
    assert_eq!(pkts[0].orig_len, 20);
    assert_eq!(pkts[1].ts_nanos, 11_000_001_000);
    assert_eq!(pkts[1].data, b"");
    assert_eq!(pkts[1].offset, 24 + 16 + 4);
}

#[test]
fn pcap_nanosecond_both_byte_orders() {
    for be in [false, true] {
        let mut f = pcap_header(be, 0xa1b2_3c4d, 262_144, 113);
        pcap_record(&mut f, be, 1_600_000_000, 999_999_999, b"abc", 3);
        pcap_record(&mut f, be, 1_600_000_001, 7, b"d", 1);
        let tmp = TempFile::new("ns.pcap", &f);
        let cap = open_ok(&tmp);
        let (pkts, errs) = collect(&cap);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(pkts.len(), 2, "be={be}");
        assert_eq!(pkts[0].ts_nanos, 1_600_000_000_999_999_999);
        assert_eq!(pkts[1].ts_nanos, 1_600_000_001_000_000_007);
        assert_eq!(pkts[0].link, Some(LinkType::LinuxSll));
        assert_eq!(pkts[1].data, b"d");
    }
}

#[test]
fn pcap_caplen_over_origlen_and_snaplen_is_tolerated() {
    let mut f = pcap_header(false, 0xa1b2_c3d4, 4, 1);
    pcap_record(&mut f, false, 1, 0, b"0123456789", 6); // caplen 10 > orig 6 > snaplen 4
    pcap_record(&mut f, false, 2, 0, b"ab", 2);
    let tmp = TempFile::new("caplen.pcap", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(pkts.len(), 2);
    assert_eq!(pkts[0].data, b"0123456789");
    assert_eq!(pkts[0].orig_len, 6);
    assert_eq!(pkts[1].data, b"ab");
}

#[test]
fn pcap_unsupported_link_type_and_fcs_bits() {
    // 147 (LINKTYPE_USER0) with FCS-length bits set in the upper half.
    let mut f = pcap_header(false, 0xa1b2_c3d4, 65535, 0x1000_0000 | 147);
    pcap_record(&mut f, false, 1, 0, b"x", 1);
    let tmp = TempFile::new("user0.pcap", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty());
    assert_eq!(pkts[0].link, None);
    assert_eq!(pkts[0].link_code, 147);
}

#[test]
fn pcap_header_only_has_no_packets() {
    let f = pcap_header(false, 0xa1b2_c3d4, 65535, 1);
    let tmp = TempFile::new("hdr.pcap", &f);
    let cap = open_ok(&tmp);
    let mut it = cap.packets();
    assert!(it.next().is_none());
    assert!(it.next().is_none());
}

#[test]
fn pcap_truncated_mid_record_then_mid_header() {
    let mut full = pcap_header(false, 0xa1b2_c3d4, 65535, 1);
    for i in 0..3u32 {
        pcap_record(&mut full, false, 100 + i, 0, &[i as u8; 10], 10);
    }
    let third = 24 + 2 * 26;
    // Cut inside the third record's data, then inside its header.
    for (cut, what, needed) in [
        (third + 20, "packet record", 26),
        (third + 7, "packet record header", 16),
    ] {
        let tmp = TempFile::new("trunc.pcap", &full[..cut]);
        let cap = open_ok(&tmp);
        let mut it = cap.packets();
        for i in 0..2u32 {
            let p = it.next().expect("packet").expect("complete packet");
            assert_eq!(p.ts_nanos, u64::from(100 + i) * 1_000_000_000);
            assert_eq!(p.data, &[i as u8; 10]);
        }
        match it.next() {
            Some(Err(CaptureError::Truncated {
                offset,
                what: w,
                needed: n,
                available,
                path,
            })) => {
                assert_eq!(offset, third as u64);
                assert_eq!(w, what);
                assert_eq!(n, needed);
                assert_eq!(available, (cut - third) as u64);
                assert_eq!(path, tmp.0);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }
}

#[test]
fn pcap_absurd_caplen_is_corrupt_and_keeps_earlier_packets() {
    let mut f = pcap_header(false, 0xa1b2_c3d4, 65535, 1);
    pcap_record(&mut f, false, 1, 0, b"good", 4);
    let bad = f.len();
    f.extend(u32b(2, false));
    f.extend(u32b(0, false));
    f.extend(u32b(0x4141_4141, false)); // caplen ~1 GiB
    f.extend(u32b(60, false));
    f.extend([0u8; 64]);
    let tmp = TempFile::new("corrupt.pcap", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].data, b"good");
    assert_eq!(errs.len(), 1);
    assert!(
        matches!(errs[0], CaptureError::Corrupt { offset, .. } if offset == bad as u64),
        "{:?}",
        errs[0]
    );
    let msg = errs[0].to_string();
    assert!(msg.contains(&format!("byte {bad}")), "{msg}");
    assert!(msg.contains(&tmp.0.display().to_string()), "{msg}");

    // Past the end of the file and over the snapshot length (but under the hard ceiling):
    // corrupt, not truncated.
    let mut f = pcap_header(false, 0xa1b2_c3d4, 1500, 1);
    pcap_record(&mut f, false, 1, 0, b"good", 4);
    f.extend(u32b(2, false));
    f.extend(u32b(0, false));
    f.extend(u32b(1_000_000, false));
    f.extend(u32b(60, false));
    f.extend([0u8; 10]);
    let tmp = TempFile::new("corrupt2.pcap", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert_eq!(pkts.len(), 1);
    assert!(
        matches!(errs[..], [CaptureError::Corrupt { .. }]),
        "{errs:?}"
    );
}

// ---- pcapng -------------------------------------------------------------------------------

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

/// A block: type, total length, body (padded), total length.
fn ng_block(be: bool, block_type: u32, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    pad4(&mut b);
    let len = (b.len() + 12) as u32;
    let mut v = Vec::new();
    v.extend(u32b(block_type, be));
    v.extend(u32b(len, be));
    v.extend(b);
    v.extend(u32b(len, be));
    v
}

fn ng_option(v: &mut Vec<u8>, be: bool, code: u16, value: &[u8]) {
    v.extend(u16b(code, be));
    v.extend(u16b(value.len() as u16, be));
    v.extend(value);
    pad4(v);
}

fn shb(be: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u32b(0x1a2b_3c4d, be));
    body.extend(u16b(1, be));
    body.extend(u16b(0, be));
    body.extend([0xff; 8]); // section length -1: unknown
    ng_option(&mut body, be, 4, b"flowpeek test"); // shb_userappl
    ng_option(&mut body, be, 0, b"");
    ng_block(be, 0x0a0d_0d0a, &body)
}

fn idb(be: bool, link: u16, snaplen: u32, tsresol: Option<u8>, tsoffset: Option<i64>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u16b(link, be));
    body.extend(u16b(0, be));
    body.extend(u32b(snaplen, be));
    ng_option(&mut body, be, 2, b"eth0"); // if_name
    if let Some(r) = tsresol {
        ng_option(&mut body, be, 9, &[r]);
    }
    if let Some(o) = tsoffset {
        let b = if be { o.to_be_bytes() } else { o.to_le_bytes() };
        ng_option(&mut body, be, 14, &b);
    }
    ng_option(&mut body, be, 0, b"");
    ng_block(be, 1, &body)
}

fn epb(be: bool, if_id: u32, ts: u64, data: &[u8], orig: u32, with_options: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u32b(if_id, be));
    body.extend(u32b((ts >> 32) as u32, be));
    body.extend(u32b(ts as u32, be));
    body.extend(u32b(data.len() as u32, be));
    body.extend(u32b(orig, be));
    body.extend(data);
    pad4(&mut body);
    if with_options {
        ng_option(&mut body, be, 2, &u32b(1, be)); // epb_flags: inbound
        ng_option(&mut body, be, 0, b"");
    }
    ng_block(be, 6, &body)
}

fn spb(be: bool, orig: u32, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u32b(orig, be));
    body.extend(data);
    ng_block(be, 3, &body)
}

/// Obsolete Packet Block (type 2).
fn pb(be: bool, if_id: u16, ts: u64, data: &[u8], orig: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u16b(if_id, be));
    body.extend(u16b(0, be)); // drops count
    body.extend(u32b((ts >> 32) as u32, be));
    body.extend(u32b(ts as u32, be));
    body.extend(u32b(data.len() as u32, be));
    body.extend(u32b(orig, be));
    body.extend(data);
    ng_block(be, 2, &body)
}

/// Interface Statistics Block, to be skipped.
fn isb(be: bool) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(u32b(0, be));
    body.extend(u32b(0, be));
    body.extend(u32b(0, be));
    ng_option(&mut body, be, 4, &[0; 8]);
    ng_option(&mut body, be, 0, b"");
    ng_block(be, 5, &body)
}

/// Two interfaces (Ethernet, default tsresol 10^-6; raw IP, tsresol 10^-9), EPBs on both,
/// an SPB, an NRB-ish unknown block and an ISB skipped.
fn two_interface_ng(be: bool) -> (Vec<u8>, Vec<usize>) {
    let mut f = shb(be);
    f.extend(idb(be, 1, 0, None, None));
    f.extend(idb(be, 101, 65535, Some(9), None));
    let mut offsets = Vec::new();
    offsets.push(f.len());
    f.extend(epb(be, 0, 1_700_000_000_123_456, b"ether-frame", 64, false));
    f.extend(ng_block(be, 4, &[0; 8])); // name resolution block: skipped
    offsets.push(f.len());
    f.extend(epb(be, 1, 1_700_000_000_987_654_321, b"\x45ip", 40, true));
    offsets.push(f.len());
    f.extend(spb(be, 5, b"spb-data"));
    f.extend(isb(be));
    offsets.push(f.len());
    f.extend(epb(be, 0, 1_700_000_001_000_000, b"", 0, false));
    (f, offsets)
}

#[test]
fn pcapng_two_interfaces_both_byte_orders() {
    for be in [false, true] {
        let (f, offsets) = two_interface_ng(be);
        let tmp = TempFile::new("two.pcapng", &f);
        let cap = open_ok(&tmp);
        assert_eq!(cap.format(), CaptureFormat::PcapNg);
        let (pkts, errs) = collect(&cap);
        assert!(errs.is_empty(), "be={be}: {errs:?}");
        assert_eq!(pkts.len(), 4);
        assert_eq!(
            pkts[0],
            CapturedPacket {
                ts_nanos: 1_700_000_000_123_456_000,
                link: Some(LinkType::Ethernet),
                link_code: 1,
                data: b"ether-frame",
                orig_len: 64,
                offset: offsets[0] as u64,
            }
        );
        assert_eq!(
            pkts[1],
            CapturedPacket {
                ts_nanos: 1_700_000_000_987_654_321,
                link: Some(LinkType::RawIp),
                link_code: 101,
                data: b"\x45ip",
                orig_len: 40,
                offset: offsets[1] as u64,
            }
        );
        // SPB: interface 0, previous packet's timestamp, caplen = orig_len (5 of 8 bytes).
        assert_eq!(
            pkts[2],
            CapturedPacket {
                ts_nanos: 1_700_000_000_987_654_321,
                link: Some(LinkType::Ethernet),
                link_code: 1,
                data: b"spb-d",
                orig_len: 5,
                offset: offsets[2] as u64,
            }
        );
        assert_eq!(pkts[3].ts_nanos, 1_700_000_001_000_000_000);
        assert_eq!(pkts[3].data, b"");
        assert_eq!(pkts[3].offset, offsets[3] as u64);
    }
}

#[test]
fn pcapng_power_of_two_resolution_and_offset() {
    let be = false;
    let mut f = shb(be);
    f.extend(idb(be, 1, 0, Some(0x80 | 10), Some(1_000))); // 2^-10 s, +1000 s
    f.extend(idb(be, 1, 0, Some(3), Some(-5))); // milliseconds, -5 s
    f.extend(epb(be, 0, (7 << 10) | 512, b"a", 1, false)); // 7.5 s
    f.extend(epb(be, 0, 1, b"b", 1, false)); // 1/1024 s: rounded down
    f.extend(epb(be, 1, 1_500, b"c", 1, false)); // 1.5 s - 5 s: clamped to 0
    f.extend(epb(be, 1, 10_250, b"d", 1, false)); // 10.25 s - 5 s
    let tmp = TempFile::new("pow2.pcapng", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty(), "{errs:?}");
    let ts: Vec<u64> = pkts.iter().map(|p| p.ts_nanos).collect();
    assert_eq!(ts, [1_007_500_000_000, 1_000_000_976_562, 0, 5_250_000_000]);
}

#[test]
fn pcapng_sections_reset_interfaces_and_byte_order() {
    let mut f = shb(false);
    f.extend(idb(false, 1, 0, None, None));
    f.extend(epb(false, 0, 1_000_000, b"first", 5, false));
    f.extend(shb(true));
    f.extend(idb(true, 276, 0, Some(9), None));
    f.extend(epb(true, 0, 2_000_000_000, b"second", 6, false));
    f.extend(spb(true, 3, b"abc"));
    f.extend(pb(true, 0, 3_000_000_000, b"old", 3));
    let tmp = TempFile::new("sections.pcapng", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(pkts.len(), 4);
    assert_eq!(
        (pkts[0].link, pkts[0].ts_nanos, pkts[0].data),
        (Some(LinkType::Ethernet), 1_000_000_000, &b"first"[..])
    );
    assert_eq!(
        (pkts[1].link, pkts[1].ts_nanos, pkts[1].data),
        (Some(LinkType::LinuxSll2), 2_000_000_000, &b"second"[..])
    );
    assert_eq!(
        (pkts[2].link_code, pkts[2].ts_nanos, pkts[2].data),
        (276, 2_000_000_000, &b"abc"[..])
    );
    assert_eq!(
        (
            pkts[3].link_code,
            pkts[3].ts_nanos,
            pkts[3].data,
            pkts[3].orig_len
        ),
        (276, 3_000_000_000, &b"old"[..], 3)
    );

    // Interface 1 of the first section does not exist in the second.
    let mut f = shb(false);
    f.extend(idb(false, 1, 0, None, None));
    f.extend(idb(false, 1, 0, None, None));
    f.extend(shb(false));
    f.extend(idb(false, 1, 0, None, None));
    f.extend(epb(false, 0, 1, b"ok", 2, false));
    let bad = f.len();
    f.extend(epb(false, 1, 1, b"no iface", 8, false));
    let tmp = TempFile::new("noiface.pcapng", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert_eq!(pkts.len(), 1);
    assert!(
        matches!(&errs[..], [CaptureError::Corrupt { offset, what: "enhanced packet block", .. }] if *offset == bad as u64),
        "{errs:?}"
    );
}

#[test]
fn pcapng_spb_respects_snaplen_and_needs_an_interface() {
    let mut f = shb(false);
    f.extend(idb(false, 1, 4, None, None));
    f.extend(spb(false, 100, b"0123456789"));
    let tmp = TempFile::new("spbsnap.pcapng", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(pkts[0].data, b"0123");
    assert_eq!(pkts[0].orig_len, 100);
    assert_eq!(pkts[0].ts_nanos, 0);

    let mut f = shb(false);
    let bad = f.len();
    f.extend(spb(false, 3, b"abc"));
    let tmp = TempFile::new("spbnoif.pcapng", &f);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(pkts.is_empty());
    assert!(
        matches!(&errs[..], [CaptureError::Corrupt { offset, .. }] if *offset == bad as u64),
        "{errs:?}"
    );
}

#[test]
fn pcapng_truncated_mid_block() {
    let (full, offsets) = two_interface_ng(false);
    // Cut inside the SPB (third packet): the two EPBs survive.
    let cut = offsets[2] + 20;
    let tmp = TempFile::new("trunc.pcapng", &full[..cut]);
    let cap = open_ok(&tmp);
    let mut it = cap.packets();
    assert_eq!(it.next().unwrap().unwrap().data, b"ether-frame");
    assert_eq!(it.next().unwrap().unwrap().data, b"\x45ip");
    match it.next() {
        Some(Err(CaptureError::Truncated {
            offset,
            what,
            needed,
            available,
            ..
        })) => {
            assert_eq!(offset, offsets[2] as u64);
            assert_eq!(what, "simple packet block");
            assert_eq!(needed, 24);
            assert_eq!(available, 20);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(it.next().is_none());

    // Cut inside a block header (fewer than 12 bytes left).
    let cut = offsets[3] + 5;
    let tmp = TempFile::new("trunc2.pcapng", &full[..cut]);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert_eq!(pkts.len(), 3);
    assert!(
        matches!(&errs[..], [CaptureError::Truncated { offset, .. }] if *offset == offsets[3] as u64),
        "{errs:?}"
    );
}

#[test]
fn pcapng_inconsistent_blocks_are_corrupt() {
    let base = {
        let mut f = shb(false);
        f.extend(idb(false, 1, 0, None, None));
        f.extend(epb(false, 0, 5, b"keep", 4, false));
        f
    };
    let bad = base.len();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Trailing length differs from the leading one.
    let mut b = epb(false, 0, 6, b"lost", 4, false);
    let n = b.len();
    b[n - 4..].copy_from_slice(&u32b(999, false));
    cases.push(("len mismatch", b));
    // Block length not a multiple of 4.
    let mut b = epb(false, 0, 6, b"lost", 4, false);
    b[4..8].copy_from_slice(&u32b(33, false));
    cases.push(("len not aligned", b));
    // Captured length larger than the block.
    let mut b = epb(false, 0, 6, b"lost", 4, false);
    b[20..24].copy_from_slice(&u32b(5000, false));
    cases.push(("caplen past block", b));
    // Implausible block length past the end of the file.
    let mut b = epb(false, 0, 6, b"lost", 4, false);
    b[4..8].copy_from_slice(&u32b(0xfff0_0000, false));
    cases.push(("huge len", b));
    for (name, block) in cases {
        let mut f = base.clone();
        f.extend(block);
        f.extend(epb(false, 0, 7, b"after", 5, false));
        let tmp = TempFile::new("corrupt.pcapng", &f);
        let cap = open_ok(&tmp);
        let (pkts, errs) = collect(&cap);
        assert_eq!(pkts.len(), 1, "{name}");
        assert_eq!(pkts[0].data, b"keep");
        assert!(
            matches!(&errs[..], [CaptureError::Corrupt { offset, .. }] if *offset == bad as u64),
            "{name}: {errs:?}"
        );
        assert!(errs[0].to_string().contains(&format!("byte {bad}")));
    }
}

// ---- opening ------------------------------------------------------------------------------

#[test]
fn garbage_file_is_not_a_capture() {
    let tmp = TempFile::new("garbage.txt", b"Hello, world! This is text.\n");
    let err = CaptureFile::open(&tmp.0).unwrap_err();
    assert!(matches!(err, CaptureError::NotACapture { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not a pcap or pcapng file (starts with 0x48656c6c6f2c2077 \"Hello, w\")"),
        "{msg}"
    );
    assert!(msg.contains(&tmp.0.display().to_string()), "{msg}");

    let tmp = TempFile::new("gz.pcap.gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    let msg = CaptureFile::open(&tmp.0).unwrap_err().to_string();
    assert!(msg.contains("gzip"), "{msg}");

    let tmp = TempFile::new("tiny", &[0xd4, 0xc3]);
    let err = CaptureFile::open(&tmp.0).unwrap_err();
    assert!(matches!(err, CaptureError::NotACapture { .. }), "{err:?}");
}

#[test]
fn short_file_header_is_truncated() {
    let f = pcap_header(false, 0xa1b2_c3d4, 65535, 1);
    let tmp = TempFile::new("shorthdr.pcap", &f[..10]);
    let err = CaptureFile::open(&tmp.0).unwrap_err();
    assert!(
        matches!(
            err,
            CaptureError::Truncated {
                offset: 0,
                needed: 24,
                available: 10,
                ..
            }
        ),
        "{err:?}"
    );

    let tmp = TempFile::new("shorthdr.pcapng", &shb(false)[..20]);
    let cap = open_ok(&tmp);
    let (pkts, errs) = collect(&cap);
    assert!(pkts.is_empty());
    assert!(
        matches!(&errs[..], [CaptureError::Truncated { offset: 0, .. }]),
        "{errs:?}"
    );
}

#[test]
fn empty_file() {
    let tmp = TempFile::new("empty.pcap", b"");
    let err = CaptureFile::open(&tmp.0).unwrap_err();
    assert!(matches!(err, CaptureError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("empty"));
    assert_eq!(err.path(), tmp.0);
}

#[test]
fn missing_file() {
    let path = std::env::temp_dir().join(format!(
        "flowpeek-io-{}-does-not-exist.pcap",
        std::process::id()
    ));
    let err = CaptureFile::open(&path).unwrap_err();
    assert!(matches!(err, CaptureError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no such file") && msg.contains(&path.display().to_string()),
        "{msg}"
    );
}

#[test]
fn directory() {
    let err = CaptureFile::open(&std::env::temp_dir()).unwrap_err();
    assert!(matches!(err, CaptureError::IsDirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("is a directory"));
}

#[cfg(unix)]
#[test]
fn unreadable_file() {
    use std::os::unix::fs::PermissionsExt;
    let f = pcap_header(false, 0xa1b2_c3d4, 65535, 1);
    let tmp = TempFile::new("noperm.pcap", &f);
    std::fs::set_permissions(&tmp.0, std::fs::Permissions::from_mode(0o000)).unwrap();
    if File::open(&tmp.0).is_ok() {
        eprintln!("unreadable_file: skipped, this user (root?) can read mode-000 files");
        return;
    }
    let err = CaptureFile::open(&tmp.0).unwrap_err();
    assert!(
        matches!(err, CaptureError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("permission denied"));
}

#[cfg(unix)]
#[test]
fn not_a_regular_file() {
    let err = CaptureFile::open(Path::new("/dev/null")).unwrap_err();
    assert!(matches!(err, CaptureError::NotAFile { .. }), "{err:?}");
}

#[test]
fn helpers_do_not_overflow() {
    assert_eq!(units_per_sec(6), Some(1_000_000));
    assert_eq!(units_per_sec(0x80 | 20), Some(1 << 20));
    assert_eq!(units_per_sec(0xff), Some(1 << 127));
    assert_eq!(units_per_sec(39), None);
    assert_eq!(to_nanos(u64::MAX, 1, 0), u64::MAX);
    assert_eq!(to_nanos(u64::MAX, 1, i64::MIN), u64::MAX);
    assert_eq!(to_nanos(5, 1, i64::MIN), 0);
    assert_eq!(to_nanos(u64::MAX, 1 << 127, i64::MAX), u64::MAX);
    assert_eq!(to_nanos(3, 1 << 127, 0), 0);
}

// ---- corpus -------------------------------------------------------------------------------

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pcap" | "pcapng" | "cap")
        ) {
            out.push(path);
        }
    }
}

/// Independent count of packet records by raw framing only (no pcap-parser): legacy pcap
/// records, or pcapng EPB/SPB/PB blocks. `None` if the framing does not end exactly at EOF.
fn framing_count(b: &[u8]) -> Option<u64> {
    let rd = |at: usize, be: bool| -> Option<u32> {
        let x: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if be {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        })
    };
    let mut n = 0;
    if rd(0, false)? == 0x0a0d_0d0a {
        let (mut pos, mut be) = (0usize, false);
        while pos < b.len() {
            if rd(pos, false)? == 0x0a0d_0d0a {
                be = rd(pos + 8, false)? != 0x1a2b_3c4d;
            }
            let len = rd(pos + 4, be)? as usize;
            if len < 12 || pos + len > b.len() {
                return None;
            }
            n += u64::from(matches!(rd(pos, be)?, 2 | 3 | 6));
            pos += len;
        }
    } else {
        let be = matches!(rd(0, false)?, 0xd4c3_b2a1 | 0x4d3c_b2a1);
        let mut pos = 24usize;
        while pos < b.len() {
            pos += 16 + rd(pos + 8, be)? as usize;
            n += 1;
        }
        if pos != b.len() {
            return None;
        }
    }
    Some(n)
}

/// Reads every capture in the shared corpus: no panic, at least one packet each, the same
/// count as an independent framing walk; prints link types seen and any errors.
#[test]
fn corpus_reads_without_panic() {
    let dir = crate::testing::corpus_dir();
    let root = dir.as_path();
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no captures under {}", root.display());
    let mut link_packets: BTreeMap<u32, u64> = BTreeMap::new();
    let mut link_files: BTreeMap<u32, u64> = BTreeMap::new();
    let mut formats: BTreeMap<&str, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut mismatches = Vec::new();
    let mut total = 0u64;
    let mut checked = 0usize;
    for path in &files {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        let cap = match CaptureFile::open(path) {
            Ok(c) => c,
            Err(e) => panic!("{rel}: open failed: {e}"),
        };
        let format = if cap.format() == CaptureFormat::Pcap {
            "pcap"
        } else {
            "pcapng"
        };
        *formats.entry(format).or_default() += 1;
        let mut n = 0u64;
        let mut last_offset = None;
        let mut links_here = std::collections::BTreeSet::new();
        for item in cap.packets() {
            match item {
                Ok(p) => {
                    assert!(p.offset < cap.len_bytes());
                    assert!(
                        last_offset.map_or(true, |o| p.offset > o),
                        "{rel}: offsets not increasing"
                    );
                    last_offset = Some(p.offset);
                    n += 1;
                    *link_packets.entry(p.link_code).or_default() += 1;
                    links_here.insert(p.link_code);
                }
                Err(e) => problems.push(format!("{rel}: after {n} packets: {e}")),
            }
        }
        for l in links_here {
            *link_files.entry(l).or_default() += 1;
        }
        assert!(n > 0, "{rel}: no packets");
        match framing_count(&std::fs::read(path).expect("read corpus file")) {
            Some(want) if want != n => {
                mismatches.push(format!("{rel}: read {n} packets, raw framing has {want}"))
            }
            Some(_) => checked += 1,
            None => eprintln!("corpus: {rel}: raw framing does not end at EOF"),
        }
        total += n;
    }
    eprintln!(
        "corpus: {} files ({formats:?}), {total} packets",
        files.len()
    );
    for (code, pkts) in &link_packets {
        eprintln!(
            "corpus: link type {code} ({:?}): {pkts} packets in {} files",
            LinkType::from_pcap(*code),
            link_files[code]
        );
    }
    eprintln!("corpus: {checked} files match an independent framing count");
    for p in &problems {
        eprintln!("corpus: problem: {p}");
    }
    assert!(
        mismatches.is_empty(),
        "packet counts differ from raw framing: {mismatches:#?}"
    );
}

/// Cutting a file at every length yields exactly the records that end before the cut, then
/// one `Truncated` error unless the cut falls on a record boundary.
#[test]
fn every_cut_point_keeps_complete_records() {
    let mut pcap = pcap_header(true, 0xa1b2_3c4d, 65535, 1);
    let mut pcap_ends = Vec::new();
    for i in 0..4u8 {
        pcap_record(
            &mut pcap,
            true,
            1,
            u32::from(i),
            &vec![i; usize::from(i) * 3],
            99,
        );
        pcap_ends.push(pcap.len());
    }
    let (ng, offsets) = two_interface_ng(false);
    // Ends of packet-bearing blocks, and of any block (boundaries where no error is due).
    let mut ng_ends = Vec::new();
    let mut boundaries = vec![0];
    let mut pos = 0;
    while pos < ng.len() {
        let len = read_u32(&ng, pos + 4, false).unwrap() as usize;
        if offsets.contains(&pos) {
            ng_ends.push(pos + len);
        }
        pos += len;
        boundaries.push(pos);
    }
    for (name, bytes, ends, min_len, is_boundary) in [
        (
            "pcap",
            &pcap,
            &pcap_ends,
            24,
            Box::new(|c: usize| c == 24 || pcap_ends.contains(&c)) as Box<dyn Fn(usize) -> bool>,
        ),
        (
            "pcapng",
            &ng,
            &ng_ends,
            12,
            Box::new(|c: usize| boundaries.contains(&c)),
        ),
    ] {
        for cut in min_len..=bytes.len() {
            let tmp = TempFile::new("cut", &bytes[..cut]);
            let cap = open_ok(&tmp);
            let (pkts, errs) = collect(&cap);
            let want = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(pkts.len(), want, "{name} cut at {cut}");
            if is_boundary(cut) {
                assert!(errs.is_empty(), "{name} cut at {cut}: {errs:?}");
            } else {
                assert!(
                    matches!(&errs[..], [CaptureError::Truncated { .. }]),
                    "{name} cut at {cut}: {errs:?}"
                );
            }
        }
    }
}

/// Deterministic byte-flipping over hand-built files: never panics, never loops, offsets
/// stay inside the file.
#[test]
fn mutated_files_do_not_panic() {
    let mut seeds = vec![two_interface_ng(false).0, two_interface_ng(true).0];
    let mut p = pcap_header(false, 0xa1b2_c3d4, 65535, 1);
    pcap_record(&mut p, false, 1, 2, b"abcdefgh", 8);
    pcap_record(&mut p, false, 3, 4, b"ijkl", 8);
    seeds.push(p);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rng = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..3000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..1 + rng() % 4 {
            let i = (rng() as usize) % bytes.len();
            bytes[i] = rng() as u8;
        }
        let tmp = TempFile::new("mut", &bytes);
        let Ok(cap) = CaptureFile::open(&tmp.0) else {
            continue;
        };
        let mut n = 0;
        for item in cap.packets() {
            if let Ok(p) = item {
                assert!(p.offset < bytes.len() as u64);
            }
            n += 1;
            assert!(n <= bytes.len(), "round {round}: too many items");
        }
    }
}
