//! `flowpeek-bench fragment`: cut the TCP packets of a clean capture into IP fragments, the
//! way a small-MTU tunnel does, then disorder them the way a path with several routes
//! does; reassembled, the capture must give the streams of the clean one.
//!
//! Each IPv4 or IPv6 TCP packet whose segment can be cut (the first fragment always holds
//! the whole TCP header, as RFC 1858 wants, so short segments stay whole) becomes 2..=N
//! fragments at random 8-byte boundaries, with a fresh identification per packet (IPv4: DF
//! cleared, MF and offset set, header checksum recomputed; IPv6: a Fragment header after
//! the fixed header). Then, per packet:
//!
//! - the fragments come in a random order (`shuffle`), so every order of small counts
//!   appears over a capture;
//! - each fragment is repeated with probability `dup` (the copy follows somewhere later);
//! - with probability `overlap`, an extra fragment that straddles a cut, with the same
//!   bytes as the originals, is added (an overlap whose bytes agree: no policy changes it).
//!
//! Every fragment carries its packet's timestamp, so time keeps moving forward. The
//! random choices come from a seeded generator: the same seed gives the same capture.
//! It knows nothing of the defragmenter: it only writes what a network would deliver.

use std::io::Write;
use std::path::Path;

use flowpeek::io::pcap::CaptureFile;
use flowpeek::wire::{self, internet_checksum, network_offset, Decoded};

/// What to do to the capture.
#[derive(Clone, Debug)]
pub struct FragmentConfig {
    /// Most fragments per packet (at least 2).
    pub max_fragments: usize,
    /// Shuffle the fragments of each packet (otherwise in order).
    pub shuffle: bool,
    /// Probability that a fragment is sent twice.
    pub dup: f64,
    /// Probability that a packet gets an extra fragment overlapping a cut, equal bytes.
    pub overlap: f64,
    /// Seed of the random choices.
    pub seed: u64,
}

impl Default for FragmentConfig {
    fn default() -> FragmentConfig {
        FragmentConfig {
            max_fragments: 4,
            shuffle: true,
            dup: 0.0,
            overlap: 0.0,
            seed: 1,
        }
    }
}

/// What fragmenting did, for the summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentReport {
    /// Packets read.
    pub packets_in: usize,
    /// Packets cut into fragments.
    pub fragmented: usize,
    /// Frames written (whole packets and fragments, copies included).
    pub frames_out: usize,
    /// Duplicate fragments added.
    pub duplicates: usize,
    /// Overlapping fragments added.
    pub overlaps: usize,
}

/// A splitmix64 generator: reproducible, and enough for test traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One fragment to write: the payload range `[start, end)` of its packet's IP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    start: usize,
    end: usize,
}

/// Reads `input`, fragments it, writes a pcap (nanosecond timestamps) to `output`.
pub fn fragment_file(
    input: &Path,
    output: &Path,
    cfg: &FragmentConfig,
) -> Result<FragmentReport, String> {
    let cap = CaptureFile::open(input).map_err(|e| e.to_string())?;
    let err = |e: std::io::Error| format!("{}: {e}", output.display());
    let f = std::fs::File::create(output).map_err(err)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut rng = Rng(cfg.seed);
    let mut report = FragmentReport::default();
    let mut id: u32 = 0x1000;
    let mut link_code = None;
    for item in cap.packets() {
        let p = item.map_err(|e| format!("{}: {e}", input.display()))?;
        report.packets_in += 1;
        if link_code.is_none() {
            link_code = Some(p.link_code);
            write_header(&mut w, p.link_code).map_err(err)?;
        } else if link_code != Some(p.link_code) {
            return Err(format!(
                "{}: packets of link types {:?} and {} in one capture; fragment writes one \
                 link type: split the capture by interface first",
                input.display(),
                link_code,
                p.link_code
            ));
        }
        let frames = match p.link {
            Some(link) => fragments_of(link, p.data, cfg, &mut rng, &mut id, &mut report),
            None => Vec::new(),
        };
        if frames.is_empty() {
            write_record(&mut w, p.ts_nanos, p.data, p.orig_len).map_err(err)?;
            report.frames_out += 1;
        } else {
            report.fragmented += 1;
            for f in &frames {
                write_record(&mut w, p.ts_nanos, f, f.len() as u32).map_err(err)?;
            }
            report.frames_out += frames.len();
        }
    }
    if link_code.is_none() {
        write_header(&mut w, 1).map_err(err)?;
    }
    w.flush().map_err(err)?;
    Ok(report)
}

/// The fragments one frame becomes, in the order to send them; empty to keep it whole.
fn fragments_of(
    link: wire::LinkType,
    frame: &[u8],
    cfg: &FragmentConfig,
    rng: &mut Rng,
    id: &mut u32,
    report: &mut FragmentReport,
) -> Vec<Vec<u8>> {
    let Ok(Decoded::Tcp(seg)) = wire::decode(link, frame) else {
        return Vec::new();
    };
    if seg.is_truncated() {
        return Vec::new();
    }
    let Some(l3) = network_offset(link, frame) else {
        return Vec::new();
    };
    let v6 = seg.dst.is_ipv6();
    // IPv6 with extension headers stays whole: the Fragment header goes after the fixed one.
    let l4 = usize::from(seg.l4_offset);
    if v6 && l4 != l3 + 40 {
        return Vec::new();
    }
    let payload_start = l4;
    let payload_end = l4 + (seg.payload_len_on_wire as usize) + (l4_header_len(frame, l4));
    let Some(ip_payload) = frame.get(payload_start..payload_end) else {
        return Vec::new();
    };
    let len = ip_payload.len();
    // The first fragment holds the whole TCP header (RFC 1858): the first cut is past it.
    let first_min = l4_header_len(frame, l4).div_ceil(8) * 8;
    let units = len.saturating_sub(1) / 8; // cut points at 8·k for k in 1..=units
    let first_unit = first_min / 8;
    if units < first_unit || cfg.max_fragments < 2 {
        return Vec::new();
    }
    let room = units - first_unit + 1;
    let pieces = 2 + rng.below(cfg.max_fragments - 1);
    let mut points: Vec<usize> = Vec::new();
    for _ in 0..(pieces - 1).min(room) {
        let mut k = first_unit + rng.below(room);
        // Distinct cut points: walk to the next free one.
        for _ in 0..room {
            if !points.contains(&k) {
                break;
            }
            k = first_unit + (k - first_unit + 1) % room;
        }
        if !points.contains(&k) {
            points.push(k);
        }
    }
    points.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(points.iter().map(|k| k * 8));
    bounds.push(len);
    let mut cuts: Vec<Cut> = bounds
        .windows(2)
        .map(|w| Cut {
            start: w[0],
            end: w[1],
        })
        .collect();
    if cuts.len() >= 2 && rng.chance(cfg.overlap) {
        // Straddle one cut, 8-byte aligned, starting past the first 8 bytes (RFC 3128).
        let i = 1 + rng.below(cuts.len() - 1);
        let start = cuts[i - 1]
            .start
            .max(first_min)
            .max(cuts[i].start.saturating_sub(16));
        let start = start / 8 * 8;
        let end = (cuts[i].start + 16).min(cuts[i].end);
        let end = if end == len { len } else { end / 8 * 8 };
        if start >= first_min && end > start && start < cuts[i].start {
            cuts.push(Cut { start, end });
            report.overlaps += 1;
        }
    }
    if cfg.shuffle {
        for i in (1..cuts.len()).rev() {
            cuts.swap(i, rng.below(i + 1));
        }
    }
    let mut order: Vec<Cut> = Vec::new();
    for c in &cuts {
        order.push(*c);
    }
    for c in cuts.iter() {
        if rng.chance(cfg.dup) {
            let at = rng.below(order.len() + 1);
            order.insert(at, *c);
            report.duplicates += 1;
        }
    }
    // A new identification per packet (IPv4's 16 bits wrap; fragments of one packet are
    // written together, so a wrapped id is long gone when it comes round).
    *id = id.wrapping_add(1);
    order
        .iter()
        .map(|c| {
            let more = c.end < len;
            if v6 {
                v6_fragment(frame, l3, ip_payload, *c, more, *id)
            } else {
                v4_fragment(frame, l3, l4, ip_payload, *c, more, *id as u16)
            }
        })
        .collect()
}

/// The TCP header's length (data offset), from the frame.
fn l4_header_len(frame: &[u8], l4: usize) -> usize {
    frame.get(l4 + 12).map_or(20, |b| usize::from(b >> 4) * 4)
}

fn v4_fragment(
    frame: &[u8],
    l3: usize,
    l4: usize,
    payload: &[u8],
    c: Cut,
    more: bool,
    id: u16,
) -> Vec<u8> {
    let ihl = l4 - l3;
    let mut f = frame[..l4].to_vec();
    f.extend_from_slice(&payload[c.start..c.end]);
    let ip = &mut f[l3..];
    ip[2..4].copy_from_slice(&((ihl + c.end - c.start) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = ((c.start / 8) as u16) | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = internet_checksum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f
}

fn v6_fragment(frame: &[u8], l3: usize, payload: &[u8], c: Cut, more: bool, id: u32) -> Vec<u8> {
    let mut f = frame[..l3 + 40].to_vec();
    let next = f[l3 + 6];
    f[l3 + 6] = 44;
    let plen = (8 + c.end - c.start) as u16;
    f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    f.extend_from_slice(&[next, 0]);
    f.extend_from_slice(&((c.start as u16 & 0xfff8) | u16::from(more)).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&payload[c.start..c.end]);
    f
}

fn write_header(w: &mut impl Write, link_code: u32) -> std::io::Result<()> {
    let mut h = Vec::with_capacity(24);
    h.extend(0xa1b2_3c4du32.to_le_bytes());
    h.extend(2u16.to_le_bytes());
    h.extend(4u16.to_le_bytes());
    h.extend([0u8; 8]);
    h.extend(262_144u32.to_le_bytes());
    h.extend(link_code.to_le_bytes());
    w.write_all(&h)
}

fn write_record(w: &mut impl Write, ts: u64, data: &[u8], orig_len: u32) -> std::io::Result<()> {
    let mut rec = [0u8; 16];
    rec[0..4].copy_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
    rec[4..8].copy_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
    rec[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
    rec[12..16].copy_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
    w.write_all(&rec)?;
    w.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpeek::ip::{Config, Defragmenter, Outcome};
    use flowpeek::wire::LinkType;

    /// An Ethernet IPv4 TCP frame with `n` payload bytes.
    fn frame(n: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 9, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&((40 + n) as u16).to_be_bytes());
        let sum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[
            0, 80, 4, 0xd2, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 1, 0, 0, 0, 0, 0,
        ]);
        f.extend((0..n).map(|i| (i * 13) as u8));
        f
    }

    #[test]
    fn fragments_reassemble_to_the_packet_whatever_the_order_and_copies() {
        let cfg = FragmentConfig {
            max_fragments: 6,
            dup: 0.3,
            overlap: 0.5,
            ..FragmentConfig::default()
        };
        let mut rng = Rng(3);
        let mut report = FragmentReport::default();
        let mut id = 0;
        for n in [100, 500, 1400] {
            for _ in 0..50 {
                let f = frame(n);
                let frags =
                    fragments_of(LinkType::Ethernet, &f, &cfg, &mut rng, &mut id, &mut report);
                assert!(frags.len() >= 2, "{n}");
                let mut d = Defragmenter::new(Config::default());
                let mut whole = None;
                for x in &frags {
                    if let Outcome::Complete(dg) = d.push(LinkType::Ethernet, x, 1) {
                        whole = Some(dg.frame.to_vec());
                    }
                }
                let whole = whole.expect("complete");
                // Identical but for the id, DF and the checksum.
                assert_eq!(whole.len(), f.len());
                assert_eq!(whole[14 + 20..], f[14 + 20..]);
                assert_eq!(d.stats().overlaps_differing, 0);
            }
        }
        assert!(report.duplicates > 0 && report.overlaps > 0, "{report:?}");
    }

    #[test]
    fn short_segments_stay_whole() {
        let cfg = FragmentConfig::default();
        let mut rng = Rng(1);
        let mut r = FragmentReport::default();
        let mut id = 0;
        assert!(fragments_of(
            LinkType::Ethernet,
            &frame(0),
            &cfg,
            &mut rng,
            &mut id,
            &mut r
        )
        .is_empty());
        assert!(fragments_of(
            LinkType::Ethernet,
            &frame(4),
            &cfg,
            &mut rng,
            &mut id,
            &mut r
        )
        .is_empty());
        assert!(!fragments_of(
            LinkType::Ethernet,
            &frame(12),
            &cfg,
            &mut rng,
            &mut id,
            &mut r
        )
        .is_empty());
    }
}
