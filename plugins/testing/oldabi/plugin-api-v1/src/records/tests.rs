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
    contig: u64,
    asked: Vec<String>,
}

impl EventProbe for Fixed {
    fn addresses(&mut self) -> Option<(SocketAddr, SocketAddr)> {
        self.asked.push("addresses".into());
        self.addrs
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
    const FLOW: &str = r#"{"flow":"10.0.0.1:40000>[2001:db8::2]:80","#;
    let cases: [Case; 9] = [
        (
            Some(PktIn),
            Some(Side::Client),
            Hook::Snd,
            Detail::None,
            r#""side":"cli","hook":"snd","event":"PKT_IN","seq":4000000000,"flags":"SA","len":0}"#,
            &["addresses", "last_packet"],
        ),
        (
            Some(ConnStart),
            Some(Side::Client),
            Hook::Rcv,
            Detail::None,
            r#""side":"cli","hook":"rcv","event":"CONN_START"}"#,
            &["addresses"],
        ),
        (
            Some(NewData),
            Some(Side::Server),
            Hook::None,
            Detail::None,
            r#""side":"svr","hook":"null","event":"CONN_NEW_DATA","contig":7}"#,
            &["addresses", "new_data svr"],
        ),
        (
            // Without a side there is no buffer to ask about.
            Some(NewData),
            None,
            Hook::None,
            Detail::None,
            r#""side":"both","hook":"null","event":"CONN_NEW_DATA"}"#,
            &["addresses"],
        ),
        (
            Some(TcpStateChange),
            Some(Side::Server),
            Hook::Rcv,
            Detail::State(TcpState::SynRcvd),
            r#""side":"svr","hook":"rcv","event":"TCP_STATE_CHANGE","state":"SYN_RCVD"}"#,
            &["addresses"],
        ),
        (
            Some(ConnEnd),
            Some(Side::Client),
            Hook::Snd,
            Detail::End(EndReason::Rst),
            r#""side":"cli","hook":"snd","event":"CONN_END","reason":"rst"}"#,
            &["addresses"],
        ),
        (
            Some(Error),
            Some(Side::Server),
            Hook::None,
            Detail::Error(ErrorKind::OutOfBufferMemory),
            r#""side":"svr","hook":"null","event":"ERROR","error":"OutOfBufferMemory"}"#,
            &["addresses"],
        ),
        (
            Some(Orphan),
            None,
            Hook::None,
            Detail::None,
            r#""side":"both","hook":"null","event":"ORPHAN"}"#,
            &["addresses"],
        ),
        (
            None,
            Some(Side::Client),
            Hook::Snd,
            Detail::None,
            r#""side":"cli","hook":"snd","event":"USER"}"#,
            &["addresses"],
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
        r#"{"flow":"?","side":"cli","hook":"snd","event":"PKT_IN"}"#
    );
}

#[cfg(feature = "json")]
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
            bytes: 1234,
            missing: 5,
            overlap: 6,
            sha256: Some(&sha),
            crc32: Some(0x0012_abcd),
            xxh3: None,
        },
        s2c: DirectionFields {
            bytes: 0,
            missing: 0,
            overlap: 0,
            sha256: None,
            crc32: Some(0),
            xxh3: None,
        },
    };
    assert_eq!(
        rec.to_json(),
        format!(
            concat!(
                r#"{{"c2s":{{"bytes":1234,"crc32":"0012abcd","missing":5,"overlap":6,"sha256":"{}"}},"#,
                r#""client":"192.0.2.1:51000","close":"fin","end":2.0,"#,
                r#""s2c":{{"bytes":0,"crc32":"00000000","missing":0,"overlap":0}},"#,
                r#""server":"[2001:db8::1]:443","start":1500000.123456}}"#
            ),
            sha
        )
    );
    let xxh = StreamFields {
        partial: true,
        buffer_refused: true,
        close: close_name(None),
        c2s: DirectionFields {
            sha256: None,
            crc32: None,
            xxh3: Some(0xfeed),
            ..rec.c2s
        },
        ..rec
    };
    assert_eq!(
        xxh.to_json(),
        concat!(
            r#"{"buffer_refused":true,"c2s":{"bytes":1234,"missing":5,"overlap":6,"xxh3":"000000000000feed"},"#,
            r#""client":"192.0.2.1:51000","close":"eof","end":2.0,"partial":true,"#,
            r#""s2c":{"bytes":0,"crc32":"00000000","missing":0,"overlap":0},"#,
            r#""server":"[2001:db8::1]:443","start":1500000.123456}"#
        )
    );
}
