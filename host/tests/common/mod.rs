//! Test harness for the engine: a packet builder producing real Ethernet/IP/TCP frames, a
//! recording monitor that turns every callback into a compact string, and a small driver
//! with a fake clock (quinn-proto style: the harness here, one focused test per scenario).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use flowpeek::flow::{
    BufferRequest, Config, Cx, Detail, Engine, Event, EventKind, FlowHandle, Monitor, PeekError,
    Side, Subscriptions,
};
use flowpeek::wire::{LinkType, TcpFlags};

pub const FIN: u8 = TcpFlags::FIN;
pub const SYN: u8 = TcpFlags::SYN;
pub const RST: u8 = TcpFlags::RST;
pub const PSH: u8 = TcpFlags::PSH;
pub const ACK: u8 = TcpFlags::ACK;

pub const MS: u64 = 1_000_000;
pub const SEC: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------
// Packet builder
// ---------------------------------------------------------------------------------------

/// One TCP segment to build into an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Seg {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
    pub mss: Option<u16>,
    pub wscale: Option<u8>,
}

impl Seg {
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Seg {
        Seg {
            src,
            dst,
            seq: 0,
            ack: 0,
            flags: 0,
            window: 65535,
            payload: Vec::new(),
            mss: None,
            wscale: None,
        }
    }
    pub fn seq(mut self, seq: u32) -> Seg {
        self.seq = seq;
        self
    }
    pub fn ack(mut self, ack: u32) -> Seg {
        self.ack = ack;
        self
    }
    pub fn flags(mut self, flags: u8) -> Seg {
        self.flags = flags;
        self
    }
    pub fn window(mut self, window: u16) -> Seg {
        self.window = window;
        self
    }
    pub fn data(mut self, payload: &[u8]) -> Seg {
        self.payload = payload.to_vec();
        self
    }
    pub fn mss(mut self, mss: u16) -> Seg {
        self.mss = Some(mss);
        self
    }
    pub fn wscale(mut self, shift: u8) -> Seg {
        self.wscale = Some(shift);
        self
    }

    fn tcp_bytes(&self) -> Vec<u8> {
        let mut opts = Vec::new();
        if let Some(mss) = self.mss {
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
        }
        if let Some(ws) = self.wscale {
            opts.extend_from_slice(&[1, 3, 3, ws]); // NOP, window scale
        }
        while opts.len() % 4 != 0 {
            opts.push(0); // EOL padding
        }
        let hlen = 20 + opts.len();
        let mut t = Vec::with_capacity(hlen + self.payload.len());
        t.extend_from_slice(&self.src.port().to_be_bytes());
        t.extend_from_slice(&self.dst.port().to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push(((hlen / 4) as u8) << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        t.extend_from_slice(&opts);
        t.extend_from_slice(&self.payload);
        t
    }

    /// The segment as an Ethernet II frame (IPv4 or IPv6 from the addresses), with valid
    /// IP and TCP checksums.
    pub fn frame(&self) -> Vec<u8> {
        let mut tcp = self.tcp_bytes();
        let mut f = Vec::with_capacity(14 + 40 + tcp.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // dst MAC
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // src MAC
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, 6]);
                pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                let c = checksum(&[&pseudo, &tcp]);
                tcp[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&[0x08, 0x00]);
                let mut ip = Vec::with_capacity(20);
                ip.extend_from_slice(&[0x45, 0]);
                ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]); // id, DF, ttl, proto
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = checksum(&[&ip]);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut pseudo = Vec::new();
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 6]);
                let c = checksum(&[&pseudo, &tcp]);
                tcp[16..18].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&[0x86, 0xdd]);
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                f.extend_from_slice(&[6, 64]); // next header TCP, hop limit
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&tcp);
        f
    }
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for ch in part.chunks(2) {
            let w = if ch.len() == 2 {
                u16::from_be_bytes([ch[0], ch[1]])
            } else {
                u16::from(ch[0]) << 8
            };
            sum += u32::from(w);
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One connection: endpoints and initial sequence numbers; builds its segments with
/// sequence numbers relative to ISN+1 (stream offsets).
#[derive(Clone, Debug)]
pub struct Conn {
    pub cli: SocketAddr,
    pub svr: SocketAddr,
    pub cisn: u32,
    pub sisn: u32,
}

impl Conn {
    pub fn new(cli: &str, svr: &str) -> Conn {
        Conn {
            cli: cli.parse().unwrap(),
            svr: svr.parse().unwrap(),
            cisn: 1_000,
            sisn: 50_000,
        }
    }
    /// The default test connection 10.0.0.1:40000 -> 10.0.0.2:80.
    pub fn v4() -> Conn {
        Conn::new("10.0.0.1:40000", "10.0.0.2:80")
    }
    pub fn isn(mut self, cisn: u32, sisn: u32) -> Conn {
        self.cisn = cisn;
        self.sisn = sisn;
        self
    }
    pub fn syn(&self) -> Seg {
        Seg::new(self.cli, self.svr).seq(self.cisn).flags(SYN)
    }
    pub fn synack(&self) -> Seg {
        Seg::new(self.svr, self.cli)
            .seq(self.sisn)
            .ack(self.cisn.wrapping_add(1))
            .flags(SYN | ACK)
    }
    /// A client segment at client-stream offset `off`, acknowledging server offset `ack`.
    pub fn c(&self, off: u32, ack: u32, flags: u8) -> Seg {
        Seg::new(self.cli, self.svr)
            .seq(self.cisn.wrapping_add(1).wrapping_add(off))
            .ack(self.sisn.wrapping_add(1).wrapping_add(ack))
            .flags(flags)
    }
    /// A server segment at server-stream offset `off`, acknowledging client offset `ack`.
    pub fn s(&self, off: u32, ack: u32, flags: u8) -> Seg {
        Seg::new(self.svr, self.cli)
            .seq(self.sisn.wrapping_add(1).wrapping_add(off))
            .ack(self.cisn.wrapping_add(1).wrapping_add(ack))
            .flags(flags)
    }
    /// SYN, SYN/ACK, ACK.
    pub fn handshake(&self) -> Vec<Seg> {
        vec![self.syn(), self.synack(), self.c(0, 0, ACK)]
    }
}

/// The events of a full three-way handshake, one packet per batch, for a monitor that
/// subscribes to everything.
pub fn handshake_events() -> Vec<String> {
    strs(&[
        "cli snd PKT_IN",
        "cli snd CONN_START",
        "cli snd TCP_STATE_CHANGE SYN_SENT",
        "svr rcv PKT_IN",
        "svr rcv CONN_START",
        "svr rcv TCP_STATE_CHANGE SYN_RCVD",
        "svr snd PKT_IN",
        "cli rcv PKT_IN",
        "cli rcv TCP_STATE_CHANGE ESTABLISHED",
        "cli snd PKT_IN",
        "svr rcv PKT_IN",
        "svr rcv TCP_STATE_CHANGE ESTABLISHED",
    ])
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `n` bytes of a recognisable pattern.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            seed.wrapping_add((i % 251) as u8)
                .wrapping_mul(7)
                .wrapping_add((i / 251) as u8)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Recording monitor
// ---------------------------------------------------------------------------------------

pub type Log = Rc<RefCell<Vec<String>>>;
/// Runs after the recorder logged an event; may push extra lines.
pub type HookFn = Box<dyn FnMut(&mut Cx<'_>, &Event, &mut Vec<String>)>;
pub type TimerFn = Box<dyn FnMut(&mut Cx<'_>, Option<FlowHandle>, u64, &mut Vec<String>)>;

pub fn new_log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

/// A monitor that records each callback as `"<side> <hook> <EVENT> [detail]"`.
pub struct Recorder {
    /// Prefix `"<name>: "` on every line when not empty.
    pub name: String,
    pub subs: Subscriptions,
    /// Read every new byte with `peek` on `NewData` (a consuming reader); otherwise never
    /// read.
    pub consume: bool,
    /// Prefix the client's port on flow events.
    pub show_port: bool,
    pub log: Log,
    /// Bytes read with `peek`, per side (index: `Side::index()`).
    pub read: Rc<RefCell<[Vec<u8>; 2]>>,
    pub hook: Option<HookFn>,
    pub timer_hook: Option<TimerFn>,
}

impl Recorder {
    /// Subscribed to every built-in event, default buffers on both sides, not reading.
    pub fn new(log: &Log) -> Recorder {
        Recorder {
            name: String::new(),
            subs: Subscriptions::all_builtin().with_buffers(BufferRequest::Default),
            consume: false,
            show_port: false,
            log: log.clone(),
            read: Rc::new(RefCell::new([Vec::new(), Vec::new()])),
            hook: None,
            timer_hook: None,
        }
    }
    pub fn named(mut self, name: &str) -> Recorder {
        self.name = name.to_string();
        self
    }
    pub fn subs(mut self, subs: Subscriptions) -> Recorder {
        self.subs = subs;
        self
    }
    pub fn consuming(mut self) -> Recorder {
        self.consume = true;
        self
    }
    pub fn with_port(mut self) -> Recorder {
        self.show_port = true;
        self
    }
    pub fn hook(
        mut self,
        f: impl FnMut(&mut Cx<'_>, &Event, &mut Vec<String>) + 'static,
    ) -> Recorder {
        self.hook = Some(Box::new(f));
        self
    }
    pub fn timer_hook(
        mut self,
        f: impl FnMut(&mut Cx<'_>, Option<FlowHandle>, u64, &mut Vec<String>) + 'static,
    ) -> Recorder {
        self.timer_hook = Some(Box::new(f));
        self
    }
    /// A handle on the bytes this recorder read.
    pub fn read_handle(&self) -> Rc<RefCell<[Vec<u8>; 2]>> {
        self.read.clone()
    }
    fn prefix(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.name)
        }
    }
}

/// The compact description of one event.
pub fn describe(cx: &Cx<'_>, ev: &Event) -> String {
    let name = match ev.kind {
        EventKind::User(id) => format!("USER{}", id.0),
        k => k.mos_name().to_string(),
    };
    let mut s = format!("{} {} {}", ev.side.short_name(), ev.hook.short_name(), name);
    match ev.detail {
        Detail::State(st) => s += &format!(" {}", st.name()),
        Detail::End(r) => s += &format!(" {}", r.name()),
        Detail::Error(k) => s += &format!(" {k:?}"),
        Detail::None => {
            if ev.kind == EventKind::NewData {
                if let flowpeek::flow::EventSide::One(side) = ev.side {
                    match cx.buffer_info(ev.flow, side) {
                        Ok(bi) => s += &format!(" {}", bi.contig_end),
                        Err(e) => s += &format!(" <{}>", e.name()),
                    }
                }
            }
        }
    }
    s
}

impl Monitor for Recorder {
    fn name(&self) -> &str {
        if self.name.is_empty() {
            "recorder"
        } else {
            &self.name
        }
    }

    fn subscriptions(&self) -> Subscriptions {
        self.subs
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let mut line = self.prefix();
        if self.show_port && ev.kind != EventKind::Orphan {
            match cx.addresses(ev.flow) {
                Ok((c, _)) => line += &format!("{} ", c.port()),
                Err(e) => line += &format!("<{}> ", e.name()),
            }
        }
        line += &describe(cx, ev);
        let mut lines = vec![line];
        if self.consume && ev.kind == EventKind::NewData {
            if let flowpeek::flow::EventSide::One(side) = ev.side {
                let mut buf = [0u8; 700];
                loop {
                    match cx.peek(ev.flow, side, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => self.read.borrow_mut()[side.index()].extend_from_slice(&buf[..n]),
                        Err(PeekError::Lost(n)) => lines.push(format!(
                            "{}{} peek lost {n}",
                            self.prefix(),
                            side.short_name()
                        )),
                        Err(e) => {
                            lines.push(format!(
                                "{}{} peek error {e}",
                                self.prefix(),
                                side.short_name()
                            ));
                            break;
                        }
                    }
                }
            }
        }
        if let Some(h) = self.hook.as_mut() {
            let mut extra = Vec::new();
            h(cx, ev, &mut extra);
            lines.extend(extra.into_iter().map(|l| format!("{}{l}", self.prefix())));
        }
        self.log.borrow_mut().extend(lines);
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<FlowHandle>, tag: u64) {
        let mut lines = vec![format!(
            "{}timer {tag}{}",
            self.prefix(),
            if flow.is_some() { "" } else { " core" }
        )];
        if let Some(h) = self.timer_hook.as_mut() {
            h(cx, flow, tag, &mut lines);
        }
        self.log.borrow_mut().extend(lines);
    }
}

/// The side an event concerns, when it is one side.
pub fn side_of(ev: &Event) -> Option<Side> {
    match ev.side {
        flowpeek::flow::EventSide::One(s) => Some(s),
        flowpeek::flow::EventSide::Both => None,
    }
}

// ---------------------------------------------------------------------------------------
// Driver with a fake clock
// ---------------------------------------------------------------------------------------

/// An engine, the shared log of its recorders, and a fake clock.
pub struct Net {
    pub engine: Engine,
    pub log: Log,
    /// Timestamp of the next packet (ns); each packet advances it by 1 µs.
    pub ts: u64,
}

impl Net {
    pub fn new(cfg: Config, log: &Log, monitors: Vec<Box<dyn Monitor>>) -> Net {
        Net {
            engine: Engine::new(cfg, monitors),
            log: log.clone(),
            ts: SEC,
        }
    }

    /// An engine with one recorder subscribed to everything (default config).
    pub fn simple(cfg: Config, rec: Recorder) -> Net {
        let log = rec.log.clone();
        Net::new(cfg, &log, vec![Box::new(rec)])
    }

    /// Feeds one packet (no end of batch).
    pub fn send(&mut self, seg: &Seg) {
        let frame = seg.frame();
        self.engine
            .on_frame(Some(LinkType::Ethernet), &frame, self.ts);
        self.ts += 1_000;
    }

    /// Feeds the packets as one batch, then ends the batch.
    pub fn batch(&mut self, segs: &[Seg]) {
        for s in segs {
            self.send(s);
        }
        self.engine.end_batch();
    }

    /// Feeds each packet in its own batch.
    pub fn each(&mut self, segs: &[Seg]) {
        for s in segs {
            self.batch(std::slice::from_ref(s));
        }
    }

    /// Moves the clock forward by `dt` without a packet (runs the end-of-batch work).
    pub fn advance(&mut self, dt: u64) {
        self.ts += dt;
        self.engine.advance(self.ts);
    }

    /// The lines recorded since the last call.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut *self.log.borrow_mut())
    }
}
