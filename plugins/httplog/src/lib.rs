//! `httplog`: HTTP/1.x requests and responses of every connection, one record per pair.
//!
//! ```text
//! {"uid":"16 hex","client":"10.0.0.1:5555","server":"10.0.0.2:80","ts":1500000000.250000,
//!  "method":"GET","host":"example.com","path":"/index.html","status":200,
//!  "req_content_length":null,"resp_content_length":5120,"req_chunked":false,"resp_chunked":false}
//! ```
//!
//! (one line). `uid`, `client` and `server` open every record about a flow, as in every
//! flowpeek record (docs/records.md). Requests are matched with responses in order (pipelining works); `ts` is the
//! time the request head was complete (the response's, if no request was seen). A request
//! still unanswered when the connection ends is recorded with `"status":null`; a response with
//! no request seen, with `"method":null` (and `host`, `path` null). Interim `1xx` responses are
//! skipped, except `101`. Unknown values are `null`; `*_content_length` is the header's value.
//!
//! A connection whose first message is not HTTP/1.x (TLS, SSH, ...) is ignored silently. A
//! problem on one direction gives one record, after which that direction is not parsed any
//! more (the other goes on):
//!
//! ```text
//! {"uid":"...","client":"...","server":"...","ts":...,"dir":"request","offset":0,"error":"header larger than 16384 bytes"}
//! ```
//!
//! Errors: a head larger than `max_header`, a later message that is not HTTP/1.x, a bad
//! `Content-Length` or chunk size, and bytes gone before they were parsed (discarded because
//! the buffer was too small, or never captured). After `101 Switching Protocols` or a `2xx`
//! answer to `CONNECT` both directions stop (a tunnel is not HTTP); a response without length
//! runs to the end of the connection, so its direction stops there too.
//!
//! How it reads: each direction has a parser that knows the stream offset where the current
//! message starts. On every `NewData` it takes the side's contiguous end (`buffer_info`) and
//! scans the new bytes in place (`slices`, no copy) for the blank line that ends a head; only a
//! complete head is copied and parsed. Bodies are skipped by `Content-Length` or by following
//! the chunk sizes of `Transfer-Encoding: chunked`, without reading them. Only the contiguous
//! data is ever looked at, so segments that are split, retransmitted or out of order (waiting
//! in later fragments until the gap fills) all parse the same.
//!
//! Configuration (`httplog.toml`): `buffer = 65536` (receive buffer per side; a head must fit),
//! `max_header = 16384`, `max_pending = 64` (pipelined requests waiting for an answer).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;

use flowpeek_plugin_api::records::{push_flow_fields, push_ts};
use flowpeek_plugin_api::sdk::*;

/// The bytes of one direction: the host's receive buffer, or a test's vector.
trait Source {
    /// Stored bytes from `off` (at most `len`), as up to two slices; `None` if `off` is not
    /// stored.
    fn bytes(&self, off: u64, len: usize) -> Option<(&[u8], &[u8])>;

    /// Why the byte at `off` cannot be read.
    fn why_missing(&self, off: u64) -> &'static str {
        let _ = off;
        "bytes gone before they were parsed"
    }
}

/// What a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Request,
    Response,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Request => "request",
            Dir::Response => "response",
        }
    }
}

/// The first line of a head.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StartLine {
    Request { method: String, target: String },
    Response { status: u16 },
}

/// A parsed message head.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    line: StartLine,
    host: Option<String>,
    content_length: Option<u64>,
    chunked: bool,
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes: nothing more to parse on this direction.
    UntilClose,
    /// Not HTTP any more (upgrade, tunnel): stop both directions.
    Stop,
}

/// Where a direction's parser is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Looking for the end of the head that starts at `start`; scanned up to `scan`.
    Head { scan: u64, state: u8 },
    /// Skipping a body that ends at `end`.
    Body { end: u64 },
    /// Looking for the end of the chunk-size line that starts at `start`.
    ChunkLine { scan: u64 },
    /// Skipping chunk data that ends at `end`.
    ChunkData { end: u64 },
    /// Looking for the blank line that ends the trailers after the last chunk.
    Trailers { scan: u64, state: u8 },
    /// Nothing more to parse.
    Done,
}

/// Head-end scanner states: in a line, after LF, after LF CR, skipping blank lines before
/// a message.
const MID: u8 = 0;
const LF: u8 = 1;
const LF_CR: u8 = 2;
const LEAD: u8 = 3;

/// Longest chunk-size line accepted (extensions included).
const MAX_CHUNK_LINE: u64 = 4096;

/// One direction's incremental parser.
#[derive(Debug)]
struct DirParser {
    dir: Dir,
    /// Offset of the current message (or chunk line, or trailers).
    start: u64,
    stage: Stage,
    /// Heads parsed so far: a direction whose first message is not HTTP is not HTTP at all,
    /// and is dropped without an error record.
    heads: u64,
}

/// What a parser reports.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Head(Head),
    Error { offset: u64, what: String },
}

impl DirParser {
    fn new(dir: Dir) -> DirParser {
        DirParser {
            dir,
            start: 0,
            stage: Stage::Head {
                scan: 0,
                state: LEAD,
            },
            heads: 0,
        }
    }

    fn fail(&mut self, offset: u64, what: String, out: &mut dyn FnMut(Parsed) -> Framing) {
        self.stage = Stage::Done;
        out(Parsed::Error { offset, what });
    }

    /// Parses what became contiguous up to `contig`. `out` receives each head and says how
    /// its body is framed.
    fn advance(
        &mut self,
        src: &dyn Source,
        contig: u64,
        max_header: u64,
        scratch: &mut Vec<u8>,
        out: &mut dyn FnMut(Parsed) -> Framing,
    ) {
        loop {
            match self.stage {
                Stage::Done => return,
                Stage::Body { end } | Stage::ChunkData { end } => {
                    if contig < end {
                        return;
                    }
                    let chunked = matches!(self.stage, Stage::ChunkData { .. });
                    self.start = end;
                    self.stage = if chunked {
                        Stage::ChunkLine { scan: end }
                    } else {
                        Stage::Head {
                            scan: end,
                            state: LEAD,
                        }
                    };
                }
                Stage::Head { scan, state } | Stage::Trailers { scan, state } => {
                    let trailers = matches!(self.stage, Stage::Trailers { .. });
                    let limit = contig.min(self.start.saturating_add(max_header));
                    let mut state = state;
                    let found = match self.scan(src, scan, limit, |start, pos, b| {
                        match (state, b) {
                            (LEAD, b'\r' | b'\n') => *start = pos + 1,
                            (LEAD, _) => state = MID,
                            (MID, b'\n') => state = LF,
                            (LF | LF_CR, b'\n') => return true,
                            (LF, b'\r') => state = LF_CR,
                            _ => state = MID,
                        }
                        false
                    }) {
                        Ok(found) => found,
                        Err(off) => {
                            let why = src.why_missing(off);
                            return self.fail(off, why.to_string(), out);
                        }
                    };
                    match found {
                        Some(end) if trailers => {
                            self.start = end;
                            self.stage = Stage::Head {
                                scan: end,
                                state: LEAD,
                            };
                        }
                        Some(end) => {
                            let head_start = self.start;
                            if !copy(src, head_start, end, scratch) {
                                let why = src.why_missing(head_start);
                                return self.fail(head_start, why.to_string(), out);
                            }
                            let head = match parse_head(scratch, self.dir) {
                                Ok(h) => h,
                                Err(_) if self.heads == 0 => {
                                    self.stage = Stage::Done;
                                    return;
                                }
                                Err(e) => return self.fail(head_start, e.to_string(), out),
                            };
                            self.heads += 1;
                            self.start = end;
                            self.stage = match out(Parsed::Head(head)) {
                                Framing::Length(n) => Stage::Body {
                                    end: end.saturating_add(n),
                                },
                                Framing::Chunked => Stage::ChunkLine { scan: end },
                                Framing::UntilClose | Framing::Stop => Stage::Done,
                            };
                        }
                        None if state == LEAD => {
                            // Only blank lines so far: they do not count toward the limit.
                            self.stage = Stage::Head { scan: limit, state };
                            if limit < contig {
                                continue;
                            }
                            return;
                        }
                        None => {
                            if limit < contig || contig.saturating_sub(self.start) >= max_header {
                                let what = format!("header larger than {max_header} bytes");
                                return self.fail(self.start, what, out);
                            }
                            let scan = limit.max(self.start);
                            self.stage = if trailers {
                                Stage::Trailers { scan, state }
                            } else {
                                Stage::Head { scan, state }
                            };
                            return;
                        }
                    }
                }
                Stage::ChunkLine { scan } => {
                    let limit = contig.min(self.start.saturating_add(MAX_CHUNK_LINE));
                    let found = match self.scan(src, scan, limit, |_, _, b| b == b'\n') {
                        Ok(found) => found,
                        Err(off) => {
                            let why = src.why_missing(off);
                            return self.fail(off, why.to_string(), out);
                        }
                    };
                    let Some(end) = found else {
                        if limit < contig || contig.saturating_sub(self.start) >= MAX_CHUNK_LINE {
                            let what = "chunk-size line too long".to_string();
                            return self.fail(self.start, what, out);
                        }
                        self.stage = Stage::ChunkLine { scan: limit };
                        return;
                    };
                    let line_start = self.start;
                    if !copy(src, line_start, end, scratch) {
                        let why = src.why_missing(line_start);
                        return self.fail(line_start, why.to_string(), out);
                    }
                    self.start = end;
                    match parse_chunk_line(scratch) {
                        // The CRLF that closes a chunk's data.
                        Ok(None) => self.stage = Stage::ChunkLine { scan: end },
                        Ok(Some(0)) => {
                            self.stage = Stage::Trailers {
                                scan: end,
                                state: LF,
                            }
                        }
                        Ok(Some(n)) => {
                            self.stage = Stage::ChunkData {
                                end: end.saturating_add(n),
                            }
                        }
                        Err(e) => return self.fail(line_start, e.to_string(), out),
                    }
                }
            }
        }
    }

    /// Feeds the bytes `[from, limit)` to `step(start, offset, byte)` until it returns true;
    /// returns the offset after that byte. `step` may move the message start (blank lines
    /// before a message). `Err(offset)` if bytes are missing.
    fn scan(
        &mut self,
        src: &dyn Source,
        from: u64,
        limit: u64,
        mut step: impl FnMut(&mut u64, u64, u8) -> bool,
    ) -> Result<Option<u64>, u64> {
        let mut pos = from;
        while pos < limit {
            let want = usize::try_from(limit - pos).unwrap_or(usize::MAX);
            let Some((a, b)) = src.bytes(pos, want) else {
                return Err(pos);
            };
            if a.is_empty() && b.is_empty() {
                return Err(pos);
            }
            for part in [a, b] {
                for &byte in part {
                    if pos >= limit {
                        return Ok(None);
                    }
                    let at = pos;
                    pos += 1;
                    if step(&mut self.start, at, byte) {
                        return Ok(Some(pos));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Copies `[from, to)` into `out`; false if some bytes are not stored.
fn copy(src: &dyn Source, from: u64, to: u64, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut pos = from;
    while pos < to {
        let want = usize::try_from(to - pos).unwrap_or(usize::MAX);
        let Some((a, b)) = src.bytes(pos, want) else {
            return false;
        };
        if a.is_empty() && b.is_empty() {
            return false;
        }
        for part in [a, b] {
            let n = part
                .len()
                .min(usize::try_from(to - pos).unwrap_or(usize::MAX));
            out.extend_from_slice(&part[..n]);
            pos += n as u64;
        }
    }
    true
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

fn text(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// Parses a message head (start line and header lines, up to and including the blank line).
fn parse_head(head: &[u8], dir: Dir) -> Result<Head, &'static str> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let line = match dir {
        Dir::Request => {
            let (Some(method), Some(target), Some(version)) =
                (words.next(), words.next(), words.next())
            else {
                return Err("not an HTTP/1.x request line");
            };
            if !version.starts_with(b"HTTP/1.")
                || words.next().is_some()
                || !method.iter().all(|b| b.is_ascii_graphic())
            {
                return Err("not an HTTP/1.x request line");
            }
            StartLine::Request {
                method: text(method),
                target: text(target),
            }
        }
        Dir::Response => {
            let (Some(version), Some(status)) = (words.next(), words.next()) else {
                return Err("not an HTTP/1.x status line");
            };
            let status = std::str::from_utf8(status)
                .ok()
                .filter(|s| s.len() == 3)
                .and_then(|s| s.parse::<u16>().ok());
            match status {
                Some(status) if version.starts_with(b"HTTP/1.") && status >= 100 => {
                    StartLine::Response { status }
                }
                _ => return Err("not an HTTP/1.x status line"),
            }
        }
    };
    let mut h = Head {
        line,
        host: None,
        content_length: None,
        chunked: false,
    };
    for l in lines {
        // Folded continuation lines belong to a header we do not read.
        if l.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&l[..colon], trim(&l[colon + 1..]));
        if name.eq_ignore_ascii_case(b"host") {
            if h.host.is_none() {
                h.host = Some(text(value));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or("bad Content-Length")?;
            if h.content_length.is_some_and(|old| old != n) {
                return Err("conflicting Content-Length");
            }
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked applies when it is the last coding.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            h.chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        }
    }
    Ok(h)
}

/// Parses a chunk-size line (with its LF): `Ok(None)` for the empty line after chunk data.
fn parse_chunk_line(line: &[u8]) -> Result<Option<u64>, &'static str> {
    let line = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = trim(line);
    if digits.is_empty() {
        return Ok(None);
    }
    if digits.len() > 15 {
        return Err("bad chunk size");
    }
    let mut n = 0u64;
    for &d in digits {
        let v = char::from(d).to_digit(16).ok_or("bad chunk size")?;
        n = n * 16 + u64::from(v);
    }
    Ok(Some(n))
}

/// How a request's body is delimited (RFC 9112 §6.3).
fn request_framing(h: &Head) -> Framing {
    if h.chunked {
        Framing::Chunked
    } else {
        Framing::Length(h.content_length.unwrap_or(0))
    }
}

/// How a response's body is delimited, given the method of its request if known.
fn response_framing(h: &Head, method: Option<&str>) -> Framing {
    let StartLine::Response { status } = h.line else {
        return Framing::Stop;
    };
    if status == 101 || (method == Some("CONNECT") && (200..300).contains(&status)) {
        return Framing::Stop;
    }
    if method == Some("HEAD") || status < 200 || status == 204 || status == 304 {
        return Framing::Length(0);
    }
    if h.chunked {
        Framing::Chunked
    } else if let Some(n) = h.content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    ts: u64,
    method: String,
    host: Option<String>,
    path: String,
    content_length: Option<u64>,
    chunked: bool,
}

/// Writes `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

fn push_opt_num(out: &mut String, n: Option<u64>) {
    match n {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

/// The HTTP state of one connection.
struct HttpFlow {
    /// The record's first fields: `"uid":...,"client":...,"server":...`.
    name: String,
    req: DirParser,
    resp: DirParser,
    pending: VecDeque<Pending>,
}

/// Limits from the configuration.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_header: u64,
    max_pending: usize,
}

impl HttpFlow {
    fn new(name: String) -> HttpFlow {
        HttpFlow {
            name,
            req: DirParser::new(Dir::Request),
            resp: DirParser::new(Dir::Response),
            pending: VecDeque::new(),
        }
    }

    /// Parses both directions as far as they are contiguous (requests first, so that a
    /// response finds its request), appending records to `out`.
    fn advance(
        &mut self,
        req: Option<(&dyn Source, u64)>,
        resp: Option<(&dyn Source, u64)>,
        now: u64,
        limits: Limits,
        scratch: &mut Vec<u8>,
        out: &mut Vec<String>,
    ) {
        let HttpFlow {
            name,
            req: req_parser,
            resp: resp_parser,
            pending,
        } = self;
        let mut stop = false;
        if let Some((src, contig)) = req {
            req_parser.advance(src, contig, limits.max_header, scratch, &mut |p| match p {
                Parsed::Head(h) => {
                    let framing = request_framing(&h);
                    let StartLine::Request { method, target } = h.line else {
                        return Framing::Stop;
                    };
                    if pending.len() >= limits.max_pending {
                        if let Some(old) = pending.pop_front() {
                            out.push(pair_record(name, Some(&old), None));
                        }
                    }
                    pending.push_back(Pending {
                        ts: now,
                        method,
                        host: h.host,
                        path: target,
                        content_length: h.content_length,
                        chunked: h.chunked,
                    });
                    // What follows CONNECT is a tunnel (if the answer is 2xx): stop here.
                    if pending.back().is_some_and(|p| p.method == "CONNECT") {
                        Framing::UntilClose
                    } else {
                        framing
                    }
                }
                Parsed::Error { offset, what } => {
                    out.push(error_record(name, now, Dir::Request, offset, &what));
                    Framing::Stop
                }
            });
        }
        if let Some((src, contig)) = resp {
            resp_parser.advance(src, contig, limits.max_header, scratch, &mut |p| match p {
                Parsed::Head(h) => {
                    let StartLine::Response { status } = h.line else {
                        return Framing::Stop;
                    };
                    let interim = (100..200).contains(&status) && status != 101;
                    let framing = response_framing(&h, pending.front().map(|p| p.method.as_str()));
                    if !interim {
                        let req = pending.pop_front();
                        out.push(pair_record(name, req.as_ref(), Some((now, status, &h))));
                    }
                    if framing == Framing::Stop {
                        stop = true;
                    }
                    framing
                }
                Parsed::Error { offset, what } => {
                    out.push(error_record(name, now, Dir::Response, offset, &what));
                    Framing::Stop
                }
            });
        }
        if stop {
            req_parser.stage = Stage::Done;
            resp_parser.stage = Stage::Done;
        }
    }

    /// Records the requests that got no response.
    fn finish(&mut self, out: &mut Vec<String>) {
        while let Some(p) = self.pending.pop_front() {
            out.push(pair_record(&self.name, Some(&p), None));
        }
    }
}

fn pair_record(flow: &str, req: Option<&Pending>, resp: Option<(u64, u16, &Head)>) -> String {
    let mut s = String::with_capacity(256);
    s.push('{');
    s.push_str(flow);
    s.push_str(r#","ts":"#);
    push_ts(
        &mut s,
        req.map_or_else(|| resp.map_or(0, |r| r.0), |r| r.ts),
    );
    s.push_str(r#","method":"#);
    push_opt_str(&mut s, req.map(|r| r.method.as_str()));
    s.push_str(r#","host":"#);
    push_opt_str(&mut s, req.and_then(|r| r.host.as_deref()));
    s.push_str(r#","path":"#);
    push_opt_str(&mut s, req.map(|r| r.path.as_str()));
    s.push_str(r#","status":"#);
    push_opt_num(&mut s, resp.map(|r| u64::from(r.1)));
    s.push_str(r#","req_content_length":"#);
    push_opt_num(&mut s, req.and_then(|r| r.content_length));
    s.push_str(r#","resp_content_length":"#);
    push_opt_num(&mut s, resp.and_then(|r| r.2.content_length));
    let _ = write!(
        s,
        r#","req_chunked":{},"resp_chunked":{}}}"#,
        req.is_some_and(|r| r.chunked),
        resp.is_some_and(|r| r.2.chunked)
    );
    s
}

fn error_record(flow: &str, ts: u64, dir: Dir, offset: u64, what: &str) -> String {
    let mut s = String::with_capacity(128);
    s.push('{');
    s.push_str(flow);
    s.push_str(r#","ts":"#);
    push_ts(&mut s, ts);
    let _ = write!(s, r#","dir":"{}","offset":{offset},"error":"#, dir.name());
    push_str(&mut s, what);
    s.push('}');
    s
}

/// One side's bytes in the host's buffer.
struct HostStream<'c, 'a> {
    cx: &'c Cx<'a>,
    flow: Flow,
    side: Side,
}

impl Source for HostStream<'_, '_> {
    fn bytes(&self, off: u64, len: usize) -> Option<(&[u8], &[u8])> {
        self.cx.slices(self.flow, self.side, off, len).ok()
    }

    fn why_missing(&self, off: u64) -> &'static str {
        let mut frags = Vec::new();
        let _ = self.cx.fragments(self.flow, self.side, &mut frags);
        match frags.first() {
            Some(&(first, _)) if off < first => {
                "bytes discarded before they were parsed (raise `buffer`)"
            }
            _ => "bytes never captured (gap in the stream)",
        }
    }
}

/// Flow flag: its first side has ended.
const FIRST_SIDE_ENDED: u16 = 1;

/// The monitor.
pub struct HttpLog {
    /// Per-flow state, found through the flow's user value.
    flows: FlowSlab<HttpFlow>,
    limits: Limits,
    buffer: u32,
    scratch: Vec<u8>,
    out: Vec<String>,
}

impl HttpLog {
    fn entry(&mut self, cx: &mut Cx<'_>, flow: Flow) -> Option<usize> {
        self.flows.entry(cx, flow, |cx| {
            let mut name = String::with_capacity(96);
            let times = cx.flow_times(flow).ok().map(|t| t.0);
            let flow = cx
                .addresses(flow)
                .ok()
                .and_then(|(c, s)| times.map(|t| (c, s, t)));
            push_flow_fields(&mut name, flow);
            HttpFlow::new(name)
        })
    }

    fn parse(&mut self, cx: &mut Cx<'_>, flow: Flow, idx: usize) {
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        let now = cx.now();
        {
            let cx: &Cx<'_> = cx;
            // The server's buffer holds the requests.
            let req = HostStream {
                cx,
                flow,
                side: Side::Server,
            };
            let resp = HostStream {
                cx,
                flow,
                side: Side::Client,
            };
            let contig = |s: Side| cx.buffer_info(flow, s).ok().map(|i| i.contig_end);
            let req = contig(Side::Server).map(|c| (&req as &dyn Source, c));
            let resp = contig(Side::Client).map(|c| (&resp as &dyn Source, c));
            f.advance(
                req,
                resp,
                now,
                self.limits,
                &mut self.scratch,
                &mut self.out,
            );
        }
        for line in self.out.drain(..) {
            let _ = cx.emit(&line);
        }
    }
}

impl Monitor for HttpLog {
    const NAME: &'static str = "httplog";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn new(_core: u32, config: &str) -> Result<Self, String> {
        config_keys(config, &["buffer", "max_header", "max_pending"])?;
        let buffer = config_u64(config, "buffer")?.unwrap_or(64 * 1024);
        let max_header = config_u64(config, "max_header")?.unwrap_or(16 * 1024);
        let max_pending = config_u64(config, "max_pending")?.unwrap_or(64);
        if max_header == 0 || max_pending == 0 {
            return Err("max_header and max_pending must be at least 1".into());
        }
        Ok(HttpLog {
            flows: FlowSlab::default(),
            limits: Limits {
                max_header,
                max_pending: usize::try_from(max_pending).unwrap_or(usize::MAX),
            },
            buffer: u32::try_from(buffer.max(1)).map_err(|_| "buffer: more than 4 GiB")?,
            scratch: Vec::new(),
            out: Vec::new(),
        })
    }

    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with(EventKind::ConnEnd, Hook::Snd)
            .buffers(Buffer::AtLeast(self.buffer))
    }

    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let Some(idx) = self.entry(cx, ev.flow) else {
            return;
        };
        self.parse(cx, ev.flow, idx);
        if ev.kind != EventKind::ConnEnd {
            return;
        }
        let flags = self.flows.flags(cx, ev.flow);
        if flags & FIRST_SIDE_ENDED == 0 {
            self.flows.set_flags(cx, ev.flow, flags | FIRST_SIDE_ENDED);
            return;
        }
        if let Some(mut f) = self.flows.release(idx) {
            f.finish(&mut self.out);
            for line in self.out.drain(..) {
                let _ = cx.emit(&line);
            }
        }
    }
}

// The macro's items are the library's entry point, not API (and carry no docs).
#[allow(missing_docs, unreachable_pub)]
mod export {
    flowpeek_plugin_api::export_monitor!(crate::HttpLog);
}

#[cfg(test)]
mod tests;
