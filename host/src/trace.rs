//! `flowpeek events`: one JSON line per callback, in mOS's vocabulary, so that a trace can
//! be compared line by line with what mOS delivers (shared/mos-events). The line is written
//! by [`flowpeek_plugin_api::records::write_event_line`], the writer the eventlog plugin
//! uses too, so that the two agree byte for byte by construction.
//!
//! Lines are handed out as the packets go ([`run_streaming`]), in callback order, never
//! held longer than one batch: memory does not grow with the capture.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use flowpeek_plugin_api::records::{self, EventFields, EventProbe, PacketFields};

use crate::flow::{
    BufferRequest, Cx, Event, EventSide, FlowHandle, Monitor, PeekError, Side, Subscriptions,
};

/// A monitor that subscribes to every event at every hook it may use and records each
/// callback as a JSON line:
/// `{"uid":"16 hex","client":"CLI:PORT","server":"SVR:PORT","side":"cli","hook":"snd","event":"PKT_IN",...}`
/// (docs/records.md).
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

/// Answers the line's questions from the engine's context.
struct Probe<'p, 'c, 'a> {
    cx: &'p mut Cx<'a>,
    flow: FlowHandle,
    scratch: &'c mut [u8],
}

impl EventProbe for Probe<'_, '_, '_> {
    fn addresses(&mut self) -> Option<(SocketAddr, SocketAddr)> {
        self.cx.addresses(self.flow).ok()
    }

    fn start(&mut self) -> Option<u64> {
        match self.cx.flow_times(self.flow) {
            Ok(t) => Some(t.start),
            // An orphan: the time of its packet.
            Err(_) => self.cx.last_packet(self.flow).ok().map(|p| p.ts),
        }
    }

    fn new_data(&mut self, side: Side) -> u64 {
        let contig = self
            .cx
            .buffer_info(self.flow, side)
            .map(|i| i.contig_end)
            .unwrap_or(0);
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
            flags: p.flags.0,
            len: p.payload_len,
        })
    }
}

impl Monitor for EventLog {
    fn name(&self) -> &str {
        "eventlog"
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::all_builtin().with_buffers(BufferRequest::Default)
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let fields = EventFields {
            event: ev.kind.builtin(),
            side: match ev.side {
                EventSide::One(s) => Some(s),
                EventSide::Both => None,
            },
            hook: ev.hook,
            detail: ev.detail,
        };
        let mut probe = Probe {
            cx,
            flow: ev.flow,
            scratch: &mut self.scratch,
        };
        let mut line = String::new();
        records::write_event_line(&mut line, &fields, &mut probe);
        self.lines.borrow_mut().push(line);
    }
}

/// What an `events` run did.
#[derive(Debug)]
pub struct EventsSummary {
    /// Lines written.
    pub lines: u64,
    /// Capture records that could not be read (every packet before them was processed).
    pub capture_error: Option<crate::io::pcap::CaptureError>,
    /// The run was stopped (signal) before the end of the capture.
    pub stopped: bool,
    /// Writing failed: the run stopped there.
    pub write_error: Option<std::io::Error>,
}

/// Runs the event logger over a capture, `batch` packets per batch; returns its lines.
pub fn run(
    path: &std::path::Path,
    cfg: crate::flow::Config,
    batch: usize,
) -> Result<Vec<String>, crate::io::pcap::CaptureError> {
    let mut out = Vec::new();
    let never = AtomicBool::new(false);
    run_streaming(path, cfg, batch, &never, |l: &str| {
        out.push(l.to_owned());
        Ok(())
    })?;
    Ok(out)
}

/// Runs the event logger over a capture, `batch` packets per batch, handing each line to
/// `emit` in callback order as the packets go (lines are held for one batch at most).
/// `stop` ends the read early; the engine still finishes, so open flows get their
/// `CONN_END`. A failing `emit` stops the run (reported in the summary).
pub fn run_streaming(
    path: &std::path::Path,
    cfg: crate::flow::Config,
    batch: usize,
    stop: &AtomicBool,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<EventsSummary, crate::io::pcap::CaptureError> {
    let capture = crate::io::pcap::CaptureFile::open(path)?;
    let lines = Rc::new(RefCell::new(Vec::new()));
    let mut engine =
        crate::flow::Engine::new(cfg, vec![Box::new(EventLog::new(Rc::clone(&lines)))]);
    let mut sum = EventsSummary {
        lines: 0,
        capture_error: None,
        stopped: false,
        write_error: None,
    };
    let mut drain = |sum: &mut EventsSummary| {
        for l in lines.borrow_mut().drain(..) {
            if sum.write_error.is_some() {
                break;
            }
            match emit(&l) {
                Ok(()) => sum.lines += 1,
                Err(e) => sum.write_error = Some(e),
            }
        }
    };
    let mut n = 0;
    for p in capture.packets() {
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                sum.capture_error = Some(e);
                break;
            }
        };
        engine.on_frame(p.link, p.data, p.ts_nanos);
        n += 1;
        if n % batch.max(1) == 0 {
            engine.end_batch();
            drain(&mut sum);
            if sum.write_error.is_some() {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                sum.stopped = true;
                break;
            }
        }
    }
    engine.finish(crate::flow::EndReason::Eof);
    drop(engine);
    drain(&mut sum);
    Ok(sum)
}
