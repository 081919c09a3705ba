//! Fuzz the flow engine (`flowpeek::flow::Engine`) with sequences of TCP segments over a
//! tiny address space (3 hosts x 3 ports, IPv4 and sometimes IPv6), interleaved with
//! `end_batch`, `advance` and raw fuzzer frames, and a monitor subscribed to every
//! built-in event that checks buffer, read-API and event-order invariants on each callback.
//!
//! Every payload byte the target sends is `pat(sender, seq)`: a function of the sender's
//! address and the byte's sequence number only (raw frames are rewritten to obey it too),
//! so whatever `ppeek`/`peek` return can be checked against the sequence number it sits at,
//! whatever the overlap policy.
// Built by cargo-fuzz: a libFuzzer target. Included by host/tests/fuzz_regressions.rs (built
// with cfg(test)): `run` alone, replayed over host/fuzz/regressions/engine/.
#![cfg_attr(not(test), no_main)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use flowpeek::flow::{
    BufferRequest, Config, Cx, Detail, EndReason, Engine, Errno, Event, EventKind, EventSide, Hook,
    Monitor, OverlapPolicy, PeekError, Side, Subscriptions, TcpState,
};
use flowpeek::wire::{decode, Decoded, LinkType};

const CAPACITY: u32 = 512;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const PORTS: [u16; 3] = [80, 1234, 40000];
const LINKS: [LinkType; 5] = [
    LinkType::Ethernet,
    LinkType::RawIp,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
];

// ---------------------------------------------------------------------------------------
// The payload pattern
// ---------------------------------------------------------------------------------------

fn salt(a: &SocketAddr) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let ip = match a.ip() {
        IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
        IpAddr::V6(v) => v.octets(),
    };
    for b in ip.iter().chain(a.port().to_be_bytes().iter()) {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The byte `sender` sends at sequence number `seq`.
fn pat(salt: u32, seq: u32) -> u8 {
    let x = (seq ^ salt).wrapping_mul(0x9e37_79b1);
    ((x >> 24) ^ (x >> 11)) as u8
}

// ---------------------------------------------------------------------------------------
// Input reader
// ---------------------------------------------------------------------------------------

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// Packet builder (Ethernet / IPv4 or IPv6 / TCP)
// ---------------------------------------------------------------------------------------

struct Seg {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    wscale: Option<u8>,
    payload_len: usize,
}

fn build(s: &Seg, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
    let opt_len = if s.wscale.is_some() { 4 } else { 0 };
    let tcp_len = 20 + opt_len + s.payload_len;
    match (s.src.ip(), s.dst.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let ip0 = out.len();
            let total = (20 + tcp_len) as u16;
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
            let mut sum: u32 = 0;
            for w in out[ip0..ip0 + 20].chunks(2) {
                sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let c = !(sum as u16);
            out[ip0 + 10..ip0 + 12].copy_from_slice(&c.to_be_bytes());
        }
        (a, b) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v) => v.to_ipv6_mapped(),
                IpAddr::V6(v) => v,
            };
            out.extend_from_slice(&[0x86, 0xdd]);
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            out.extend_from_slice(&[6, 64]);
            out.extend_from_slice(&v6(a).octets());
            out.extend_from_slice(&v6(b).octets());
        }
    }
    out.extend_from_slice(&s.src.port().to_be_bytes());
    out.extend_from_slice(&s.dst.port().to_be_bytes());
    out.extend_from_slice(&s.seq.to_be_bytes());
    out.extend_from_slice(&s.ack.to_be_bytes());
    out.push((((20 + opt_len) / 4) as u8) << 4);
    out.push(s.flags);
    out.extend_from_slice(&s.window.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    if let Some(ws) = s.wscale {
        out.extend_from_slice(&[3, 3, ws, 1]);
    }
    let salt = salt(&s.src);
    let data_seq = s.seq.wrapping_add(u32::from(s.flags & 0x02 != 0));
    for i in 0..s.payload_len {
        out.push(pat(salt, data_seq.wrapping_add(i as u32)));
    }
}

/// Makes the TCP payload of a raw frame (if it decodes as TCP) follow the pattern.
fn rewrite_raw(link: LinkType, frame: &mut [u8]) {
    let fix = match decode(link, frame) {
        Ok(Decoded::Tcp(seg)) => {
            let start = seg.payload.as_ptr() as usize - frame.as_ptr() as usize;
            let data_seq = seg.seq.wrapping_add(u32::from(seg.flags.0 & 0x02 != 0));
            Some((
                start,
                seg.payload.len(),
                salt(&SocketAddr::new(seg.src, seg.src_port)),
                data_seq,
            ))
        }
        _ => None,
    };
    if let Some((start, len, salt, seq)) = fix {
        for i in 0..len {
            frame[start + i] = pat(salt, seq.wrapping_add(i as u32));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checking monitor
// ---------------------------------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct SideTrack {
    head: u64,
    cursor: u64,
    contig: u64,
    /// `seq_base` once bytes were stored (it must not move then).
    base: Option<u32>,
}

#[derive(Default)]
struct FlowTrack {
    sides: [SideTrack; 2],
    /// ConnEnd seen per (side, hook Rcv/Snd).
    ended: [[bool; 2]; 2],
}

/// Checks done, printed at the end of a run when `ENGINE_FUZZ_STATS` is set.
#[derive(Default, Debug)]
struct Counts {
    events: u64,
    new_data: u64,
    ppeek_bytes: u64,
    peek_bytes: u64,
    lost: u64,
    conn_ends: u64,
}

#[derive(Default)]
struct Checker {
    counts: Counts,
    flows: HashMap<u64, FlowTrack>,
    /// Handles whose flow got all four ConnEnds.
    dead: HashSet<u64>,
    scratch: Vec<u8>,
}

fn side_sender_salt(cx: &Cx<'_>, ev: &Event, side: Side) -> u32 {
    let (cli, svr) = cx
        .addresses(ev.flow)
        .unwrap_or_else(|e| panic!("addresses: {e} on {ev:?}"));
    // The Server side's buffer holds the client's bytes, and vice versa.
    salt(if side == Side::Server { &cli } else { &svr })
}

impl Checker {
    fn check_side(&mut self, cx: &Cx<'_>, ev: &Event, side: Side) {
        let h = ev.flow;
        let bi = match cx.buffer_info(h, side) {
            Ok(b) => b,
            Err(e) => panic!("buffer_info({side:?}) = {e} during {ev:?}"),
        };
        assert_eq!(bi.capacity, CAPACITY, "capacity {bi:?} {ev:?}");
        assert!(bi.head <= bi.contig_end, "head > contig_end: {bi:?} {ev:?}");
        assert!(bi.head <= bi.last_end, "head > last_end: {bi:?} {ev:?}");
        assert!(
            bi.cursor <= bi.contig_end,
            "cursor > contig_end: {bi:?} {ev:?}"
        );
        let t = self.flows.entry(h.0).or_default();
        let st = &mut t.sides[side.index()];
        assert!(
            bi.head >= st.head,
            "head went back {} -> {}: {bi:?} {ev:?}",
            st.head,
            bi.head
        );
        assert!(
            bi.contig_end >= st.contig,
            "contig_end went back {} -> {}: {bi:?} {ev:?}",
            st.contig,
            bi.contig_end
        );
        assert!(
            bi.cursor >= st.cursor,
            "cursor went back {} -> {}: {bi:?} {ev:?}",
            st.cursor,
            bi.cursor
        );
        st.head = bi.head;
        st.contig = bi.contig_end;
        st.cursor = bi.cursor;

        // Fragments: non-empty, sorted, disjoint and not touching (touching ones merge),
        // inside [head, head + capacity); the last one ends at last_end.
        let frags: Vec<(u64, u64)> = match cx.fragments(h, side) {
            Ok(it) => it.collect(),
            Err(e) => panic!("fragments({side:?}) = {e} during {ev:?}"),
        };
        let mut prev_end: Option<u64> = None;
        for &(start, len) in &frags {
            assert!(len > 0, "empty fragment {frags:?} {bi:?} {ev:?}");
            assert!(
                start >= bi.head,
                "fragment before head {frags:?} {bi:?} {ev:?}"
            );
            assert!(
                start + len <= bi.head + u64::from(bi.capacity),
                "fragment beyond window {frags:?} {bi:?} {ev:?}"
            );
            if let Some(p) = prev_end {
                assert!(
                    start > p,
                    "fragments unsorted/overlapping/touching {frags:?} {bi:?} {ev:?}"
                );
            }
            prev_end = Some(start + len);
        }
        assert_eq!(
            prev_end.unwrap_or(bi.head),
            bi.last_end,
            "last_end {frags:?} {bi:?} {ev:?}"
        );
        if frags.is_empty() && bi.contig_end == bi.head {
            return;
        }
        match st.base {
            None => st.base = Some(bi.seq_base),
            Some(b) => assert_eq!(
                b, bi.seq_base,
                "seq_base moved with data stored {bi:?} {ev:?}"
            ),
        }

        // ppeek: every stored byte is pat(sender, seq_base + offset); a read stops at the
        // end of its fragment; offsets outside the fragments give ENODATA.
        let salt = side_sender_salt(cx, ev, side);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(CAPACITY as usize + 16, 0);
        for &(start, len) in &frags {
            for off in [start, start + len / 2, start + len - 1] {
                let want = (start + len - off) as usize;
                match cx.ppeek(h, side, &mut buf, off) {
                    Ok(n) => {
                        assert_eq!(
                            n, want,
                            "ppeek({off}) length; frags {frags:?} {bi:?} {ev:?}"
                        );
                        self.counts.ppeek_bytes += n as u64;
                        for (i, &b) in buf[..n].iter().enumerate() {
                            let seq = bi.seq_base.wrapping_add((off + i as u64) as u32);
                            assert_eq!(
                                b,
                                pat(salt, seq),
                                "ppeek byte at offset {} (seq {seq}) of {side:?} was never sent; frags {frags:?} {bi:?} {ev:?}",
                                off + i as u64
                            );
                        }
                    }
                    Err(e) => panic!("ppeek({side:?}, {off}) = {e}; frags {frags:?} {bi:?} {ev:?}"),
                }
                let (a, b) = cx
                    .ppeek_slices(h, side, off, 1000)
                    .unwrap_or_else(|e| panic!("ppeek_slices {e} {ev:?}"));
                assert_eq!(
                    a.len() + b.len(),
                    want,
                    "ppeek_slices({off}) length {frags:?} {bi:?} {ev:?}"
                );
                assert_eq!(a, &buf[..a.len()]);
                assert_eq!(b, &buf[a.len()..want]);
            }
            let _ = cx.ppeek(h, side, &mut buf[..0], start);
        }
        let mut holes = vec![bi.last_end];
        if bi.head > 0 {
            holes.push(bi.head - 1);
        }
        for w in frags.windows(2) {
            holes.push(w[0].0 + w[0].1);
        }
        for off in holes {
            let r = cx.ppeek(h, side, &mut buf, off);
            assert_eq!(
                r,
                Err(Errno::NoData),
                "ppeek at unstored offset {off}; frags {frags:?} {bi:?} {ev:?}"
            );
        }
        self.scratch = buf;
    }

    /// NewData: read everything with `peek`; the bytes match the pattern, `Lost(n)` moves
    /// the cursor by exactly `n`, and the cursor ends at the contiguous end.
    fn drain(&mut self, cx: &mut Cx<'_>, ev: &Event, side: Side) {
        let h = ev.flow;
        let salt = side_sender_salt(cx, ev, side);
        let mut buf = [0u8; 300];
        for _ in 0..10_000 {
            let before = cx.buffer_info(h, side).unwrap();
            match cx.peek(h, side, &mut buf) {
                Ok(0) => {
                    assert_eq!(
                        before.cursor, before.contig_end,
                        "peek returned 0 before contig_end {before:?} {ev:?}"
                    );
                    return;
                }
                Ok(n) => {
                    let after = cx.buffer_info(h, side).unwrap();
                    assert_eq!(
                        after.cursor,
                        before.cursor + n as u64,
                        "peek cursor {before:?} {after:?}"
                    );
                    assert_eq!(after.contig_end, before.contig_end);
                    assert_eq!(after.head, before.head);
                    self.counts.peek_bytes += n as u64;
                    for (i, &b) in buf[..n].iter().enumerate() {
                        let off = before.cursor + i as u64;
                        let seq = before.seq_base.wrapping_add(off as u32);
                        assert_eq!(b, pat(salt, seq), "peek byte at offset {off} (seq {seq}) of {side:?} never sent; {before:?} {ev:?}");
                    }
                }
                Err(PeekError::Lost(n)) => {
                    let after = cx.buffer_info(h, side).unwrap();
                    assert!(n > 0, "Lost(0) {before:?} {ev:?}");
                    self.counts.lost += 1;
                    assert_eq!(
                        after.cursor,
                        before.cursor + n,
                        "Lost({n}) moved the cursor wrongly {before:?} {after:?} {ev:?}"
                    );
                    assert_eq!(
                        (after.head, after.contig_end, after.last_end),
                        (before.head, before.contig_end, before.last_end)
                    );
                }
                Err(e) => panic!("peek({side:?}) = {e} on NewData {before:?} {ev:?}"),
            }
            let t = self.flows.entry(h.0).or_default();
            t.sides[side.index()].cursor = cx.buffer_info(h, side).unwrap().cursor;
        }
        panic!("peek loop did not terminate {ev:?}");
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        if std::env::var_os("ENGINE_FUZZ_STATS").is_some() {
            eprintln!("{:?}", self.counts);
        }
    }
}

impl Monitor for Checker {
    fn name(&self) -> &str {
        "fuzz-checker"
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::all_builtin().with_buffers(BufferRequest::Default)
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        if ev.kind == EventKind::Orphan {
            assert_eq!(ev.side, EventSide::Both);
            return;
        }
        let h = ev.flow;
        self.counts.events += 1;
        self.counts.conn_ends += u64::from(ev.kind == EventKind::ConnEnd);
        self.counts.new_data += u64::from(ev.kind == EventKind::NewData);
        assert!(
            !self.dead.contains(&h.0),
            "event for a flow after its last ConnEnd: {ev:?}"
        );
        let EventSide::One(side) = ev.side else {
            panic!("flow event for both sides: {ev:?}")
        };
        let t = self.flows.entry(h.0).or_default();
        let any_end = t.ended.iter().flatten().any(|&e| e);
        if ev.kind == EventKind::ConnEnd {
            let hi = match ev.hook {
                Hook::Rcv => 0,
                Hook::Snd => 1,
                Hook::None => panic!("ConnEnd at Hook::None: {ev:?}"),
            };
            assert!(
                !t.ended[side.index()][hi],
                "ConnEnd twice for (flow, side, hook): {ev:?}"
            );
            t.ended[side.index()][hi] = true;
            assert!(
                matches!(ev.detail, Detail::End(r) if r != EndReason::Stopped),
                "{ev:?}"
            );
        } else if any_end {
            // Once destruction started, only the CLOSED transitions and ConnEnds follow.
            assert!(
                ev.kind == EventKind::TcpStateChange
                    && ev.detail == Detail::State(TcpState::Closed),
                "event after a ConnEnd of the flow: {ev:?}"
            );
        }
        // Side states never report CLOSED->CLOSED transitions... (not checked: spec'd
        // emission is unconditional during destroy).
        for s in Side::BOTH {
            self.check_side(cx, ev, s);
        }
        if ev.kind == EventKind::NewData {
            self.drain(cx, ev, side);
            self.check_side(cx, ev, side);
        }
        let t = self.flows.get(&h.0).unwrap();
        if t.ended.iter().flatten().all(|&e| e) {
            self.flows.remove(&h.0);
            self.dead.insert(h.0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct Dir {
    next: u32,
    ack: u32,
}

fn endpoint(host: u8, port: u8, v6: bool) -> SocketAddr {
    let h = host % 3 + 1;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(h)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, h))
    };
    SocketAddr::new(ip, PORTS[usize::from(port % 3)])
}

/// The target's body: the fuzz target and the regression test (`host/tests/fuzz_regressions.rs`)
/// call it.
pub fn run(data: &[u8]) {
    let mut rd = Rd(data);
    let c = rd.u8();
    let tw_interval = [0, MS, 500 * MS, 3 * SEC][usize::from(c & 3)];
    let overlap = if c & 4 == 0 {
        OverlapPolicy::First
    } else {
        OverlapPolicy::Last
    };
    let midstream = c & 8 == 0;
    let cfg = Config {
        max_flows: 4,
        buffer_capacity: CAPACITY,
        tcp_timeout: SEC,
        tw_interval,
        overlap,
        midstream,
        ..Config::default()
    };
    let mut engine = Engine::new(cfg, vec![Box::new(Checker::default())]);
    let mut now: u64 = SEC;
    let mut dirs: HashMap<(SocketAddr, SocketAddr), Dir> = HashMap::new();
    let mut frame = Vec::with_capacity(512);
    let mut ops = 0;
    while !rd.is_empty() && ops < 2000 {
        ops += 1;
        let op = rd.u8();
        match op % 16 {
            0 => engine.end_batch(),
            1 => {
                now += match rd.u8() % 4 {
                    0 => u64::from(rd.u16()) * 1000,
                    1 => u64::from(rd.u16()) * MS,
                    2 => SEC + u64::from(rd.u16()) * MS,
                    _ => u64::from(rd.u32()) * MS,
                };
                engine.advance(now);
            }
            2 => {
                let link = LINKS[usize::from(rd.u8()) % LINKS.len()];
                let n = usize::from(rd.u8());
                let mut raw = rd.bytes(n).to_vec();
                rewrite_raw(link, &mut raw);
                engine.on_frame(Some(link), &raw, now);
            }
            _ => {
                // A TCP segment.
                let a = rd.u8();
                let v6 = a & 0x80 != 0 && a & 0x40 != 0;
                let src = endpoint(a & 3, (a >> 2) & 3, v6);
                let dst = endpoint((a >> 4) & 3, rd.u8(), v6);
                let m = rd.u8();
                let fl = rd.u8();
                let flags = match fl % 10 {
                    0 => 0x02,               // SYN
                    1 => 0x12,               // SYN/ACK
                    2..=5 => 0x18,           // PSH/ACK
                    6 => 0x11,               // FIN/ACK
                    7 => 0x04 | (fl & 0x10), // RST (/ACK)
                    8 => 0x10,               // ACK
                    _ => rd.u8(),            // anything
                };
                let d = dirs.get(&(src, dst)).copied().unwrap_or_default();
                let rev = dirs.get(&(dst, src)).copied().unwrap_or_default();
                let seq = match m & 7 {
                    0..=3 => d.next,
                    4 => d.next.wrapping_add(u32::from(rd.u8())),
                    5 => d.next.wrapping_sub(u32::from(rd.u16() % 1024)),
                    6 => d.next.wrapping_add(u32::from(rd.u16())),
                    _ => rd.u32(),
                };
                let ack = match (m >> 3) & 3 {
                    0 | 1 => rev.next,
                    2 => rev
                        .next
                        .wrapping_add(u32::from(rd.u16()).wrapping_sub(0x8000)),
                    _ => rd.u32(),
                };
                let _ = d.ack;
                let window = if m & 0x20 != 0 { rd.u16() } else { 65535 };
                let wscale = (flags & 0x02 != 0 && m & 0x40 != 0).then(|| rd.u8() % 16);
                let payload_len = if m & 0x80 != 0 {
                    0
                } else {
                    usize::from(rd.u8()) % 201
                };
                let seg = Seg {
                    src,
                    dst,
                    seq,
                    ack,
                    flags,
                    window,
                    wscale,
                    payload_len,
                };
                build(&seg, &mut frame);
                let data_seq = seq.wrapping_add(u32::from(flags & 0x02 != 0));
                let end = data_seq
                    .wrapping_add(payload_len as u32)
                    .wrapping_add(u32::from(flags & 0x01 != 0));
                let e = dirs.entry((src, dst)).or_default();
                if (end.wrapping_sub(e.next) as i32) > 0 || m & 7 == 7 {
                    e.next = end;
                }
                e.ack = ack;
                // Timestamp: usually now, sometimes a little later or earlier.
                let ts = match op >> 4 {
                    0..=9 => now,
                    10..=13 => {
                        now += u64::from(rd.u16()) * 10_000;
                        now
                    }
                    14 => now.saturating_sub(u64::from(rd.u16()) * 1000),
                    _ => {
                        now += SEC + u64::from(rd.u8()) * 10 * MS;
                        now
                    }
                };
                engine.on_frame(Some(LinkType::Ethernet), &frame, ts);
            }
        }
    }
    engine.finish(EndReason::Eof);
    assert_eq!(engine.stats().flows_live, 0);
    if std::env::var_os("ENGINE_FUZZ_STATS").is_some() {
        eprintln!("{:?}", engine.stats());
    }
}

#[cfg(not(test))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
