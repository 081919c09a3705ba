//! `eventlog`: one JSON line per callback, in mOS's vocabulary, exactly like the lines
//! `flowpeek events` writes (host/src/trace.rs), so a plugin trace compares line by line with
//! the built-in one and with what mOS delivers:
//!
//! ```text
//! {"flow":"CLI:PORT>SVR:PORT","side":"cli","hook":"snd","event":"PKT_IN","seq":1,"flags":"SA","len":0}
//! ```
//!
//! - `flow`: the client's and the server's address (for `ORPHAN`, the packet's source and
//!   destination); `?` if the host cannot say.
//! - `side`: `cli`, `svr` or `both`; `hook`: `snd`, `rcv` or `null`; `event`: `PKT_IN`,
//!   `CONN_START`, `CONN_NEW_DATA`, `REXMIT`, `TCP_STATE_CHANGE`, `ERROR`, `TIMEOUT`,
//!   `CONN_END`, `ORPHAN` (`USER` for user-defined events).
//! - `TCP_STATE_CHANGE` adds `state` (`ESTABLISHED`, ...); `CONN_NEW_DATA` adds `contig`, the
//!   side's contiguous end as a 32-bit number; `PKT_IN` adds `seq`, `flags` (in the order
//!   `FSRPAUEC`) and `len` (payload bytes); `CONN_END` adds `reason` (`fin`, `rst`, ...);
//!   `ERROR` adds `error` (`BeyondWindow`, `Overrun`, `FragmentLimit`, `OutOfBufferMemory`).
//!
//! Like mOS's reference probe it consumes the data: on each `CONN_NEW_DATA` it reads the side
//! up to its contiguous end with `peek`, so `ERROR` means a window overrun, not a lazy reader.
//! It subscribes to every built-in event at every hook and uses the host's default buffer.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use flowpeek_plugin_api::sdk::*;

/// The monitor: formats each callback into one reused line.
pub struct EventLog {
    line: String,
    scratch: Box<[u8]>,
}

/// TCP flags in mOS's print order: F S R P A U E C.
fn push_flags(out: &mut String, flags: u8) {
    const ORDER: [(u8, char); 8] = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, 'A'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'C'),
    ];
    for (bit, c) in ORDER {
        if flags & bit != 0 {
            out.push(c);
        }
    }
}

fn side_name(side: Option<Side>) -> &'static str {
    side.map_or("both", Side::short_name)
}

impl EventLog {
    /// Writes the line for `ev` into `self.line` (reading the data of a `NewData`).
    fn format(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let line = &mut self.line;
        line.clear();
        line.push_str(r#"{"flow":""#);
        match cx.addresses(ev.flow) {
            Ok((a, b)) => {
                let _ = write!(line, "{a}>{b}");
            }
            Err(_) => line.push('?'),
        }
        let _ = write!(
            line,
            r#"","side":"{}","hook":"{}","event":"{}""#,
            side_name(ev.side),
            ev.hook.short_name(),
            ev.kind.mos_name()
        );
        match (ev.kind, ev.detail, ev.side) {
            (EventKind::TcpStateChange, Detail::State(st), _) => {
                let _ = write!(line, r#","state":"{}""#, st.name());
            }
            (EventKind::NewData, _, Some(side)) => {
                let contig = cx.buffer_info(ev.flow, side).map_or(0, |i| i.contig_end);
                // mOS prints a 32-bit sequence-space position.
                let _ = write!(line, r#","contig":{}"#, contig as u32);
                loop {
                    match cx.peek(ev.flow, side, &mut self.scratch) {
                        Ok(0) | Err(PeekError::Errno(_)) => break,
                        Ok(_) | Err(PeekError::Lost(_)) => {}
                    }
                }
            }
            (EventKind::PktIn, _, _) => {
                if let Ok(p) = cx.last_packet(ev.flow) {
                    let _ = write!(line, r#","seq":{},"flags":""#, p.seq);
                    push_flags(line, p.flags);
                    let _ = write!(line, r#"","len":{}"#, p.payload_len);
                }
            }
            (EventKind::ConnEnd, Detail::End(r), _) => {
                let _ = write!(line, r#","reason":"{}""#, r.name());
            }
            (EventKind::Error, Detail::Error(e), _) => {
                let _ = write!(line, r#","error":"{e:?}""#);
            }
            _ => {}
        }
        line.push('}');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_mos_order() {
        let mut s = String::new();
        push_flags(&mut s, 0x12);
        assert_eq!(s, "SA");
        s.clear();
        push_flags(&mut s, 0xff);
        assert_eq!(s, "FSRPAUEC");
        s.clear();
        push_flags(&mut s, 0);
        assert_eq!(s, "");
    }

    #[test]
    fn sides() {
        assert_eq!(side_name(None), "both");
        assert_eq!(side_name(Some(Side::Client)), "cli");
        assert_eq!(side_name(Some(Side::Server)), "svr");
    }
}
