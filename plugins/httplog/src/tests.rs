//! The parser against streams delivered in pieces, twice, out of order, or cut short.

use super::*;

/// The flow fields a test flow's records open with (`records::push_flow_fields` in use).
const FLOW: &str = r#""uid":"00000000000000ab","client":"10.0.0.1:5555","server":"10.0.0.2:80""#;

/// A direction's bytes; `bytes` lends them as two slices cut at `split` to exercise the
/// ring-buffer case, and nothing before `head` (discarded).
struct Stream {
    data: Vec<u8>,
    head: u64,
    split: u64,
}

impl Stream {
    fn new(data: &[u8]) -> Stream {
        Stream {
            data: data.to_vec(),
            head: 0,
            split: data.len() as u64 / 2,
        }
    }
}

impl Source for Stream {
    fn bytes(&self, off: u64, len: usize) -> Option<(&[u8], &[u8])> {
        if off < self.head || off >= self.data.len() as u64 {
            return None;
        }
        let end = (off + len as u64).min(self.data.len() as u64);
        let (o, e) = (off as usize, end as usize);
        if off < self.split && end > self.split {
            let s = self.split as usize;
            Some((&self.data[o..s], &self.data[s..e]))
        } else {
            Some((&self.data[o..e], &[]))
        }
    }
}

const LIMITS: Limits = Limits {
    max_header: 16 * 1024,
    max_pending: 64,
};

/// Feeds `req` and `resp` to a flow, the contiguous ends growing along `steps` (pairs of
/// request and response contiguous ends, repeated values meaning duplicate deliveries).
fn run(req: &[u8], resp: &[u8], steps: &[(u64, u64)]) -> Vec<String> {
    let (req, resp) = (Stream::new(req), Stream::new(resp));
    let mut f = HttpFlow::new(FLOW.into());
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for (t, &(a, b)) in steps.iter().enumerate() {
        // A contiguous end never passes the bytes stored.
        let (a, b) = (a.min(req.data.len() as u64), b.min(resp.data.len() as u64));
        f.advance(
            Some((&req, a)),
            Some((&resp, b)),
            t as u64 * 1_000_000_000,
            LIMITS,
            &mut scratch,
            &mut out,
        );
    }
    f.finish(&mut out);
    out
}

/// Every prefix length of both streams, one byte at a time, each delivered twice.
fn byte_by_byte(req: &[u8], resp: &[u8]) -> Vec<(u64, u64)> {
    let mut steps = Vec::new();
    for a in 0..=req.len() as u64 {
        steps.push((a, 0));
        steps.push((a, 0));
    }
    for b in 0..=resp.len() as u64 {
        steps.push((req.len() as u64, b));
        steps.push((req.len() as u64, b));
    }
    steps
}

/// The records without their timestamps (which follow the pace of delivery).
fn strip(v: Vec<String>) -> Vec<String> {
    v.into_iter()
        .map(|l| {
            let (a, b) = l.split_once(r#","ts":"#).unwrap();
            let b = &b[b.find(',').unwrap()..];
            format!("{a}{b}")
        })
        .collect()
}

fn all(req: &[u8], resp: &[u8]) -> Vec<(u64, u64)> {
    vec![(req.len() as u64, resp.len() as u64)]
}

const GET: &[u8] = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

fn pair(ts: &str, method: &str, path: &str, status: &str, req_cl: &str, resp_cl: &str) -> String {
    format!(
        r#"{{"uid":"00000000000000ab","client":"10.0.0.1:5555","server":"10.0.0.2:80","ts":{ts},"method":{method},"host":"example.com","path":{path},"status":{status},"req_content_length":{req_cl},"resp_content_length":{resp_cl},"req_chunked":false,"resp_chunked":false}}"#
    )
}

#[test]
fn one_exchange_at_once() {
    let out = run(GET, OK, &all(GET, OK));
    assert_eq!(
        out,
        [pair(
            "0.000000",
            r#""GET""#,
            r#""/a?b=1""#,
            "200",
            "null",
            "5"
        )]
    );
}

#[test]
fn split_and_duplicated_deliveries_give_the_same_records() {
    let mut req = GET.to_vec();
    req.extend_from_slice(
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n\r\nabcd",
    );
    req.extend_from_slice(b"\r\nGET /c HTTP/1.0\nHost: example.com\n\n");
    let mut resp = OK.to_vec();
    resp.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    resp.extend_from_slice(
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
    );
    resp.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
    let whole = run(&req, &resp, &all(&req, &resp));
    assert_eq!(whole.len(), 3, "{whole:#?}");
    assert!(whole[1].contains(r#""method":"POST","#), "{}", whole[1]);
    assert!(whole[1].contains(r#""status":201,"req_content_length":4,"#));
    assert!(whole[1].contains(r#""resp_chunked":true"#));
    assert!(whole[2].contains(r#""path":"/c","status":304,"#));
    // Timestamps differ with the pace of delivery; the rest must not.
    let slow = run(&req, &resp, &byte_by_byte(&req, &resp));
    assert_eq!(strip(slow), strip(whole.clone()));
    // Interleaved: the response arrives while the request is still coming (its NewData
    // first), and then the rest.
    let steps = [
        (10, 0),
        (10, 10),
        (60, 40),
        (60, 40),
        (200, 120),
        all(&req, &resp)[0],
    ];
    assert_eq!(strip(run(&req, &resp, &steps)), strip(whole));
}

#[test]
fn out_of_order_data_waits_for_the_gap() {
    // The contiguous end stays at 20 while later segments wait; nothing is parsed until the
    // gap fills, then everything at once.
    let out = run(GET, OK, &[(20, 0), (20, 0), (20, 0), (GET.len() as u64, 0)]);
    assert_eq!(out.len(), 1);
    assert!(out[0].contains(r#""status":null"#), "{}", out[0]);
    let out = run(GET, OK, &[(20, 0), all(GET, OK)[0]]);
    assert_eq!(strip(out), strip(run(GET, OK, &all(GET, OK))));
}

#[test]
fn head_response_and_connect_have_no_body() {
    let req =
        b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let out = run(req, resp, &all(req, resp));
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(out[0].contains(r#""method":"HEAD""#) && out[0].contains(r#""status":200"#));
    assert!(out[1].contains(r#""status":404"#));

    let req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n\x16\x03\x01garbage";
    let resp = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03more garbage";
    let out = run(req, resp, &all(req, resp));
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(out[0].contains(
        r#""method":"CONNECT","host":"example.com","path":"example.com:443","status":200"#
    ));
}

#[test]
fn upgrade_stops_both_directions() {
    let req = b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
    let resp = b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi";
    let out = run(req, resp, &all(req, resp));
    assert_eq!(out.len(), 1, "{out:#?}");
    assert!(out[0].contains(r#""status":101"#));
}

#[test]
fn response_without_request_and_until_close() {
    let resp = b"HTTP/1.0 200 OK\r\n\r\nbody until close HTTP/1.1 200 OK\r\n\r\n";
    let out = run(b"", resp, &all(b"", resp));
    assert_eq!(
        out,
        [
            r#"{"uid":"00000000000000ab","client":"10.0.0.1:5555","server":"10.0.0.2:80","ts":0.000000,"method":null,"host":null,"path":null,"status":200,"req_content_length":null,"resp_content_length":null,"req_chunked":false,"resp_chunked":false}"#
        ]
    );
}

#[test]
fn oversized_head_is_an_error_once() {
    let mut req = b"GET / HTTP/1.1\r\nX: ".to_vec();
    req.resize(40_000, b'a');
    let out = run(&req, b"", &byte_by_byte(&req[..20_000], b""));
    assert_eq!(
        out,
        [
            r#"{"uid":"00000000000000ab","client":"10.0.0.1:5555","server":"10.0.0.2:80","ts":32768.000000,"dir":"request","offset":0,"error":"header larger than 16384 bytes"}"#
        ]
    );
    // A head that arrives whole is refused as well.
    let out = run(&req, b"", &all(&req, b""));
    assert_eq!(out.len(), 1);
    assert!(out[0].contains("header larger"));
}

#[test]
fn garbage_and_lost_bytes() {
    // Not HTTP from the start: ignored without a record.
    let out = run(b"\x16\x03\x01\x00\xa5\r\n\r\n", b"", &[(9, 0)]);
    assert_eq!(out, Vec::<String>::new());
    // Garbage after a valid request: one error record.
    let mut req = GET.to_vec();
    req.extend_from_slice(b"\x16\x03\x01\x00\xa5\r\n\r\n");
    let out = run(&req, b"", &all(&req, b""));
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(
        out[0].contains(r#""offset":57,"error":"not an HTTP/1.x request line""#),
        "{out:?}"
    );

    let mut s = Stream::new(GET);
    s.head = 10;
    let mut f = HttpFlow::new(FLOW.into());
    let mut out = Vec::new();
    let src: &dyn Source = &s;
    f.advance(
        Some((src, GET.len() as u64)),
        None,
        0,
        LIMITS,
        &mut Vec::new(),
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert!(
        out[0].contains(r#""offset":0,"error":"bytes gone"#),
        "{}",
        out[0]
    );
}

#[test]
fn head_parser() {
    let h = parse_head(
        b"POST /x HTTP/1.1\r\nhost:  a.b \r\nContent-Length: 12\r\n folded\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Dir::Request,
    )
    .unwrap();
    assert_eq!(
        h,
        Head {
            line: StartLine::Request {
                method: "POST".into(),
                target: "/x".into()
            },
            host: Some("a.b".into()),
            content_length: Some(12),
            chunked: true,
        }
    );
    assert_eq!(request_framing(&h), Framing::Chunked);
    let r = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n", Dir::Response).unwrap();
    assert_eq!(r.line, StartLine::Response { status: 204 });
    assert_eq!(response_framing(&r, Some("GET")), Framing::Length(0));
    for bad in [
        &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
        b"HTTP/2 200\r\n\r\n",
        b"\r\n\r\n",
    ] {
        assert!(parse_head(bad, Dir::Response).is_err());
    }
    for bad in [
        &b"GET / HTTP/2\r\n\r\n"[..],
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ] {
        assert!(parse_head(bad, Dir::Request).is_err(), "{bad:?}");
    }
}

#[test]
fn chunk_lines() {
    assert_eq!(parse_chunk_line(b"1a\r\n"), Ok(Some(26)));
    assert_eq!(parse_chunk_line(b"0;ext=1\r\n"), Ok(Some(0)));
    assert_eq!(parse_chunk_line(b"\r\n"), Ok(None));
    assert!(parse_chunk_line(b"zz\r\n").is_err());
    assert!(parse_chunk_line(b"ffffffffffffffffff\r\n").is_err());
}

#[test]
fn json_strings_are_escaped() {
    let mut s = String::new();
    push_str(&mut s, "a\"b\\c\n\u{1}é");
    assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
}
