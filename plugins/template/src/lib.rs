//! `template`: counts each connection's payload bytes per direction and records one line per
//! connection when it ends:
//!
//! ```text
//! {"uid":"16 hex","client":"10.0.0.1:5555","server":"10.0.0.2:80","c2s":120,"s2c":5000,"lost":0,"close":"fin","head":"GET / HTTP/1.1"}
//! ```
//!
//! `uid`, `client` and `server` open every record about a flow, written by
//! `records::push_flow_fields` (docs/records.md); `head` is a JSON string
//! (`records::push_json_str` escapes it).
//! `c2s` and `s2c` are the bytes it read in order, `lost` the bytes it could not read (gaps
//! never filled), `head` the first line the client sent (up to 64 bytes). It reads every byte
//! once, where it lies, with the consuming `cx.read` on each `NewData` (no copy, no bytes
//! left unread: the host never has to discard what it has not delivered).
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use flowpeek_plugin_api::records::{push_flow_fields, push_json_str};
use flowpeek_plugin_api::sdk::*;

/// Flow flag (the high bits of the flow's user value, kept by `FlowSlab`): its first side
/// has ended (each side gets its own `ConnEnd`).
const FIRST_SIDE_ENDED: u16 = 1;

/// What one connection has shown so far.
#[derive(Default)]
struct Conn {
    /// Bytes read, indexed by the side whose buffer held them (`Client`: server to client).
    read: [u64; 2],
    /// Bytes lost before they could be read.
    lost: u64,
    /// The client's first bytes, until the end of the first line or 64 bytes.
    head: Vec<u8>,
    head_done: bool,
}

/// The monitor. One instance per core; callbacks of an instance never run concurrently.
#[derive(Default)]
pub struct Template {
    /// Per-flow state, found through the flow's user value (no hashing).
    conns: FlowSlab<Conn>,
    /// The record being written, reused.
    line: String,
}

fn index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

impl Template {
    /// Reads everything new on `side` of the flow in slot `idx`.
    fn drain(&mut self, cx: &mut Cx<'_>, flow: Flow, side: Side, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        loop {
            match cx.read(flow, side, usize::MAX) {
                Ok((a, b)) if a.is_empty() && b.is_empty() => return,
                Ok((a, b)) => {
                    c.read[index(side)] += (a.len() + b.len()) as u64;
                    // The Server side's buffer holds what the client sent.
                    if side == Side::Server && !c.head_done {
                        for &byte in a.iter().chain(b) {
                            if byte == b'\r' || byte == b'\n' || c.head.len() == 64 {
                                c.head_done = true;
                                break;
                            }
                            c.head.push(byte);
                        }
                    }
                }
                Err(PeekError::Lost(n)) => c.lost += n,
                // No buffer on that side, or the side is not open yet.
                Err(PeekError::Errno(_)) => return,
            }
        }
    }
}

impl Monitor for Template {
    const NAME: &'static str = "template";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        // `config` is the text of template.toml next to the plugin (empty if none).
        config_keys(config, &[])?;
        Ok(Template::default())
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with(EventKind::ConnEnd, Hook::Snd)
            // We read on every NewData, so in-order bytes never wait long; the buffer must
            // still hold what arrives beyond a hole until the hole is filled (reordering on
            // the tap): 256 KiB per side, as `flowpeek streams`.
            .buffers(Buffer::AtLeast(256 * 1024))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let Some(idx) = self.conns.entry(cx, ev.flow, |_| Conn::default()) else {
            return;
        };
        match ev.kind {
            EventKind::NewData => {
                if let Some(side) = ev.side {
                    self.drain(cx, ev.flow, side, idx);
                }
            }
            EventKind::ConnEnd => {
                for side in [Side::Client, Side::Server] {
                    self.drain(cx, ev.flow, side, idx);
                }
                let flags = self.conns.flags(cx, ev.flow);
                if flags & FIRST_SIDE_ENDED == 0 {
                    self.conns.set_flags(cx, ev.flow, flags | FIRST_SIDE_ENDED);
                    return;
                }
                let Some(c) = self.conns.release(idx) else {
                    return;
                };
                let (Ok((client, server)), Ok((start, _, _))) =
                    (cx.addresses(ev.flow), cx.flow_times(ev.flow))
                else {
                    return;
                };
                let close = cx.end_reason(ev.flow).map_or("?", EndReason::name);
                let (c2s, s2c) = (c.read[1], c.read[0]);
                let line = &mut self.line;
                line.clear();
                line.push('{');
                push_flow_fields(line, Some((client, server, start)));
                let _ = write!(
                    line,
                    r#","c2s":{c2s},"s2c":{s2c},"lost":{},"close":"{close}","head":"#,
                    c.lost
                );
                push_json_str(line, &String::from_utf8_lossy(&c.head));
                line.push('}');
                let _ = cx.emit(line);
            }
            _ => {}
        }
    }
}

// The macro's items are the library's entry point, not API.
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::Template);
}
