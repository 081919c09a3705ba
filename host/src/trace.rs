//! `flowpeek events`: one JSON line per callback, in mOS's vocabulary, so that a trace can
//! be compared line by line with what mOS delivers (shared/mos-events).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

use crate::flow::{
    BufferRequest, Cx, Detail, Event, EventKind, EventSide, Monitor, PeekError, Subscriptions,
};

/// A monitor that subscribes to every event at every hook it may use and records each
/// callback as a JSON line:
/// `{"flow":"CLI:PORT>SVR:PORT","side":"cli","hook":"snd","event":"PKT_IN",...}`.
///
/// Like mOS's reference probe it consumes the data: on each `NewData` it reads the side up
/// to the contiguous end with `peek`, so `Error` means a window overrun, not a lazy reader.
pub struct EventLog {
    lines: Rc<RefCell<Vec<String>>>,
    scratch: Vec<u8>,
}

impl EventLog {
    /// A logger appending its lines to `lines`.
    pub fn new(lines: Rc<RefCell<Vec<String>>>) -> EventLog {
        EventLog {
            lines,
            scratch: vec![0; 64 * 1024],
        }
    }
}

/// Flags in mOS's print order: F S R P A U E C.
pub fn flag_string(flags: u8) -> String {
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
    ORDER
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, c)| c)
        .collect()
}

impl Monitor for EventLog {
    fn name(&self) -> &str {
        "eventlog"
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::all_builtin().with_buffers(BufferRequest::Default)
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let flow = match cx.addresses(ev.flow) {
            Ok((a, b)) => format!("{a}>{b}"),
            Err(_) => "?".to_string(),
        };
        let mut line = format!(
            r#"{{"flow":"{flow}","side":"{}","hook":"{}","event":"{}""#,
            ev.side.short_name(),
            ev.hook.short_name(),
            ev.kind.mos_name()
        );
        match (ev.kind, ev.detail, ev.side) {
            (EventKind::TcpStateChange, Detail::State(st), _) => {
                let _ = write!(line, r#","state":"{}""#, st.name());
            }
            (EventKind::NewData, _, EventSide::One(side)) => {
                let contig = cx
                    .buffer_info(ev.flow, side)
                    .map(|i| i.contig_end)
                    .unwrap_or(0);
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
                    let _ = write!(
                        line,
                        r#","seq":{},"flags":"{}","len":{}"#,
                        p.seq,
                        flag_string(p.flags.0),
                        p.payload_len
                    );
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
        self.lines.borrow_mut().push(line);
    }
}

/// Runs the event logger over a capture, `batch` packets per batch; returns its lines.
pub fn run(
    path: &std::path::Path,
    cfg: crate::flow::Config,
    batch: usize,
) -> Result<Vec<String>, crate::io::pcap::CaptureError> {
    let capture = crate::io::pcap::CaptureFile::open(path)?;
    let lines = Rc::new(RefCell::new(Vec::new()));
    let mut engine =
        crate::flow::Engine::new(cfg, vec![Box::new(EventLog::new(Rc::clone(&lines)))]);
    let mut n = 0;
    for p in capture.packets() {
        let Ok(p) = p else { break };
        engine.on_frame(p.link, p.data, p.ts_nanos);
        n += 1;
        if n % batch.max(1) == 0 {
            engine.end_batch();
        }
    }
    engine.finish(crate::flow::EndReason::Eof);
    drop(engine);
    let out = std::mem::take(&mut *lines.borrow_mut());
    Ok(out)
}
