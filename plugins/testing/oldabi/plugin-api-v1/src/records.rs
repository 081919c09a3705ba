//! Record formats that the host and plugins must write byte for byte alike, written once:
//! the `flowpeek events` / eventlog line, the `flowpeek streams --json` / streamhash record
//! (feature `json`), and their pieces (timestamps, TCP flags, hex digests, close names).
//!
//! The writers take plain values and a small probe for what only a host context can answer,
//! so that the host (with its engine `Cx`) and a plugin (with the SDK's `Cx`) produce the
//! same bytes by construction; the tests here pin those bytes.
//!
//! Must not: read packets or flows itself, or depend on either side's context type.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::codes::{BuiltinEvent, Detail, EndReason, Hook, Side, USER_EVENT_NAME};

/// Appends `ns` (nanoseconds) as `secs.micros`: the capture's microsecond precision, six
/// digits, not float noise.
pub fn push_ts(out: &mut String, ns: u64) {
    let _ = write!(
        out,
        "{}.{:06}",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1000
    );
}

/// Appends TCP flags in mOS's print order, `FSRPAUEC` (e.g. `SA` for SYN/ACK).
pub fn push_flags(out: &mut String, flags: u8) {
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

/// Lower-case hex of `bytes` (digests).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The `close` of a stream record: `fin`, `rst`, `timeout`, `evicted`, or `eof` for any
/// other end (end of capture, shutdown, reload, stop) and for an unknown one.
pub fn close_name(reason: Option<EndReason>) -> &'static str {
    match reason {
        Some(EndReason::Fin) => "fin",
        Some(EndReason::Rst) => "rst",
        Some(EndReason::Timeout) => "timeout",
        Some(EndReason::Evicted) => "evicted",
        Some(EndReason::Stopped | EndReason::Eof | EndReason::Shutdown | EndReason::Reloaded)
        | None => "eof",
    }
}

/// One callback, as an event line shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventFields {
    /// The built-in event; `None` for a user-defined one (printed `USER`).
    pub event: Option<BuiltinEvent>,
    /// The side; `None` for both.
    pub side: Option<Side>,
    /// The hook.
    pub hook: Hook,
    /// The event's detail.
    pub detail: Detail,
}

/// The TCP fields of a `PKT_IN` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketFields {
    /// Sequence number.
    pub seq: u32,
    /// TCP flags.
    pub flags: u8,
    /// Payload bytes.
    pub len: u32,
}

/// What an event line needs from the callback's context, asked only for the events that
/// print it, in the line's order.
pub trait EventProbe {
    /// The client's and the server's address (an orphan's source and destination), if the
    /// host can say.
    fn addresses(&mut self) -> Option<(SocketAddr, SocketAddr)>;
    /// `CONN_NEW_DATA` on `side`: the side's contiguous end (0 if unknown). Like mOS's
    /// reference probe, the caller then reads the side up to it, so that `ERROR` means a
    /// window overrun, not a lazy reader.
    fn new_data(&mut self, side: Side) -> u64;
    /// `PKT_IN`: the flow's last packet, if the host can say.
    fn last_packet(&mut self) -> Option<PacketFields>;
}

/// Writes one event line (replacing `out`'s contents), in mOS's vocabulary:
///
/// ```text
/// {"flow":"CLI:PORT>SVR:PORT","side":"cli","hook":"snd","event":"PKT_IN","seq":1,"flags":"SA","len":0}
/// ```
///
/// `TCP_STATE_CHANGE` adds `state`; `CONN_NEW_DATA` adds `contig` (a 32-bit position, as mOS
/// prints it); `PKT_IN` adds `seq`, `flags` and `len`; `CONN_END` adds `reason`; `ERROR`
/// adds `error`.
pub fn write_event_line(out: &mut String, ev: &EventFields, probe: &mut impl EventProbe) {
    out.clear();
    out.push_str(r#"{"flow":""#);
    match probe.addresses() {
        Some((a, b)) => {
            let _ = write!(out, "{a}>{b}");
        }
        None => out.push('?'),
    }
    let _ = write!(
        out,
        r#"","side":"{}","hook":"{}","event":"{}""#,
        ev.side.map_or("both", Side::short_name),
        ev.hook.short_name(),
        ev.event.map_or(USER_EVENT_NAME, BuiltinEvent::mos_name)
    );
    match (ev.event, ev.detail, ev.side) {
        (Some(BuiltinEvent::TcpStateChange), Detail::State(st), _) => {
            let _ = write!(out, r#","state":"{}""#, st.name());
        }
        (Some(BuiltinEvent::NewData), _, Some(side)) => {
            let contig = probe.new_data(side);
            // mOS prints a 32-bit sequence-space position.
            let _ = write!(out, r#","contig":{}"#, contig as u32);
        }
        (Some(BuiltinEvent::PktIn), _, _) => {
            if let Some(p) = probe.last_packet() {
                let _ = write!(out, r#","seq":{},"flags":""#, p.seq);
                push_flags(out, p.flags);
                let _ = write!(out, r#"","len":{}"#, p.len);
            }
        }
        (Some(BuiltinEvent::ConnEnd), Detail::End(r), _) => {
            let _ = write!(out, r#","reason":"{}""#, r.name());
        }
        (Some(BuiltinEvent::Error), Detail::Error(e), _) => {
            let _ = write!(out, r#","error":"{}""#, e.name());
        }
        _ => {}
    }
    out.push('}');
}

/// What a reader of one direction saw, as a stream record shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionFields<'a> {
    /// Bytes delivered in order.
    pub bytes: u64,
    /// Bytes never seen (gaps skipped, or lost before they were read).
    pub missing: u64,
    /// Bytes received more than once.
    pub overlap: u64,
    /// SHA-256 of the bytes, lower-case hex, when computed.
    pub sha256: Option<&'a str>,
    /// CRC-32 (IEEE) of the bytes, when computed.
    pub crc32: Option<u32>,
    /// XXH3-64 of the bytes, when computed.
    pub xxh3: Option<u64>,
}

/// One connection, as a stream record shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamFields<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The server's address.
    pub server: SocketAddr,
    /// First packet (ns since the epoch).
    pub start: u64,
    /// Last packet (ns).
    pub end: u64,
    /// How it ended (see [`close_name`]).
    pub close: &'a str,
    /// Picked up mid-stream (no SYN seen).
    pub partial: bool,
    /// A side was refused a receive buffer (the engine's `buffer_memory` was exhausted):
    /// the bytes it could not store are counted in that direction's `missing`, so the
    /// record never claims a stream it did not see.
    pub buffer_refused: bool,
    /// Client → server.
    pub c2s: DirectionFields<'a>,
    /// Server → client.
    pub s2c: DirectionFields<'a>,
}

#[cfg(feature = "json")]
impl StreamFields<'_> {
    /// The record as one line of JSON (no newline), keys in sorted order; `partial` and
    /// `buffer_refused` only when true, each digest only when computed:
    ///
    /// ```text
    /// {"buffer_refused":true,
    ///  "c2s":{"bytes":N,"crc32":"8 hex","missing":N,"overlap":N,"sha256":"64 hex"},
    ///  "client":"IP:PORT","close":"fin","end":SECS.MICROS,"partial":true,
    ///  "s2c":{...},"server":"IP:PORT","start":SECS.MICROS}
    /// ```
    pub fn to_json(&self) -> String {
        use serde_json::{json, Value};

        // Seconds as a JSON number read from `secs.micros`, the way every writer so far
        // has printed it (serde_json's number parser and printer).
        let ts = |ns: u64| {
            let mut s = String::new();
            push_ts(&mut s, ns);
            s.parse().map_or(Value::Null, Value::Number)
        };
        let dir = |d: &DirectionFields<'_>| {
            let mut v = json!({ "bytes": d.bytes, "missing": d.missing, "overlap": d.overlap });
            if let Some(c) = d.crc32 {
                v["crc32"] = format!("{c:08x}").into();
            }
            if let Some(s) = d.sha256 {
                v["sha256"] = s.into();
            }
            if let Some(x) = d.xxh3 {
                v["xxh3"] = format!("{x:016x}").into();
            }
            v
        };
        let mut v = json!({
            "client": self.client.to_string(),
            "server": self.server.to_string(),
            "start": ts(self.start),
            "end": ts(self.end),
            "close": self.close,
            "c2s": dir(&self.c2s),
            "s2c": dir(&self.s2c),
        });
        if self.partial {
            v["partial"] = Value::Bool(true);
        }
        if self.buffer_refused {
            v["buffer_refused"] = Value::Bool(true);
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests;
