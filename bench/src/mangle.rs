//! `flowpeek-bench mangle`: make a disorderly capture out of a clean one, the way a SPAN
//! port, a tap aggregator or a merge of per-queue captures does.
//!
//! Every mode keeps each packet's bytes; only the order changes, and copies are added. The
//! output's timestamps are the input's, sorted, handed out by position: time still moves
//! forward, and a packet moved later simply carries a later time, as it would have on the
//! tap. Modes compose in this order: `ack_first`, `fin_first`, `late`, `dup`, then `window`.
//!
//! - `window W`: cut the capture into runs of 2..=W consecutive packets (both directions
//!   mixed) and shuffle each run.
//! - `dup P`: each data segment is duplicated with probability P (the copy follows it).
//! - `ack_first`: every data segment is moved behind the first ACK of the other direction
//!   that covers it (the ACK overtakes the data it acknowledges).
//! - `fin_first`: every FIN is moved ahead of up to three data segments of its direction,
//!   at most 32 packets ahead (as far as a tap reorders).
//! - `late`: after a connection's last packet, a few packets later, copies of one data
//!   segment of each direction, of its FINs and of its last ACK arrive again.
//!
//! The random choices come from a seeded generator: the same seed gives the same capture.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use flowpeek::io::pcap::CaptureFile;
use flowpeek::wire::{self, Decoded};

/// What to do to the capture.
#[derive(Clone, Debug, Default)]
pub struct MangleConfig {
    /// Shuffle inside runs of up to this many packets (0 or 1: no shuffle).
    pub window: usize,
    /// Probability that a data segment is duplicated.
    pub dup: f64,
    /// Move each data segment behind the ACK that covers it.
    pub ack_first: bool,
    /// Move each FIN ahead of the data before it.
    pub fin_first: bool,
    /// Replay pieces of each connection after it closed.
    pub late: bool,
    /// Seed of the random choices.
    pub seed: u64,
}

/// What mangling did, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MangleReport {
    /// Packets read.
    pub packets_in: usize,
    /// Packets written (more when copies were added).
    pub packets_out: usize,
    /// Packets whose position changed.
    pub moved: usize,
    /// Copies added (`dup` and `late`).
    pub copies: usize,
    /// Per connection (its two endpoints, lower first) whose packets now carry another
    /// time: the largest shift of one of its packets, in ns. A window that spans a long
    /// silence of the capture moves a packet across it, further in time than a tap
    /// reorders; rules bounded in packet time (`--rst-linger`) then see a different
    /// capture.
    pub time_shifts: Vec<((SocketAddr, SocketAddr), u64)>,
}

impl MangleReport {
    /// The largest time shift of any packet, in ns.
    pub fn largest_shift(&self) -> u64 {
        self.time_shifts.iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// The largest time shift of a packet of the connection between `a` and `b`, in ns.
    pub fn shift_of(&self, a: SocketAddr, b: SocketAddr) -> u64 {
        let key = if a < b { (a, b) } else { (b, a) };
        self.time_shifts
            .iter()
            .find(|s| s.0 == key)
            .map_or(0, |s| s.1)
    }
}

/// The TCP facts the modes need about one packet.
#[derive(Clone, Copy, Debug)]
struct Tcp {
    /// Connection (both directions share it).
    conn: usize,
    /// Whether the packet goes from the lower endpoint to the higher.
    up: bool,
    seq: u32,
    ack: Option<u32>,
    len: u32,
    fin: bool,
    syn: bool,
    rst: bool,
}

struct Packet {
    ts: u64,
    data: Vec<u8>,
    orig_len: u32,
    tcp: Option<Tcp>,
}

/// A small, seeded generator (splitmix64): reproducible without a dependency.
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
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// Reads `input`, mangles it, writes a pcap (nanosecond timestamps) to `output`.
pub fn mangle_file(
    input: &Path,
    output: &Path,
    cfg: &MangleConfig,
) -> Result<MangleReport, String> {
    let cap = CaptureFile::open(input).map_err(|e| e.to_string())?;
    let mut link_code = None;
    let mut conns: HashMap<(IpAddr, u16, IpAddr, u16), usize> = HashMap::new();
    let mut packets = Vec::new();
    for item in cap.packets() {
        let p = item.map_err(|e| format!("{}: {e}", input.display()))?;
        match link_code {
            None => link_code = Some(p.link_code),
            Some(c) if c != p.link_code => {
                return Err(format!(
                    "{}: packets of link types {c} and {} in one capture; mangle writes one \
                     link type: split the capture by interface first",
                    input.display(),
                    p.link_code
                ))
            }
            Some(_) => {}
        }
        let tcp = match p.link.map(|l| wire::decode(l, p.data)) {
            Some(Ok(Decoded::Tcp(seg))) => {
                let up = (seg.src, seg.src_port) < (seg.dst, seg.dst_port);
                let key = if up {
                    (seg.src, seg.src_port, seg.dst, seg.dst_port)
                } else {
                    (seg.dst, seg.dst_port, seg.src, seg.src_port)
                };
                let next = conns.len();
                let conn = *conns.entry(key).or_insert(next);
                Some(Tcp {
                    conn,
                    up,
                    seq: seg.seq,
                    ack: seg.flags.ack().then_some(seg.ack),
                    len: seg.payload_len_on_wire,
                    fin: seg.flags.fin(),
                    syn: seg.flags.syn(),
                    rst: seg.flags.rst(),
                })
            }
            _ => None,
        };
        packets.push(Packet {
            ts: p.ts_nanos,
            data: p.data.to_vec(),
            orig_len: p.orig_len,
            tcp,
        });
    }
    let (order, mut report) = mangle_order(&packets, cfg);
    let mut times: Vec<u64> = order.iter().map(|&i| packets[i].ts).collect();
    times.sort_unstable();
    let shifts = shifts_per_conn(&packets, &order, &times, conns.len());
    report.time_shifts = conns
        .iter()
        .filter(|(_, &c)| shifts[c] > 0)
        .map(|(&(a, ap, b, bp), &c)| ((SocketAddr::new(a, ap), SocketAddr::new(b, bp)), shifts[c]))
        .collect();
    report.time_shifts.sort_unstable();
    write_pcap(output, link_code.unwrap_or(1), &packets, &order, &times)?;
    Ok(report)
}

/// Per connection, the largest |time in the output − time in the input| of its packets,
/// the output's times (`times`, sorted) being handed out by position.
fn shifts_per_conn(packets: &[Packet], order: &[usize], times: &[u64], conns: usize) -> Vec<u64> {
    let mut shifts = vec![0u64; conns];
    for (&i, &t) in order.iter().zip(times) {
        if let Some(tcp) = packets[i].tcp {
            let shift = t.abs_diff(packets[i].ts);
            shifts[tcp.conn] = shifts[tcp.conn].max(shift);
        }
    }
    shifts
}

/// The output order: indices into `packets`, copies appearing more than once.
fn mangle_order(packets: &[Packet], cfg: &MangleConfig) -> (Vec<usize>, MangleReport) {
    let mut rng = Rng(cfg.seed ^ 0x6d61_6e67_6c65);
    // (position, tie-break, packet): packets keep their position unless a mode gives them
    // another; a moved packet sorts right after (or before) the packet it was moved to.
    let mut place: Vec<(u64, u64, usize)> = (0..packets.len())
        .map(|i| (2 * i as u64 + 1, 0, i))
        .collect();
    let mut copies = 0;
    if cfg.ack_first {
        ack_first(packets, &mut place);
    }
    if cfg.fin_first {
        fin_first(packets, &mut place);
    }
    place.sort_unstable();
    if cfg.late {
        copies += late(packets, &mut place, &mut rng);
        place.sort_unstable();
    }
    let mut order: Vec<usize> = place.iter().map(|p| p.2).collect();
    if cfg.dup > 0.0 {
        let mut with = Vec::with_capacity(order.len() + order.len() / 16);
        for &i in &order {
            with.push(i);
            if packets[i].tcp.is_some_and(|t| t.len > 0) && rng.chance(cfg.dup) {
                with.push(i);
                copies += 1;
            }
        }
        order = with;
    }
    if cfg.window >= 2 {
        let mut at = 0;
        while at < order.len() {
            let run = (2 + rng.below(cfg.window - 1)).min(order.len() - at);
            let w = &mut order[at..at + run];
            for k in (1..w.len()).rev() {
                w.swap(k, rng.below(k + 1));
            }
            at += run;
        }
    }
    // A packet counts as moved when it no longer follows the packet it followed.
    let mut moved = 0;
    let mut prev = None;
    for &i in &order {
        if prev.is_some_and(|p: usize| p + 1 != i) || (prev.is_none() && i != 0) {
            moved += 1;
        }
        prev = Some(i);
    }
    let report = MangleReport {
        packets_in: packets.len(),
        packets_out: order.len(),
        moved,
        copies,
        time_shifts: Vec::new(),
    };
    (order, report)
}

/// Moves every data segment right behind the first later ACK of the other direction whose
/// acknowledgment number covers the segment's end.
fn ack_first(packets: &[Packet], place: &mut [(u64, u64, usize)]) {
    // Per connection and direction, data segments waiting for their ACK, oldest first.
    let mut waiting: HashMap<(usize, bool), Vec<(usize, u32)>> = HashMap::new();
    for (i, p) in packets.iter().enumerate() {
        let Some(t) = p.tcp else { continue };
        if let Some(ack) = t.ack {
            if let Some(list) = waiting.get_mut(&(t.conn, !t.up)) {
                list.retain(|&(d, end)| {
                    let covered = ack.wrapping_sub(end) as i32 >= 0;
                    if covered {
                        place[d] = (place[i].0, 1 + d as u64, d);
                    }
                    !covered
                });
            }
        }
        if t.len > 0 && !t.syn && !t.rst {
            let end = t.seq.wrapping_add(t.len);
            waiting.entry((t.conn, t.up)).or_default().push((i, end));
        }
    }
}

/// Moves every FIN (with or without data) ahead of the up to three data segments of its
/// direction that came before it.
/// The furthest a FIN is moved ahead (packets): the reordering a tap does. A FIN whose
/// direction's last data is further back (a server that answered long before the client's
/// upload ended) overtakes only what lies within this.
const FIN_LEAD: usize = 32;

fn fin_first(packets: &[Packet], place: &mut [(u64, u64, usize)]) {
    let mut recent: HashMap<(usize, bool), Vec<usize>> = HashMap::new();
    for (i, p) in packets.iter().enumerate() {
        let Some(t) = p.tcp else { continue };
        if t.fin && !t.rst {
            if let Some(list) = recent.get(&(t.conn, t.up)) {
                if let Some(&first) = list.iter().find(|&&d| i - d <= FIN_LEAD) {
                    place[i] = (place[first].0 - 1, 0, i);
                }
            }
            recent.remove(&(t.conn, t.up));
        } else if t.len > 0 && !t.syn {
            let list = recent.entry((t.conn, t.up)).or_default();
            if list.len() == 3 {
                list.remove(0);
            }
            list.push(i);
        }
    }
}

/// After each connection's last packet, adds copies of one data segment per direction, of
/// each FIN and of the last pure ACK, a few packets later. Returns the copies added.
fn late(packets: &[Packet], place: &mut Vec<(u64, u64, usize)>, rng: &mut Rng) -> usize {
    struct Seen {
        last_pos: usize,
        data: [Option<usize>; 2],
        fins: [Option<usize>; 2],
        ack: Option<usize>,
    }
    let mut conns: HashMap<usize, Seen> = HashMap::new();
    for (pos, &(_, _, i)) in place.iter().enumerate() {
        let Some(t) = packets[i].tcp else { continue };
        let s = conns.entry(t.conn).or_insert(Seen {
            last_pos: pos,
            data: [None; 2],
            fins: [None; 2],
            ack: None,
        });
        s.last_pos = pos;
        let d = usize::from(t.up);
        if t.len > 0 && !t.syn && (s.data[d].is_none() || rng.chance(0.3)) {
            s.data[d] = Some(i);
        }
        if t.fin {
            s.fins[d] = Some(i);
        }
        if t.len == 0 && !t.syn && !t.fin && !t.rst && t.ack.is_some() {
            s.ack = Some(i);
        }
    }
    let mut added = 0;
    let n = place.len();
    let mut extra = Vec::new();
    // In connection order: the same seed must give the same capture (a map's order is not
    // the same from one process to the next).
    let mut conns: Vec<(usize, Seen)> = conns.into_iter().collect();
    conns.sort_unstable_by_key(|c| c.0);
    for (_, s) in &conns {
        let copies = s.data.iter().chain(&s.fins).chain([&s.ack]).flatten();
        for &i in copies {
            let at = (s.last_pos + 1 + rng.below(6)).min(n - 1);
            extra.push((place[at].0, 1 + rng.next() % 1024, i));
            added += 1;
        }
    }
    place.extend(extra);
    added
}

fn write_pcap(
    output: &Path,
    link_code: u32,
    packets: &[Packet],
    order: &[usize],
    times: &[u64],
) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", output.display());
    let f = std::fs::File::create(output).map_err(err)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut h = Vec::with_capacity(24);
    h.extend(0xa1b2_3c4du32.to_le_bytes());
    h.extend(2u16.to_le_bytes());
    h.extend(4u16.to_le_bytes());
    h.extend([0u8; 8]);
    h.extend(262_144u32.to_le_bytes());
    h.extend(link_code.to_le_bytes());
    w.write_all(&h).map_err(err)?;
    for (&i, &ts) in order.iter().zip(times) {
        let p = &packets[i];
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&((ts / 1_000_000_000) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&((ts % 1_000_000_000) as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&(p.data.len() as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&p.orig_len.max(p.data.len() as u32).to_le_bytes());
        w.write_all(&rec).map_err(err)?;
        w.write_all(&p.data).map_err(err)?;
    }
    w.flush().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(conn: usize, up: bool, seq: u32, ack: Option<u32>, len: u32, fin: bool) -> Packet {
        Packet {
            ts: 0,
            data: Vec::new(),
            orig_len: 0,
            tcp: Some(Tcp {
                conn,
                up,
                seq,
                ack,
                len,
                fin,
                syn: false,
                rst: false,
            }),
        }
    }

    #[test]
    fn a_packet_moved_across_a_silence_carries_its_length() {
        // Connection 0 at 0 s and 5 s; connection 1 at 5.001 s. Swapping the first two
        // moves both of connection 0's packets by 5 s; connection 1 stays put.
        let mut p = vec![
            pkt(0, true, 1, None, 1, false),
            pkt(0, false, 1, None, 1, false),
            pkt(1, true, 1, None, 1, false),
        ];
        for (q, ts) in p.iter_mut().zip([0, 5_000_000_000, 5_001_000_000]) {
            q.ts = ts;
        }
        let order = [1, 0, 2];
        let times = [0, 5_000_000_000, 5_001_000_000];
        assert_eq!(shifts_per_conn(&p, &order, &times, 2), [5_000_000_000, 0]);
    }

    #[test]
    fn ack_first_puts_data_behind_its_ack() {
        // 0: data 100..200 up; 1: data 200..300 up; 2: ACK 200 down; 3: ACK 300 down.
        let p = vec![
            pkt(0, true, 100, Some(1), 100, false),
            pkt(0, true, 200, Some(1), 100, false),
            pkt(0, false, 1, Some(200), 0, false),
            pkt(0, false, 1, Some(300), 0, false),
        ];
        let cfg = MangleConfig {
            ack_first: true,
            ..Default::default()
        };
        let (order, r) = mangle_order(&p, &cfg);
        assert_eq!(order, vec![2, 0, 3, 1]);
        assert_eq!(r.packets_out, 4);
    }

    #[test]
    fn fin_first_overtakes_the_last_data() {
        let p = vec![
            pkt(0, true, 100, Some(1), 100, false),
            pkt(0, true, 200, Some(1), 100, false),
            pkt(0, true, 300, Some(1), 0, true),
        ];
        let cfg = MangleConfig {
            fin_first: true,
            ..Default::default()
        };
        assert_eq!(mangle_order(&p, &cfg).0, vec![2, 0, 1]);
    }

    #[test]
    fn fin_first_moves_no_further_than_a_tap_reorders() {
        // The server answered at once; its FIN comes after the client's long upload.
        let mut p = vec![pkt(0, false, 1, Some(1), 100, false)];
        p.extend((0..100).map(|k| pkt(0, true, 100 + k * 10, Some(101), 10, false)));
        p.push(pkt(0, false, 101, Some(1100), 0, true));
        let cfg = MangleConfig {
            fin_first: true,
            ..Default::default()
        };
        let order = mangle_order(&p, &cfg).0;
        assert_eq!(order, (0..p.len()).collect::<Vec<_>>());
    }

    #[test]
    fn window_permutes_inside_runs_and_keeps_every_packet() {
        let p: Vec<Packet> = (0..1000).map(|i| pkt(0, true, i, None, 1, false)).collect();
        let cfg = MangleConfig {
            window: 8,
            seed: 3,
            ..Default::default()
        };
        let (order, r) = mangle_order(&p, &cfg);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert!(r.moved > 100, "{r:?}");
        for (pos, &i) in order.iter().enumerate() {
            assert!(pos.abs_diff(i) < 8, "packet {i} at {pos}");
        }
    }

    #[test]
    fn late_copies_come_after_the_connection() {
        let p = vec![
            pkt(0, true, 100, Some(1), 100, false),
            pkt(0, false, 1, Some(200), 0, false),
            pkt(0, true, 200, Some(1), 0, true),
            pkt(1, true, 5, None, 10, false),
            pkt(1, true, 15, None, 10, false),
        ];
        let cfg = MangleConfig {
            late: true,
            seed: 1,
            ..Default::default()
        };
        let (order, r) = mangle_order(&p, &cfg);
        assert!(r.copies >= 3, "{r:?}");
        let first_late = order.iter().position(|&i| i == 2).unwrap() + 1;
        assert!(order[first_late..].contains(&0), "{order:?}");
    }

    #[test]
    fn dup_adds_copies_of_data_only() {
        let mut p: Vec<Packet> = (0..1000).map(|i| pkt(0, true, i, None, 1, false)).collect();
        p.push(pkt(0, false, 0, Some(5), 0, false));
        let cfg = MangleConfig {
            dup: 0.5,
            seed: 9,
            ..Default::default()
        };
        let (order, r) = mangle_order(&p, &cfg);
        assert_eq!(order.len(), 1001 + r.copies);
        assert!((350..650).contains(&r.copies), "{r:?}");
        assert_eq!(order.iter().filter(|&&i| i == 1000).count(), 1);
    }
}
