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
    BufferRequest, Cx, Event, EventKind, EventSide, FlowHandle, Hook, Monitor, PeekError, Side,
    Subscriptions,
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
    /// Per line (flow order only): its flow's engine serial (`None`: no flow) and whether
    /// it is the flow's last line.
    flows: Option<Rc<RefCell<Vec<LineFlow>>>>,
}

/// Which flow a line is about ([`EventLog::with_flows`]).
#[derive(Clone, Copy, Debug)]
pub struct LineFlow {
    /// The engine's serial of the flow (`None`: a packet of no flow).
    pub serial: Option<u64>,
    /// The flow's last line: its second side's `CONN_END` at the send hook, the last event
    /// the engine delivers for a flow.
    pub last: bool,
}

/// Set in a flow's user value once its first side's `CONN_END` (send hook) was logged.
const FIRST_SIDE_ENDED: u64 = 1;

impl EventLog {
    /// A logger appending its lines to `lines`.
    pub fn new(lines: Rc<RefCell<Vec<String>>>) -> EventLog {
        EventLog {
            lines,
            scratch: vec![0; 64 * 1024],
            flows: None,
        }
    }

    /// As [`EventLog::new`], also appending to `flows`, per line, which flow it is about.
    pub fn with_flows(
        lines: Rc<RefCell<Vec<String>>>,
        flows: Rc<RefCell<Vec<LineFlow>>>,
    ) -> EventLog {
        EventLog {
            flows: Some(flows),
            ..EventLog::new(lines)
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
        if let Some(flows) = &self.flows {
            let serial = cx.flow_times(ev.flow).ok().map(|t| t.serial);
            let mut last = false;
            if serial.is_some() && ev.kind == EventKind::ConnEnd && ev.hook == Hook::Snd {
                let v = cx.user_value(ev.flow).unwrap_or(0);
                last = v & FIRST_SIDE_ENDED != 0;
                let _ = cx.set_user_value(ev.flow, v | FIRST_SIDE_ENDED);
            }
            flows.borrow_mut().push(LineFlow { serial, last });
        }
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

/// The order of `events` lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Callback order, as one engine delivers them (one core only).
    Callback,
    /// Flow by flow in order of the flows' first packets, each flow's lines in callback
    /// order; lines of no flow at the place of their packet. The same for any number of
    /// cores.
    Flow,
}

/// Lines the flow-order merger holds, at most, waiting for an earlier flow to end; past
/// it, the earliest flow's lines so far go out (and its later lines when it ends).
pub const FLOW_ORDER_WINDOW: usize = 1 << 20;

/// What a core sends the merger.
struct CoreLines {
    /// (key, line, last line of its flow).
    lines: Vec<(u64, String, bool)>,
    /// No line still to come from this core has a smaller key.
    watermark: u64,
    core: usize,
}

/// Runs the event logger over `inputs` (read one after the other, sequentially:
/// [`crate::io::stream`]) on `cores` cores, `batch` packets per batch, handing each line
/// to `emit` in `order` (`Callback` runs one core). Every core sees every packet and
/// keeps its shard's flows, closing its batches at the same packets, as `streams` does.
/// `stop` ends the read early; the engines still finish. A failing `emit` stops the run.
pub fn run_inputs(
    inputs: &[crate::io::stream::InputSpec],
    cfg: crate::flow::Config,
    cores: usize,
    batch: usize,
    order: Order,
    stop: &AtomicBool,
    mut emit: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<EventsSummary, crate::io::pcap::CaptureError> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    let cores = if order == Order::Callback {
        1
    } else {
        cores.max(1)
    };
    let batch = batch.max(1) as u64;
    for spec in inputs {
        crate::streams::probe(spec)?;
    }
    let base_cfg = crate::flow::Config {
        replay_cores: if cores > 1 { cores } else { 0 },
        ..cfg
    };
    let halt = AtomicBool::new(false);
    let skipped = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::sync_channel::<CoreLines>(4 * cores);
    let senders: Vec<Mutex<Option<std::sync::mpsc::SyncSender<CoreLines>>>> =
        (0..cores).map(|_| Mutex::new(Some(tx.clone()))).collect();
    drop(tx);
    let reader = crate::streams::routed_reader(inputs, cores, &base_cfg);
    let body = |core: usize, feed: crate::io::stream::ChunkFeed| {
        let tx = senders[core].lock().ok().and_then(|mut s| s.take());
        let lines = Rc::new(RefCell::new(Vec::new()));
        let flows = Rc::new(RefCell::new(Vec::new()));
        let cfg = crate::flow::Config {
            core: core as u8,
            ..base_cfg.clone()
        };
        let log = EventLog::with_flows(Rc::clone(&lines), Rc::clone(&flows));
        let mut engine = crate::flow::Engine::new(cfg, vec![Box::new(log)]);
        // Flow keys: 2 * the index of the packet that created the flow; a line of no
        // flow: 2 * its packet's index + 1 (after a flow that packet created).
        let mut open: BTreeMap<u64, u64> = BTreeMap::new();
        let mut created = 0u64;
        let mut out: Vec<(u64, String, bool)> = Vec::new();
        let take = |open: &mut BTreeMap<u64, u64>, g: u64, out: &mut Vec<(u64, String, bool)>| {
            let mut ls = lines.borrow_mut();
            if ls.is_empty() {
                return;
            }
            let mut fs = flows.borrow_mut();
            for (line, f) in ls.drain(..).zip(fs.drain(..)) {
                let key = match f.serial.and_then(|s| open.get(&s).copied()) {
                    Some(at) => 2 * at,
                    None => 2 * g + 1,
                };
                if f.last {
                    if let Some(s) = f.serial {
                        open.remove(&s);
                    }
                }
                out.push((key, line, f.last));
            }
        };
        let mut gone = false;
        let mut g = 0u64;
        feed.for_each(|chunk| {
            if !gone && (stop.load(Ordering::Relaxed) || halt.load(Ordering::Relaxed)) {
                // Stopped: the chunks already read are not processed.
                gone = true;
                skipped.store(true, Ordering::Relaxed);
            }
            if gone {
                return;
            }
            for (k, p) in chunk.packets.iter().enumerate() {
                g = chunk.first + k as u64;
                let frame = chunk.frame(p);
                if cores == 1 {
                    engine.on_frame(p.link, frame, p.ts);
                } else {
                    engine.on_routed(chunk.route(k), core, cores, p.link, frame, p.ts);
                }
                let now_created = engine.stats().flows_created;
                while created < now_created {
                    open.insert(created, g);
                    created += 1;
                }
                take(&mut open, g, &mut out);
                if g % batch == batch - 1 {
                    engine.end_batch();
                    take(&mut open, g, &mut out);
                }
            }
            let next = chunk.first + chunk.packets.len() as u64;
            let msg = CoreLines {
                lines: std::mem::take(&mut out),
                watermark: open.first_key_value().map_or(2 * next, |(_, &at)| 2 * at),
                core,
            };
            gone = tx.as_ref().map_or(true, |tx| tx.send(msg).is_err());
        });
        engine.finish(crate::flow::EndReason::Eof);
        take(&mut open, g, &mut out);
        if let Some(tx) = &tx {
            let _ = tx.send(CoreLines {
                lines: out,
                watermark: u64::MAX,
                core,
            });
        }
    };
    let merge = |_: &crate::io::stream::Progress| {
        let mut sum = EventsSummary {
            lines: 0,
            capture_error: None,
            stopped: false,
            write_error: None,
        };
        let mut marks = vec![0u64; cores];
        let mut finals = 0;
        // Flow order: key -> the flow's lines so far.
        let mut waiting: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut held = 0usize;
        let mut out = |l: &str, sum: &mut EventsSummary| {
            if sum.write_error.is_none() {
                match emit(l) {
                    Ok(()) => sum.lines += 1,
                    Err(e) => sum.write_error = Some(e),
                }
            }
        };
        loop {
            let msg = match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(m) => m,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::Relaxed) {
                        halt.store(true, Ordering::Relaxed);
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if stop.load(Ordering::Relaxed) {
                halt.store(true, Ordering::Relaxed);
            }
            marks[msg.core] = msg.watermark;
            finals += usize::from(msg.watermark == u64::MAX);
            if order == Order::Callback {
                for (_, l, _) in &msg.lines {
                    out(l, &mut sum);
                }
            } else {
                for (key, l, _) in msg.lines {
                    waiting.entry(key).or_default().push(l);
                    held += 1;
                }
                let mark = marks.iter().copied().min().unwrap_or(0);
                while let Some(mut e) = waiting.first_entry() {
                    if *e.key() >= mark && held <= FLOW_ORDER_WINDOW {
                        break;
                    }
                    let complete = *e.key() < mark;
                    let ls = std::mem::take(e.get_mut());
                    if complete {
                        e.remove();
                    }
                    held -= ls.len();
                    for l in &ls {
                        out(l, &mut sum);
                    }
                    if !complete {
                        break;
                    }
                }
            }
            if sum.write_error.is_some() {
                halt.store(true, Ordering::Relaxed);
            }
            if finals == cores {
                break;
            }
        }
        for (_, ls) in std::mem::take(&mut waiting) {
            for l in &ls {
                out(l, &mut sum);
            }
        }
        sum
    };
    let (results, read, mut sum) = crate::io::stream::fan_out(reader, cores, &halt, body, merge);
    if results.iter().any(Result::is_err) && sum.write_error.is_none() {
        sum.write_error = Some(std::io::Error::other(
            "a core's thread panicked; its flows' events are missing",
        ));
    }
    if inputs.len() == 1
        && read
            .error
            .as_ref()
            .is_some_and(|e| crate::streams::unopenable(e, read.packets))
    {
        if let Some(e) = read.error {
            return Err(e);
        }
    }
    sum.capture_error = read.error;
    sum.stopped = (read.stopped || skipped.load(Ordering::Relaxed)) && stop.load(Ordering::Relaxed);
    Ok(sum)
}
