//! Record formats that the host and plugins must write byte for byte alike, written once:
//! the `flowpeek events` / eventlog line, the `flowpeek streams --json` / streamhash record,
//! and their pieces (the flow id `uid`, the endpoint fields, timestamps, TCP flags, hex
//! digests, close names, JSON strings). Every writer appends to a caller's reused `String`:
//! no JSON tree, no allocation per record once the buffer has grown. The schema is
//! docs/records.md.
//!
//! The writers take plain values and a small probe for what only a host context can answer,
//! so that the host (with its engine `Cx`) and a plugin (with the SDK's `Cx`) produce the
//! same bytes by construction; the tests here pin those bytes.
//!
//! Must not: read packets or flows itself, or depend on either side's context type.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::codes::{BuiltinEvent, Detail, EndReason, Hook, Side, USER_EVENT_NAME};

/// Appends `n` in decimal, as `write!(out, "{n}")` would, without `core::fmt` (the
/// writers below format a few numbers per record, millions of records a run).
pub fn push_u64(out: &mut String, n: u64) {
    push_digits(out, n, 1);
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (at most 20).
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = i.min(buf.len() - width.clamp(1, buf.len()));
    out.extend(buf[start..].iter().map(|&b| char::from(b)));
}

/// Appends `n` as exactly `digits` lower-case hex digits (the low ones, zero-padded), as
/// `write!(out, "{n:0digits$x}")` would for a value that fits.
pub fn push_hex_digits(out: &mut String, n: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for k in (0..digits.min(16)).rev() {
        out.push(char::from(HEX[((n >> (4 * k)) & 0xf) as usize]));
    }
}

/// Appends `a` as `IP:PORT` (IPv4) or `[IP]:PORT` (IPv6), as its `Display` does; IPv4, the
/// common case, without `core::fmt`.
pub fn push_socket_addr(out: &mut String, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(*o));
            }
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// Appends `ns` (nanoseconds) as `secs.micros`: the capture's microsecond precision, six
/// digits, not float noise.
pub fn push_ts(out: &mut String, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    out.push('.');
    push_digits(out, (ns % 1_000_000_000) / 1000, 6);
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
    /// The time of the flow's first packet (ns), for its `uid` ([`flow_uid`]); for an
    /// orphan, the time of its packet.
    fn start(&mut self) -> Option<u64>;
    /// `CONN_NEW_DATA` on `side`: the side's contiguous end (0 if unknown). Like mOS's
    /// reference probe, the caller then reads the side up to it, so that `ERROR` means a
    /// window overrun, not a lazy reader.
    fn new_data(&mut self, side: Side) -> u64;
    /// `PKT_IN`: the flow's last packet, if the host can say.
    fn last_packet(&mut self) -> Option<PacketFields>;
}

/// Writes one event line (replacing `out`'s contents), in mOS's vocabulary, opening with the
/// flow's `uid`, `client` and `server` as every record does ([`push_flow_fields`]):
///
/// ```text
/// {"uid":"16 hex","client":"CLI:PORT","server":"SVR:PORT","side":"cli","hook":"snd","event":"PKT_IN","seq":1,"flags":"SA","len":0}
/// ```
///
/// (for `ORPHAN`, `client` is the packet's source and `server` its destination, and `uid`
/// is computed from the packet's time). `TCP_STATE_CHANGE` adds `state`; `CONN_NEW_DATA`
/// adds `contig` (a 32-bit position, as mOS prints it); `PKT_IN` adds `seq`, `flags` and
/// `len`; `CONN_END` adds `reason`; `ERROR` adds `error`.
pub fn write_event_line(out: &mut String, ev: &EventFields, probe: &mut impl EventProbe) {
    out.clear();
    out.push('{');
    let flow = probe
        .addresses()
        .and_then(|(c, s)| probe.start().map(|t| (c, s, t)));
    push_flow_fields(out, flow);
    out.push_str(r#","side":""#);
    out.push_str(ev.side.map_or("both", Side::short_name));
    out.push_str(r#"","hook":""#);
    out.push_str(ev.hook.short_name());
    out.push_str(r#"","event":""#);
    out.push_str(ev.event.map_or(USER_EVENT_NAME, BuiltinEvent::mos_name));
    out.push('"');
    match (ev.event, ev.detail, ev.side) {
        (Some(BuiltinEvent::TcpStateChange), Detail::State(st), _) => {
            out.push_str(r#","state":""#);
            out.push_str(st.name());
            out.push('"');
        }
        (Some(BuiltinEvent::NewData), _, Some(side)) => {
            let contig = probe.new_data(side);
            // mOS prints a 32-bit sequence-space position.
            out.push_str(r#","contig":"#);
            push_u64(out, u64::from(contig as u32));
        }
        (Some(BuiltinEvent::PktIn), _, _) => {
            if let Some(p) = probe.last_packet() {
                out.push_str(r#","seq":"#);
                push_u64(out, u64::from(p.seq));
                out.push_str(r#","flags":""#);
                push_flags(out, p.flags);
                out.push_str(r#"","len":"#);
                push_u64(out, u64::from(p.len));
            }
        }
        (Some(BuiltinEvent::ConnEnd), Detail::End(r), _) => {
            out.push_str(r#","reason":""#);
            out.push_str(r.name());
            out.push('"');
        }
        (Some(BuiltinEvent::Error), Detail::Error(e), _) => {
            out.push_str(r#","error":""#);
            out.push_str(e.name());
            out.push('"');
        }
        _ => {}
    }
    out.push('}');
}

/// A flow's id, the `uid` of every record about it (the `streams` record, the event lines,
/// every bundled plugin's records), like Zeek's conn.log `uid` or Suricata's `flow_id`.
///
/// It is a function of what every reader of the flow sees alike: the client's and the
/// server's address and the time of the flow's first packet (ns). So the host and a plugin,
/// one core or many, give a flow the same id; a 4-tuple reused later is a new id. The hash is
/// 64-bit FNV-1a over the bytes `family (4 or 6), client IP, client port (big-endian), server
/// IP, server port, start (little-endian u64)`, then SplitMix64's finalizer; it is printed
/// as 16 lower-case hex digits ([`push_uid`]). It is not a secret and not a security boundary.
pub fn flow_uid(client: SocketAddr, server: SocketAddr, start: u64) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for a in [client, server] {
        match a {
            SocketAddr::V4(v4) => {
                eat(&[4]);
                eat(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                eat(&[6]);
                eat(&v6.ip().octets());
            }
        }
        eat(&a.port().to_be_bytes());
    }
    eat(&start.to_le_bytes());
    // SplitMix64's finalizer: every input bit reaches every output bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Appends `uid` as 16 lower-case hex digits, in quotes.
pub fn push_uid(out: &mut String, uid: u64) {
    out.push('"');
    push_hex_digits(out, uid, 16);
    out.push('"');
}

/// Appends `s` as a JSON string (in quotes): `"` and `\` escaped, control characters (U+0000
/// to U+001F) as `\n`, `\r`, `\t` or `\u00XX`; everything else as it is (the output is UTF-8).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if u32::from(c) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(esc);
        }
        plain = i + c.len_utf8();
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Appends the three fields that open every record about a flow, in this order:
/// `"uid":"16 hex","client":"IP:PORT","server":"IP:PORT"` (no braces, no commas around).
/// Unknown addresses (a host that cannot say) give `null` for all three.
pub fn push_flow_fields(out: &mut String, flow: Option<(SocketAddr, SocketAddr, u64)>) {
    match flow {
        Some((client, server, start)) => {
            out.push_str(r#""uid":"#);
            push_uid(out, flow_uid(client, server, start));
            // An address prints digits, dots, colons, brackets and a `%` scope: nothing
            // to escape.
            out.push_str(r#","client":""#);
            push_socket_addr(out, &client);
            out.push_str(r#"","server":""#);
            push_socket_addr(out, &server);
            out.push('"');
        }
        None => out.push_str(r#""uid":null,"client":null,"server":null"#),
    }
}

/// One gap of a direction: `len` bytes never seen, at stream offset `offset` (bytes of
/// the direction before it, delivered or missing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Stream offset of the first missing byte.
    pub offset: u64,
    /// Missing bytes.
    pub len: u64,
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
    /// The file the direction's bytes were written to (`streams --write`), if any.
    pub file: Option<&'a str>,
    /// The direction's gaps (`streams --write`), in stream order, if listed; with
    /// `gaps_dropped` more that did not fit the list.
    pub gaps: Option<(&'a [Gap], u64)>,
}

impl DirectionFields<'_> {
    /// The fields of a direction that only counts (no digest, file or gaps).
    pub const fn counts(bytes: u64, missing: u64, overlap: u64) -> DirectionFields<'static> {
        DirectionFields {
            bytes,
            missing,
            overlap,
            sha256: None,
            crc32: None,
            xxh3: None,
            file: None,
            gaps: None,
        }
    }

    fn write_json(&self, out: &mut String) {
        out.push_str(r#"{"bytes":"#);
        push_u64(out, self.bytes);
        out.push_str(r#","missing":"#);
        push_u64(out, self.missing);
        out.push_str(r#","overlap":"#);
        push_u64(out, self.overlap);
        if let Some(c) = self.crc32 {
            out.push_str(r#","crc32":""#);
            push_hex_digits(out, u64::from(c), 8);
            out.push('"');
        }
        if let Some(s) = self.sha256 {
            out.push_str(r#","sha256":"#);
            push_json_str(out, s);
        }
        if let Some(x) = self.xxh3 {
            out.push_str(r#","xxh3":""#);
            push_hex_digits(out, x, 16);
            out.push('"');
        }
        if let Some(f) = self.file {
            out.push_str(r#","file":"#);
            push_json_str(out, f);
        }
        if let Some((gaps, dropped)) = self.gaps {
            out.push_str(r#","gaps":["#);
            for (i, g) in gaps.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "[{},{}]", g.offset, g.len);
            }
            out.push(']');
            if dropped > 0 {
                let _ = write!(out, r#","gaps_dropped":{dropped}"#);
            }
        }
        out.push('}');
    }
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

impl StreamFields<'_> {
    /// Appends the record as one line of JSON (no newline) to `out`, written straight into
    /// the buffer (no intermediate tree, no allocation once `out` has grown), keys in this
    /// fixed order (docs/records.md):
    ///
    /// ```text
    /// {"uid":"16 hex","client":"IP:PORT","server":"IP:PORT",
    ///  "start":SECS.MICROS,"end":SECS.MICROS,"close":"fin","partial":true,"buffer_refused":true,
    ///  "c2s":{"bytes":N,"missing":N,"overlap":N,"crc32":"8 hex","sha256":"64 hex"},
    ///  "s2c":{...}}
    /// ```
    ///
    /// `partial` and `buffer_refused` only when true; each digest only when computed
    /// (`xxh3` after `sha256`); `file` and `gaps` only when given.
    pub fn write_json(&self, out: &mut String) {
        out.push('{');
        push_flow_fields(out, Some((self.client, self.server, self.start)));
        out.push_str(r#","start":"#);
        push_ts(out, self.start);
        out.push_str(r#","end":"#);
        push_ts(out, self.end);
        out.push_str(r#","close":"#);
        push_json_str(out, self.close);
        if self.partial {
            out.push_str(r#","partial":true"#);
        }
        if self.buffer_refused {
            out.push_str(r#","buffer_refused":true"#);
        }
        out.push_str(r#","c2s":"#);
        self.c2s.write_json(out);
        out.push_str(r#","s2c":"#);
        self.s2c.write_json(out);
        out.push('}');
    }

    /// [`write_json`](Self::write_json) into a new string.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(320);
        self.write_json(&mut s);
        s
    }
}

#[cfg(test)]
mod tests;
