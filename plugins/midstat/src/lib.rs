//! `midstat`: the table of live connections, every second (the mOS `midstat` sample).
//!
//! Every second of host time (packet time for a capture, wall time live) each core emits one
//! record, and one more with `"final":true` when the instance retires:
//!
//! ```text
//! {"ts":1500000001.000000,"core":0,"flows":2,"truncated":0,"table":[
//!   {"uid":"16 hex","client":"10.0.0.1:5555","server":"10.0.0.2:80","cli_state":"ESTABLISHED",
//!    "svr_state":"ESTABLISHED","c2s_bytes":120,"s2c_bytes":5000,"start":1500000000.250000},
//!   ...]}
//! ```
//!
//! (one line). `flows` counts the connections alive on that core; `table` lists them in
//! creation order, at most `max_rows` (`truncated` says how many were left out). The states are
//! each side's emulated TCP state, followed through `TCP_STATE_CHANGE`. The byte counts are
//! the highest stream offset a packet of that direction reached (payload sequence space
//! covered: retransmissions are not counted twice; a gap still counts). A connection leaves
//! the table at its first `CONN_END`.
//!
//! It needs no receive buffer (`Buffer::Off`): the counts come from each packet's metadata.
//!
//! Configuration (`midstat.toml`): `max_rows = 1000`, `interval_ms = 1000`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;

use flowpeek_plugin_api::records::{push_flow_fields, push_ts};
use flowpeek_plugin_api::sdk::*;

/// The tag of the periodic core timer.
const TICK: u64 = 1;

/// A flow's user value once it left the table (its remaining events are ignored).
const GONE: u64 = u64::MAX;

/// One live connection.
struct Row {
    client: SocketAddr,
    server: SocketAddr,
    /// Indexed by side: client, server.
    state: [Option<TcpState>; 2],
    /// Highest stream offset reached, indexed by sender: client (c2s), server (s2c).
    bytes: [u64; 2],
    start: u64,
    serial: u64,
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

/// The monitor.
pub struct Midstat {
    core: u32,
    /// The table; a flow's user value is its index + 1.
    rows: Vec<Option<Row>>,
    free: Vec<usize>,
    live: usize,
    max_rows: usize,
    interval_ns: u64,
    armed: bool,
    warned: bool,
    /// Reused per report: live row indices in creation order, and the record's text.
    order: Vec<usize>,
    line: String,
}

impl Midstat {
    /// The flow's row, made on its first event; `None` once it left the table.
    fn row(&mut self, cx: &mut Cx<'_>, flow: Flow) -> Option<usize> {
        match cx.user_value(flow).ok()? {
            GONE => return None,
            0 => {}
            v => return usize::try_from(v - 1).ok(),
        }
        let (client, server) = cx.addresses(flow).ok()?;
        let (start, _, serial) = cx.flow_times(flow).unwrap_or((cx.now(), 0, 0));
        let row = Row {
            client,
            server,
            state: [
                cx.tcp_state(flow, Side::Client).ok(),
                cx.tcp_state(flow, Side::Server).ok(),
            ],
            bytes: [0, 0],
            start,
            serial,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.rows[i] = Some(row);
                i
            }
            None => {
                self.rows.push(Some(row));
                self.rows.len() - 1
            }
        };
        if cx.set_user_value(flow, idx as u64 + 1).is_err() {
            self.rows[idx] = None;
            self.free.push(idx);
            return None;
        }
        self.live += 1;
        Some(idx)
    }

    fn arm(&mut self, cx: &mut Cx<'_>) {
        match cx.set_core_timer(self.interval_ns, TICK) {
            Ok(()) => self.armed = true,
            Err(e) => {
                self.armed = false;
                if !self.warned {
                    self.warned = true;
                    cx.log(1, &format!("midstat: cannot set the core timer: {e}"));
                }
            }
        }
    }

    /// Writes the record for time `ts` into `self.line`.
    fn format(&mut self, ts: u64, last: bool) {
        self.order.clear();
        self.order
            .extend((0..self.rows.len()).filter(|&i| self.rows[i].is_some()));
        let rows = &self.rows;
        let key = |i: &usize| rows[*i].as_ref().map_or((0, 0), |r| (r.serial, r.start));
        self.order.sort_unstable_by_key(key);
        let shown = self.order.len().min(self.max_rows);
        let line = &mut self.line;
        line.clear();
        line.push_str(r#"{"ts":"#);
        push_ts(line, ts);
        let _ = write!(
            line,
            r#","core":{},"flows":{},"truncated":{},"#,
            self.core,
            self.live,
            self.order.len() - shown
        );
        if last {
            line.push_str(r#""final":true,"#);
        }
        line.push_str(r#""table":["#);
        for (n, &i) in self.order[..shown].iter().enumerate() {
            let Some(r) = rows[i].as_ref() else { continue };
            if n > 0 {
                line.push(',');
            }
            let state = |s: Option<TcpState>| s.map_or("UNKNOWN", TcpState::name);
            line.push('{');
            push_flow_fields(line, Some((r.client, r.server, r.start)));
            let _ = write!(
                line,
                r#","cli_state":"{}","svr_state":"{}","c2s_bytes":{},"s2c_bytes":{},"start":"#,
                state(r.state[0]),
                state(r.state[1]),
                r.bytes[0],
                r.bytes[1],
            );
            push_ts(line, r.start);
            line.push('}');
        }
        line.push_str("]}");
    }
}

impl Monitor for Midstat {
    const NAME: &'static str = "midstat";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(core: u32, config: &str) -> Result<Self, String> {
        config_keys(config, &["max_rows", "interval_ms"])?;
        let max_rows = config_u64(config, "max_rows")?.unwrap_or(1000);
        let interval_ms = config_u64(config, "interval_ms")?.unwrap_or(1000);
        if interval_ms == 0 {
            return Err("interval_ms: must be at least 1".into());
        }
        Ok(Midstat {
            core,
            rows: Vec::new(),
            free: Vec::new(),
            live: 0,
            max_rows: usize::try_from(max_rows).unwrap_or(usize::MAX),
            interval_ns: interval_ms.saturating_mul(1_000_000),
            armed: false,
            warned: false,
            order: Vec::new(),
            line: String::new(),
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::PktIn, Hook::Snd)
            .with(EventKind::TcpStateChange, Hook::Snd)
            .with(EventKind::TcpStateChange, Hook::Rcv)
            .with(EventKind::ConnEnd, Hook::Snd)
            .buffers(Buffer::Off)
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        if !self.armed && !self.warned {
            self.arm(cx);
        }
        let Some(idx) = self.row(cx, ev.flow) else {
            return;
        };
        match (ev.kind, ev.detail, ev.side) {
            (EventKind::ConnEnd, _, _) => {
                if let Some(Some(_)) = self.rows.get(idx) {
                    self.rows[idx] = None;
                    self.free.push(idx);
                    self.live -= 1;
                }
                let _ = cx.set_user_value(ev.flow, GONE);
            }
            (EventKind::TcpStateChange, Detail::State(st), Some(side)) => {
                if let Some(Some(r)) = self.rows.get_mut(idx) {
                    r.state[side_index(side)] = Some(st);
                }
            }
            (EventKind::PktIn, _, Some(sender)) => {
                let Ok(p) = cx.last_packet(ev.flow) else {
                    return;
                };
                if p.payload_len == 0 {
                    return;
                }
                if let Some(Some(r)) = self.rows.get_mut(idx) {
                    let end = p.offset.saturating_add(u64::from(p.payload_len));
                    let b = &mut r.bytes[side_index(p.sender.unwrap_or(sender))];
                    *b = (*b).max(end);
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>, flow: Option<Flow>, tag: u64) {
        if flow.is_some() || tag != TICK {
            return;
        }
        self.armed = false;
        self.format(cx.now(), false);
        let _ = cx.emit(&self.line);
        self.arm(cx);
    }

    fn shutdown(&mut self, cx: &mut Cx<'_>) {
        self.format(cx.now(), true);
        let _ = cx.emit(&self.line);
    }
}

// The macro's items are the library's entry point, not API (and carry no docs).
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::Midstat);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(serial: u64, c2s: u64) -> Row {
        Row {
            client: "10.0.0.1:1000".parse().unwrap(),
            server: "[::1]:80".parse().unwrap(),
            state: [Some(TcpState::Established), None],
            bytes: [c2s, 7],
            start: 1_500_000_000_250_000_000 + serial,
            serial,
        }
    }

    #[test]
    fn record_lists_rows_in_creation_order_and_truncates() {
        let mut m = Midstat::new(3, "max_rows = 2").unwrap();
        m.rows = vec![Some(row(5, 1)), None, Some(row(2, 2)), Some(row(9, 3))];
        m.live = 3;
        m.format(2_000_000_000, true);
        assert_balanced(&m.line);
        let r = row(2, 2);
        let uid = flowpeek_plugin_api::records::flow_uid(r.client, r.server, r.start);
        let want = format!(
            r#"{{"ts":2.000000,"core":3,"flows":3,"truncated":1,"final":true,"table":[{{"uid":"{uid:016x}","client":"10.0.0.1:1000","server":"[::1]:80","cli_state":"ESTABLISHED","svr_state":"UNKNOWN","c2s_bytes":2,"#
        );
        assert!(m.line.starts_with(&want), "{}", m.line);
        assert!(m.line.contains(r#""c2s_bytes":1,"#));
        assert!(!m.line.contains(r#""c2s_bytes":3,"#));
        assert!(m.line.ends_with("]}"));
    }

    #[test]
    fn empty_table() {
        let mut m = Midstat::new(0, "").unwrap();
        m.format(1_000_000, false);
        assert_eq!(
            m.line,
            r#"{"ts":0.001000,"core":0,"flows":0,"truncated":0,"table":[]}"#
        );
    }

    #[test]
    fn config() {
        assert!(Midstat::new(0, "interval_ms = 0").is_err());
        assert!(Midstat::new(0, "max_rows = x").is_err());
        assert_eq!(
            Midstat::new(0, "interval_ms = 250").unwrap().interval_ns,
            250_000_000
        );
    }

    /// Structural check without a JSON dependency: balanced braces, brackets and quotes.
    fn assert_balanced(s: &str) {
        let mut depth = 0i32;
        let mut in_str = false;
        for c in s.chars() {
            match (in_str, c) {
                (_, '"') => in_str = !in_str,
                (false, '{' | '[') => depth += 1,
                (false, '}' | ']') => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{s}");
        }
        assert_eq!((depth, in_str), (0, false), "{s}");
    }
}
