//! `eventlog`: one JSON line per callback, in mOS's vocabulary, exactly like the lines
//! `flowpeek events` writes (host/src/trace.rs), so a plugin trace compares line by line with
//! the built-in one and with what mOS delivers:
//!
//! ```text
//! {"uid":"16 hex","client":"CLI:PORT","server":"SVR:PORT","side":"cli","hook":"snd","event":"PKT_IN","seq":1,"flags":"SA","len":0}
//! ```
//!
//! - `uid`, `client`, `server`: the flow's id and the client's and the server's address, as
//!   in every record (docs/records.md); for `ORPHAN`, the packet's source and destination,
//!   and a uid of that packet. `null` if the host cannot say.
//! - `side`: `cli`, `svr` or `both`; `hook`: `snd`, `rcv` or `null`; `event`: `PKT_IN`,
//!   `CONN_START`, `CONN_NEW_DATA`, `REXMIT`, `TCP_STATE_CHANGE`, `ERROR`, `TIMEOUT`,
//!   `CONN_END`, `ORPHAN` (`USER` for user-defined events).
//! - `TCP_STATE_CHANGE` adds `state` (`ESTABLISHED`, ...); `CONN_NEW_DATA` adds `contig`, the
//!   side's contiguous end as a 32-bit number; `PKT_IN` adds `seq`, `flags` (in the order
//!   `FSRPAUEC`) and `len` (payload bytes); `CONN_END` adds `reason` (`fin`, `rst`, ...);
//!   `ERROR` adds `error` (`BeyondWindow`, `Overrun`, `FragmentLimit`, `OutOfBufferMemory`,
//!   `IpOverlap`).
//!
//! Like mOS's reference probe it consumes the data: on each `CONN_NEW_DATA` it reads the side
//! up to its contiguous end with `peek`, so `ERROR` means a window overrun, not a lazy reader.
//! It subscribes to every built-in event at every hook and uses the host's default buffer.
//! The line is written by `flowpeek_plugin_api::records::write_event_line`, the writer
//! `flowpeek events` uses, so the two agree by construction.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use flowpeek_plugin_api::records::{self, EventFields, EventProbe, PacketFields};
use flowpeek_plugin_api::sdk::*;

/// The monitor: formats each callback into one reused line.
pub struct EventLog {
    line: String,
    scratch: Box<[u8]>,
}

/// Answers the line's questions from the callback's context.
struct Probe<'p, 'c, 'a> {
    cx: &'p mut Cx<'a>,
    flow: Flow,
    scratch: &'c mut [u8],
}

impl EventProbe for Probe<'_, '_, '_> {
    fn addresses(&mut self) -> Option<(SocketAddr, SocketAddr)> {
        self.cx.addresses(self.flow).ok()
    }

    fn start(&mut self) -> Option<u64> {
        match self.cx.flow_times(self.flow) {
            Ok((start, _, _)) => Some(start),
            // An orphan: the time of its packet.
            Err(_) => self.cx.last_packet(self.flow).ok().map(|p| p.ts),
        }
    }

    fn new_data(&mut self, side: Side) -> u64 {
        let contig = self
            .cx
            .buffer_info(self.flow, side)
            .map_or(0, |i| i.contig_end);
        loop {
            match self.cx.peek(self.flow, side, self.scratch) {
                Ok(0) | Err(PeekError::Errno(_)) => break,
                Ok(_) | Err(PeekError::Lost(_)) => {}
            }
        }
        contig
    }

    fn last_packet(&mut self) -> Option<PacketFields> {
        self.cx.last_packet(self.flow).ok().map(|p| PacketFields {
            seq: p.seq,
            flags: p.flags,
            len: p.payload_len,
        })
    }
}

impl EventLog {
    /// Writes the line for `ev` into `self.line` (reading the data of a `NewData`).
    fn format(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let fields = EventFields {
            event: ev.kind.builtin(),
            side: ev.side,
            hook: ev.hook,
            detail: ev.detail,
        };
        let mut probe = Probe {
            cx,
            flow: ev.flow,
            scratch: &mut self.scratch,
        };
        records::write_event_line(&mut self.line, &fields, &mut probe);
    }
}

impl Monitor for EventLog {
    const NAME: &'static str = "eventlog";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        config_keys(config, &[])?;
        Ok(EventLog {
            line: String::with_capacity(256),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::all().buffers(Buffer::Default)
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        self.format(cx, ev);
        let _ = cx.emit(&self.line);
    }
}

// The macro's items are the library's entry point, not API (and carry no docs).
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::EventLog);
}
