//! `template`: counts each connection's payload bytes per direction and records one line per
//! connection when it ends:
//!
//! ```text
//! {"uid":"16 hex","client":"10.0.0.1:5555","server":"10.0.0.2:80","c2s":120,"s2c":5000,"close":"fin","head":"GET / HTTP/1.1"}
//! ```
//!
//! `uid`, `client` and `server` open every record about a flow, written by
//! `records::push_flow_fields` (docs/records.md). `head` is the first line the client sent
//! (up to 64 bytes), read with `ppeek`, as a JSON string (`records::push_json_str` escapes
//! it).
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use flowpeek_plugin_api::records::{push_flow_fields, push_json_str};
use flowpeek_plugin_api::sdk::*;

/// Set in a flow's user value when its first side has ended (each side gets a `ConnEnd`).
const FIRST_SIDE_ENDED: u64 = 1 << 63;

/// The monitor. One instance per core; callbacks of an instance never run concurrently.
pub struct Template {
    /// Reused for every `ppeek`: no allocation per packet.
    head: [u8; 64],
    /// The record being written, reused.
    line: String,
}

impl Monitor for Template {
    const NAME: &'static str = "template";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, _config: &str) -> Result<Self, String> {
        // `_config` is the text of template.toml next to the plugin (empty if none).
        Ok(Template {
            head: [0; 64],
            line: String::with_capacity(256),
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::ConnEnd, Hook::Snd)
            // A small buffer per side: enough to ppeek the first line.
            .buffers(Buffer::AtLeast(4096))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        if ev.kind != EventKind::ConnEnd {
            return;
        }
        let seen = cx.user_value(ev.flow).unwrap_or(0);
        if seen & FIRST_SIDE_ENDED == 0 {
            let _ = cx.set_user_value(ev.flow, FIRST_SIDE_ENDED);
            return;
        }
        let (Ok((client, server)), Ok((start, _, _))) =
            (cx.addresses(ev.flow), cx.flow_times(ev.flow))
        else {
            return;
        };
        // The Server side's buffer holds what the client sent; contig_end counts the stream.
        let bytes = |s: Side| cx.buffer_info(ev.flow, s).map_or(0, |i| i.contig_end);
        let (c2s, s2c) = (bytes(Side::Server), bytes(Side::Client));
        let n = cx
            .ppeek(ev.flow, Side::Server, &mut self.head, 0)
            .unwrap_or(0);
        let first = &self.head[..n.min(self.head.len())];
        let head = first
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or(&[]);
        let close = cx.end_reason(ev.flow).map_or("?", EndReason::name);
        let line = &mut self.line;
        line.clear();
        line.push('{');
        push_flow_fields(line, Some((client, server, start)));
        let _ = write!(line, r#","c2s":{c2s},"s2c":{s2c},"close":"{close}","head":"#);
        push_json_str(line, &String::from_utf8_lossy(head));
        line.push('}');
        let _ = cx.emit(line);
    }
}

// The macro's items are the library's entry point, not API.
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::Template);
}
