//! The exact bytes of the shared records: the host's `events` / `streams --json` output and
//! the eventlog / streamhash plugins' are compared against each other and against mOS traces,
//! so any change here is a change of every one of them.

use super::*;
use crate::codes::{ErrorKind, TcpState};

#[test]
fn timestamps_are_secs_and_six_digit_micros() {
    let mut s = String::new();
    push_ts(&mut s, 1_500_000_123_456_789);
    assert_eq!(s, "1500000.123456");
    s.clear();
    push_ts(&mut s, 2_000_000_000);
    assert_eq!(s, "2.000000");
    s.clear();
    push_ts(&mut s, 999);
    assert_eq!(s, "0.000000");
}

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
fn hex_and_close_names() {
    assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    let names: Vec<&str> = EndReason::ALL
        .iter()
        .map(|&r| close_name(Some(r)))
        .collect();
    assert_eq!(
        names,
        ["fin", "rst", "timeout", "evicted", "eof", "eof", "eof", "eof"]
    );
    assert_eq!(close_name(None), "eof");
}

/// A probe with fixed answers that records what it was asked.
struct Fixed {
    addrs: Option<(SocketAddr, SocketAddr)>,
    packet: Option<PacketFields>,
    start: Option<u64>,
    contig: u64,
    asked: Vec<String>,
}

impl EventProbe for Fixed {
    fn addresses(&mut self) -> Option<(SocketAddr, SocketAddr)> {
        self.asked.push("addresses".into());
        self.addrs
    }
    fn start(&mut self) -> Option<u64> {
        self.asked.push("start".into());
        self.start
    }
    fn new_data(&mut self, side: Side) -> u64 {
        self.asked.push(format!("new_data {}", side.short_name()));
        self.contig
    }
    fn last_packet(&mut self) -> Option<PacketFields> {
        self.asked.push("last_packet".into());
        self.packet
    }
}

fn fixed() -> Fixed {
    Fixed {
        addrs: Some((
            "10.0.0.1:40000".parse().unwrap(),
            "[2001:db8::2]:80".parse().unwrap(),
        )),
        packet: Some(PacketFields {
            seq: 4_000_000_000,
            flags: 0x12,
            len: 0,
        }),
        start: Some(1_500_000_123_456_789),
        // Past 2^32: the line prints the 32-bit position.
        contig: (1 << 32) + 7,
        asked: Vec::new(),
    }
}

fn line(
    event: Option<BuiltinEvent>,
    side: Option<Side>,
    hook: Hook,
    detail: Detail,
    probe: &mut Fixed,
) -> String {
    // A reused buffer: the writer replaces its contents.
    let mut out = String::from("stale");
    let ev = EventFields {
        event,
        side,
        hook,
        detail,
    };
    write_event_line(&mut out, &ev, probe);
    out
}

/// (event, side, hook, detail, the line after the flow, what the probe was asked).
type Case = (
    Option<BuiltinEvent>,
    Option<Side>,
    Hook,
    Detail,
    &'static str,
    &'static [&'static str],
);

#[test]
fn event_lines_byte_for_byte() {
    use BuiltinEvent::*;
    // The uid was computed apart from this code (FNV-1a 64 and SplitMix64's finalizer over
    // the bytes docs/records.md lists, in Python).
    const FLOW: &str =
        r#"{"uid":"4b3e5672f4ac1360","client":"10.0.0.1:40000","server":"[2001:db8::2]:80","#;
    let cases: [Case; 9] = [
        (
            Some(PktIn),
            Some(Side::Client),
            Hook::Snd,
            Detail::None,
            r#""side":"cli","hook":"snd","event":"PKT_IN","seq":4000000000,"flags":"SA","len":0}"#,
            &["addresses", "start", "last_packet"],
        ),
        (
            Some(ConnStart),
            Some(Side::Client),
            Hook::Rcv,
            Detail::None,
            r#""side":"cli","hook":"rcv","event":"CONN_START"}"#,
            &["addresses", "start"],
        ),
        (
            Some(NewData),
            Some(Side::Server),
            Hook::None,
            Detail::None,
            r#""side":"svr","hook":"null","event":"CONN_NEW_DATA","contig":7}"#,
            &["addresses", "start", "new_data svr"],
        ),
        (
            // Without a side there is no buffer to ask about.
            Some(NewData),
            None,
            Hook::None,
            Detail::None,
            r#""side":"both","hook":"null","event":"CONN_NEW_DATA"}"#,
            &["addresses", "start"],
        ),
        (
            Some(TcpStateChange),
            Some(Side::Server),
            Hook::Rcv,
            Detail::State(TcpState::SynRcvd),
            r#""side":"svr","hook":"rcv","event":"TCP_STATE_CHANGE","state":"SYN_RCVD"}"#,
            &["addresses", "start"],
        ),
        (
            Some(ConnEnd),
            Some(Side::Client),
            Hook::Snd,
            Detail::End(EndReason::Rst),
            r#""side":"cli","hook":"snd","event":"CONN_END","reason":"rst"}"#,
            &["addresses", "start"],
        ),
        (
            Some(Error),
            Some(Side::Server),
            Hook::None,
            Detail::Error(ErrorKind::OutOfBufferMemory),
            r#""side":"svr","hook":"null","event":"ERROR","error":"OutOfBufferMemory"}"#,
            &["addresses", "start"],
        ),
        (
            Some(Orphan),
            None,
            Hook::None,
            Detail::None,
            r#""side":"both","hook":"null","event":"ORPHAN"}"#,
            &["addresses", "start"],
        ),
        (
            None,
            Some(Side::Client),
            Hook::Snd,
            Detail::None,
            r#""side":"cli","hook":"snd","event":"USER"}"#,
            &["addresses", "start"],
        ),
    ];
    for (event, side, hook, detail, rest, asked) in cases {
        let mut p = fixed();
        assert_eq!(
            line(event, side, hook, detail, &mut p),
            format!("{FLOW}{rest}")
        );
        assert_eq!(p.asked, asked, "{event:?}");
    }
    // Unknown addresses and packet.
    let mut p = Fixed {
        addrs: None,
        packet: None,
        ..fixed()
    };
    assert_eq!(
        line(
            Some(PktIn),
            Some(Side::Client),
            Hook::Snd,
            Detail::None,
            &mut p
        ),
        r#"{"uid":null,"client":null,"server":null,"side":"cli","hook":"snd","event":"PKT_IN"}"#
    );
    // Addresses without a start time (a host that cannot say): no uid either.
    let mut p = Fixed {
        start: None,
        ..fixed()
    };
    let l = line(Some(ConnStart), None, Hook::None, Detail::None, &mut p);
    assert!(
        l.starts_with(r#"{"uid":null,"client":null,"server":null,"#),
        "{l}"
    );
}

#[test]
fn flow_uid_is_the_documented_hash() {
    let c: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::2]:80".parse().unwrap();
    // Values computed apart from this code (see event_lines_byte_for_byte).
    assert_eq!(
        flow_uid(c, v6, 1_500_000_123_456_789),
        0x4b3e_5672_f4ac_1360
    );
    // One nanosecond later is another flow (a 4-tuple reused).
    assert_eq!(
        flow_uid(c, v6, 1_500_000_123_456_790),
        0xcfbf_dbd5_600c_8e9d
    );
    // Client and server are not interchangeable.
    assert_ne!(flow_uid(c, v6, 1), flow_uid(v6, c, 1));
    let mut s = String::from("x");
    push_uid(&mut s, 0xab);
    assert_eq!(s, r#"x"00000000000000ab""#);
}

#[test]
fn json_strings_are_escaped() {
    let cases: [(&str, &str); 6] = [
        ("plain", r#""plain""#),
        ("", r#""""#),
        ("a\"b\\c", r#""a\"b\\c""#),
        ("line\nnext\r\ttab", r#""line\nnext\r\ttab""#),
        // JSON requires U+0000 to U+001F escaped; DEL may stay as it is.
        ("\u{0}\u{1f}\u{7f}", "\"\\u0000\\u001f\u{7f}\""),
        ("é→😀/", "\"é→😀/\""),
    ];
    for (raw, want) in cases {
        let mut s = String::new();
        push_json_str(&mut s, raw);
        assert_eq!(s, want, "{raw:?}");
        // And a JSON parser reads back the original.
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, raw);
    }
    // Every control character and a mix of everything round-trips.
    let all: String = (0u32..0x80).filter_map(char::from_u32).collect::<String>() + "ü\u{2028}";
    let mut s = String::new();
    push_json_str(&mut s, &all);
    assert_eq!(serde_json::from_str::<String>(&s).unwrap(), all);
}

#[test]
fn stream_record_byte_for_byte() {
    let sha = "ab".repeat(32);
    let rec = StreamFields {
        client: "192.0.2.1:51000".parse().unwrap(),
        server: "[2001:db8::1]:443".parse().unwrap(),
        start: 1_500_000_123_456_789,
        end: 2_000_000_000,
        close: close_name(Some(EndReason::Fin)),
        partial: false,
        buffer_refused: false,
        c2s: DirectionFields {
            sha256: Some(&sha),
            crc32: Some(0x0012_abcd),
            ..DirectionFields::counts(1234, 5, 6)
        },
        s2c: DirectionFields {
            crc32: Some(0),
            ..DirectionFields::counts(0, 0, 0)
        },
    };
    assert_eq!(
        rec.to_json(),
        format!(
            concat!(
                r#"{{"uid":"c01d38ece7881bf3","client":"192.0.2.1:51000","server":"[2001:db8::1]:443","#,
                r#""start":1500000.123456,"end":2.000000,"close":"fin","#,
                r#""c2s":{{"bytes":1234,"missing":5,"overlap":6,"crc32":"0012abcd","sha256":"{}"}},"#,
                r#""s2c":{{"bytes":0,"missing":0,"overlap":0,"crc32":"00000000"}}}}"#
            ),
            sha
        )
    );
    let gaps = [
        Gap { offset: 10, len: 5 },
        Gap {
            offset: 100,
            len: 1,
        },
    ];
    let xxh = StreamFields {
        partial: true,
        buffer_refused: true,
        close: close_name(None),
        c2s: DirectionFields {
            sha256: None,
            crc32: None,
            xxh3: Some(0xfeed),
            file: Some("dir/a\"b"),
            gaps: Some((&gaps, 3)),
            ..rec.c2s
        },
        s2c: DirectionFields {
            file: Some("x"),
            gaps: Some((&[], 0)),
            ..rec.s2c
        },
        ..rec
    };
    let text = xxh.to_json();
    assert_eq!(
        text,
        concat!(
            r#"{"uid":"c01d38ece7881bf3","client":"192.0.2.1:51000","server":"[2001:db8::1]:443","#,
            r#""start":1500000.123456,"end":2.000000,"close":"eof","partial":true,"buffer_refused":true,"#,
            r#""c2s":{"bytes":1234,"missing":5,"overlap":6,"xxh3":"000000000000feed","file":"dir/a\"b","gaps":[[10,5],[100,1]],"gaps_dropped":3},"#,
            r#""s2c":{"bytes":0,"missing":0,"overlap":0,"crc32":"00000000","file":"x","gaps":[]}}"#
        )
    );
    // Both parse, and the writer appends (a reused buffer keeps what was before).
    let mut buf = String::from("[");
    rec.write_json(&mut buf);
    buf.push(',');
    xxh.write_json(&mut buf);
    buf.push(']');
    let v: serde_json::Value = serde_json::from_str(&buf).unwrap();
    assert_eq!(v[1]["c2s"]["file"], "dir/a\"b");
    assert_eq!(v[0]["start"].as_f64(), Some(1_500_000.123_456));
}

/// The fmt-free writers give exactly what `core::fmt` gives: decimal, zero-padded hex,
/// timestamps and socket addresses, at the edges and on a spread of values.
#[test]
fn number_writers_match_core_fmt() {
    let mut values: Vec<u64> = vec![0, 1, 9, 10, 99, 100, u64::from(u32::MAX), u64::MAX];
    values.extend((0..20).map(|k| 10u64.pow(k)));
    values.extend((1..20).map(|k| 10u64.pow(k) - 1));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        values.push(x);
        values.push(x >> (x % 64));
    }
    let mut out = String::new();
    for &v in &values {
        out.clear();
        push_u64(&mut out, v);
        assert_eq!(out, v.to_string());
        out.clear();
        push_hex_digits(&mut out, v, 16);
        assert_eq!(out, format!("{v:016x}"));
        out.clear();
        push_hex_digits(&mut out, v & 0xffff_ffff, 8);
        assert_eq!(out, format!("{:08x}", v & 0xffff_ffff));
        out.clear();
        push_ts(&mut out, v);
        assert_eq!(
            out,
            format!("{}.{:06}", v / 1_000_000_000, (v % 1_000_000_000) / 1000)
        );
        out.clear();
        push_uid(&mut out, v);
        assert_eq!(out, format!("\"{v:016x}\""));
        let a = SocketAddr::from((std::net::Ipv4Addr::from(v as u32), (v >> 32) as u16));
        out.clear();
        push_socket_addr(&mut out, &a);
        assert_eq!(out, a.to_string());
    }
    for s in [
        "[::1]:80",
        "[2001:db8::7]:65535",
        "[fe80::1%2]:443",
        "0.0.0.0:0",
    ] {
        let a: SocketAddr = s.parse().unwrap();
        out.clear();
        push_socket_addr(&mut out, &a);
        assert_eq!(out, a.to_string());
    }
}
