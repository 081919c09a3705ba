//! `flowpeek follow`: one connection's bytes, both directions interleaved in the order they
//! became readable, the way `tshark -z follow,tcp` prints them.
//!
//! A [`Follower`] monitor watches the engine's flows for the one [`ConnSelector`] names and,
//! on each of its `NewData`, reads the new bytes of that side with `peek` (first copy wins,
//! gaps skipped and reported, as everywhere in flowpeek). The engine runs one packet per batch,
//! so each chunk is what one packet made readable. The run ends when the connection has ended.
//! [`Printer`] writes the chunks as text (`ascii`), a hex dump (`hex`) or hex lines (`raw`),
//! tshark's three layouts: client-to-server chunks at the margin, server-to-client chunks
//! indented by a tab.
//!
//! Must not: hold more than one packet's worth of chunks.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use flowpeek_plugin_api::records;

use crate::flow::{
    BufferRequest, Config, Cx, Detail, EndReason, Engine, Event, EventKind, EventSide, FlowHandle,
    Hook, Monitor, PeekError, Side, Subscriptions,
};
use crate::io::pcap::{CaptureError, CaptureFile};

/// Which connection to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnSelector {
    /// The N-th connection in order of first packet (0-based): the N-th record of
    /// `flowpeek streams`.
    Number(u64),
    /// The connection with this `uid` (16 hex digits).
    Uid(u64),
    /// The first connection between these endpoints, either way round.
    Endpoints(SocketAddr, SocketAddr),
}

impl std::str::FromStr for ConnSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<ConnSelector, String> {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return u64::from_str_radix(s, 16)
                .map(ConnSelector::Uid)
                .map_err(|e| e.to_string());
        }
        if let Ok(n) = s.parse::<u64>() {
            return Ok(ConnSelector::Number(n));
        }
        let bad = || {
            format!(
                "{s:?}: give a connection number (0 for the first, as `streams` lists them), a uid (16 hex digits) or CLIENT-SERVER (10.0.0.1:5555-10.0.0.2:80, [::1]:5555-[::1]:80)"
            )
        };
        // IPv6 addresses are bracketed, so the separator is the '-' after a port.
        let (a, b) = s
            .match_indices('-')
            .map(|(i, _)| (&s[..i], &s[i + 1..]))
            .find(|(a, b)| a.parse::<SocketAddr>().is_ok() && b.parse::<SocketAddr>().is_ok())
            .ok_or_else(bad)?;
        Ok(ConnSelector::Endpoints(
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
        ))
    }
}

/// What the follower saw of its connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// The connection was found.
    Start {
        /// Its client.
        client: SocketAddr,
        /// Its server.
        server: SocketAddr,
        /// Its uid.
        uid: u64,
        /// Its number (order of first packet).
        number: u64,
    },
    /// Bytes that became readable.
    Data {
        /// Client to server.
        c2s: bool,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Bytes never seen (skipped).
    Gap {
        /// Client to server.
        c2s: bool,
        /// How many.
        len: u64,
    },
    /// The connection ended.
    End {
        /// How (`fin`, `rst`, `timeout`, `eof`, `evicted`).
        close: &'static str,
    },
}

/// The flow's user value: not looked at yet, the one followed, another one.
const OTHER: u64 = 2;
const TARGET: u64 = 1;

/// The monitor: finds the selected connection and reads its bytes.
pub struct Follower {
    sel: ConnSelector,
    found: bool,
    ended_sides: u8,
    scratch: Box<[u8]>,
    out: Rc<RefCell<Vec<Item>>>,
    buffer: u32,
}

impl Follower {
    /// A follower of `sel`, appending to `out`, asking `buffer` bytes per side.
    pub fn new(sel: ConnSelector, buffer: u32, out: Rc<RefCell<Vec<Item>>>) -> Follower {
        Follower {
            sel,
            found: false,
            ended_sides: 0,
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            out,
            buffer,
        }
    }

    /// Whether `h` is the one; the first match wins.
    fn is_target(&mut self, cx: &mut Cx<'_>, h: FlowHandle) -> bool {
        match cx.user_value(h) {
            Ok(TARGET) => return true,
            Ok(OTHER) | Err(_) => return false,
            Ok(_) => {}
        }
        let (Ok((client, server)), Ok(t)) = (cx.addresses(h), cx.flow_times(h)) else {
            return false;
        };
        let uid = records::flow_uid(client, server, t.start);
        let hit = !self.found
            && match self.sel {
                ConnSelector::Number(n) => t.serial == n,
                ConnSelector::Uid(u) => uid == u,
                ConnSelector::Endpoints(a, b) => {
                    (a, b) == (client, server) || (b, a) == (client, server)
                }
            };
        let _ = cx.set_user_value(h, if hit { TARGET } else { OTHER });
        if hit {
            self.found = true;
            self.out.borrow_mut().push(Item::Start {
                client,
                server,
                uid,
                number: t.serial,
            });
        }
        hit
    }

    fn drain(&mut self, cx: &mut Cx<'_>, h: FlowHandle, side: Side) {
        // The server side's buffer holds what the client sent.
        let c2s = side == Side::Server;
        loop {
            match cx.peek(h, side, &mut self.scratch) {
                Ok(0) | Err(PeekError::Errno(_)) => break,
                Ok(n) => self.out.borrow_mut().push(Item::Data {
                    c2s,
                    bytes: self.scratch[..n].to_vec(),
                }),
                Err(PeekError::Lost(len)) => self.out.borrow_mut().push(Item::Gap { c2s, len }),
            }
        }
    }
}

impl Monitor for Follower {
    fn name(&self) -> &str {
        "follow"
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with(EventKind::ConnEnd, Hook::Snd)
            .with_buffers(BufferRequest::AtLeast(self.buffer))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let EventSide::One(side) = ev.side else {
            return;
        };
        if !self.is_target(cx, ev.flow) {
            return;
        }
        self.drain(cx, ev.flow, side);
        if let (EventKind::ConnEnd, Detail::End(reason)) = (ev.kind, ev.detail) {
            self.ended_sides += 1;
            if self.ended_sides == 2 {
                self.out.borrow_mut().push(Item::End {
                    close: records::close_name(Some(reason)),
                });
            }
        }
    }
}

/// What a `follow` run did.
#[derive(Debug, Default)]
pub struct FollowSummary {
    /// The connection was found.
    pub found: bool,
    /// Capture records that could not be read (every packet before them was processed).
    pub capture_error: Option<CaptureError>,
    /// Stopped by a signal.
    pub stopped: bool,
}

/// Follows the connection `sel` names through the capture at `path`, handing each item to
/// `emit` as the packets go. Reading stops once the connection has ended. A failing `emit`
/// stops the run with its error.
pub fn run(
    path: &std::path::Path,
    cfg: Config,
    sel: ConnSelector,
    stop: &AtomicBool,
    mut emit: impl FnMut(&Item) -> io::Result<()>,
) -> Result<Result<FollowSummary, io::Error>, CaptureError> {
    let capture = CaptureFile::open(path)?;
    let items = Rc::new(RefCell::new(Vec::new()));
    let buffer = cfg.buffer_capacity;
    let follower = Follower::new(sel, buffer, Rc::clone(&items));
    let mut engine = Engine::new(cfg, vec![Box::new(follower)]);
    let mut sum = FollowSummary::default();
    let mut ended = false;
    let mut pass = |sum: &mut FollowSummary, ended: &mut bool| -> io::Result<()> {
        for it in items.borrow_mut().drain(..) {
            sum.found |= matches!(it, Item::Start { .. });
            *ended |= matches!(it, Item::End { .. });
            emit(&it)?;
        }
        Ok(())
    };
    for p in capture.packets() {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                sum.capture_error = Some(e);
                break;
            }
        };
        engine.on_frame(p.link, p.data, p.ts_nanos);
        engine.end_batch();
        if let Err(e) = pass(&mut sum, &mut ended) {
            return Ok(Err(e));
        }
        if ended {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            sum.stopped = true;
            break;
        }
    }
    engine.finish(EndReason::Eof);
    drop(engine);
    if let Err(e) = pass(&mut sum, &mut ended) {
        return Ok(Err(e));
    }
    Ok(Ok(sum))
}

/// How `follow` prints the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Each chunk's length, then its bytes as text (non-printable bytes as `.`).
    #[default]
    Ascii,
    /// A hex dump per chunk: offset in the direction, 16 bytes, their text.
    Hex,
    /// Each chunk as one line of hex digits.
    Raw,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Ascii => "ascii",
            Format::Hex => "hex",
            Format::Raw => "raw",
        }
    }
}

/// Writes items in tshark's follow layout.
#[derive(Debug)]
pub struct Printer {
    format: Format,
    /// Bytes printed so far per direction (c2s, s2c): the hex dump's offsets.
    offset: [u64; 2],
    line: String,
}

/// The rule above and below the output.
const RULE: &str = "===================================================================";

impl Printer {
    /// A printer in `format`.
    pub fn new(format: Format) -> Printer {
        Printer {
            format,
            offset: [0; 2],
            line: String::new(),
        }
    }

    /// Writes one item.
    pub fn item(&mut self, out: &mut impl Write, it: &Item) -> io::Result<()> {
        match it {
            Item::Start {
                client,
                server,
                uid,
                number,
            } => {
                writeln!(out, "\n{RULE}")?;
                writeln!(out, "Follow: tcp,{}", self.format.name())?;
                writeln!(out, "Connection: {number} (uid {uid:016x})")?;
                writeln!(out, "Node 0: {client}")?;
                writeln!(out, "Node 1: {server}")
            }
            Item::Data { c2s, bytes } => self.data(out, *c2s, bytes),
            Item::Gap { c2s, len } => {
                if self.format == Format::Raw {
                    return Ok(());
                }
                let indent = if *c2s { "" } else { "\t" };
                writeln!(out, "{indent}[{len} bytes missing]")
            }
            Item::End { close } => {
                if self.format != Format::Raw {
                    writeln!(out, "[closed: {close}]")?;
                }
                writeln!(out, "{RULE}")
            }
        }
    }

    fn data(&mut self, out: &mut impl Write, c2s: bool, bytes: &[u8]) -> io::Result<()> {
        let indent = if c2s { "" } else { "\t" };
        let l = &mut self.line;
        l.clear();
        match self.format {
            Format::Ascii => {
                let _ = writeln!(l, "{indent}{}", bytes.len());
                for &b in bytes {
                    l.push(
                        if b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b) {
                            char::from(b)
                        } else {
                            '.'
                        },
                    );
                }
                l.push('\n');
            }
            Format::Raw => {
                l.push_str(indent);
                for b in bytes {
                    let _ = write!(l, "{b:02x}");
                }
                l.push('\n');
            }
            Format::Hex => {
                let off = &mut self.offset[usize::from(!c2s)];
                for row in bytes.chunks(16) {
                    let _ = write!(l, "{indent}{:08x}  ", *off);
                    for i in 0..16 {
                        match row.get(i) {
                            Some(b) => {
                                let _ = write!(l, "{b:02x} ");
                            }
                            None => l.push_str("   "),
                        }
                        if i == 7 {
                            l.push(' ');
                        }
                    }
                    l.push(' ');
                    for (i, &b) in row.iter().enumerate() {
                        if i == 8 {
                            l.push(' ');
                        }
                        l.push(if (0x20..0x7f).contains(&b) {
                            char::from(b)
                        } else {
                            '.'
                        });
                    }
                    l.push('\n');
                    *off += row.len() as u64;
                }
            }
        }
        out.write_all(l.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!("3".parse(), Ok(ConnSelector::Number(3)));
        assert_eq!("00000000000000ff".parse(), Ok(ConnSelector::Uid(0xff)));
        assert_eq!(
            "10.0.0.1:5555-10.0.0.2:80".parse(),
            Ok(ConnSelector::Endpoints(
                "10.0.0.1:5555".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap()
            ))
        );
        assert_eq!(
            "[::1]:5555-[2001:db8::1]:80".parse(),
            Ok(ConnSelector::Endpoints(
                "[::1]:5555".parse().unwrap(),
                "[2001:db8::1]:80".parse().unwrap()
            ))
        );
        for bad in ["", "x", "10.0.0.1-10.0.0.2", "10.0.0.1:1-", "-1"] {
            assert!(bad.parse::<ConnSelector>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn layouts() {
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Hex);
        p.item(
            &mut out,
            &Item::Data {
                c2s: false,
                bytes: b"0123456789abcdefXY\x00".to_vec(),
            },
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\t00000000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  01234567 89abcdef\n\
             \t00000010  58 59 00                                          XY.\n"
        );
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Raw);
        for (c2s, b) in [(true, &b"\x01\xff"[..]), (false, b"A")] {
            p.item(
                &mut out,
                &Item::Data {
                    c2s,
                    bytes: b.to_vec(),
                },
            )
            .unwrap();
        }
        p.item(&mut out, &Item::Gap { c2s: true, len: 5 }).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "01ff\n\t41\n");
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Ascii);
        p.item(
            &mut out,
            &Item::Data {
                c2s: true,
                bytes: b"GET /\r\n\x00".to_vec(),
            },
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "8\nGET /\r\n.\n");
    }
}
