//! Simultaneous open and split handshakes (3-, 4- and 5-way): the exact events of each, one
//! packet per batch, and suricata-verify's `tcp-split-handshake-*` captures through the
//! event log (docs/SPEC.md §5.1 says which transitions follow RFC 793 and where mOS
//! shows something else).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use flowpeek::flow::{Config, Side};

/// The client's SYN, as seen by both sides.
const SYN_EVENTS: &[&str] = &[
    "cli snd PKT_IN",
    "cli snd CONN_START",
    "cli snd TCP_STATE_CHANGE SYN_SENT",
    "svr rcv PKT_IN",
    "svr rcv CONN_START",
    "svr rcv TCP_STATE_CHANGE SYN_RCVD",
];

/// The server's own SYN, without ACK.
fn server_syn(c: &Conn) -> Seg {
    Seg::new(c.svr, c.cli).seq(c.sisn).flags(SYN)
}

/// The client's SYN/ACK, acknowledging the server's SYN.
fn client_synack(c: &Conn) -> Seg {
    Seg::new(c.cli, c.svr)
        .seq(c.cisn)
        .ack(c.sisn.wrapping_add(1))
        .flags(SYN | ACK)
}

/// Client data then server data through the opened connection: both streams start at the
/// right sequence number.
fn exchange_data(net: &mut Net, c: &Conn) {
    net.each(&[c.c(0, 0, PSH | ACK).data(&pattern(100, 1))]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 100"
        ])
    );
    net.each(&[c.s(0, 100, PSH | ACK).data(&pattern(50, 2))]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli null CONN_NEW_DATA 50"
        ])
    );
}

#[test]
fn simultaneous_open_each_side_through_syn_rcvd() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(Config::default(), rec);
    let c = Conn::v4();
    net.each(&[c.syn()]);
    assert_eq!(net.take(), strs(SYN_EVENTS));
    // RFC 793 §3.4: SYN_SENT + SYN -> SYN_RCVD (flowpeek raised Rexmit here before).
    net.each(&[server_syn(&c)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE SYN_RCVD"
        ])
    );
    // Each SYN/ACK acknowledges its receiver's SYN: ESTABLISHED there.
    net.each(&[client_synack(&c)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
    net.each(&[c.synack()]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
    exchange_data(&mut net, &c);
    // Only now is a SYN/ACK seen again a retransmission.
    net.each(&[c.synack()]);
    assert_eq!(
        net.take(),
        strs(&["svr snd PKT_IN", "cli rcv PKT_IN", "cli rcv REXMIT"])
    );
    assert_eq!(read.borrow()[Side::Server.index()], pattern(100, 1));
    assert_eq!(read.borrow()[Side::Client.index()], pattern(50, 2));
}

/// SYN, SYN, SYN/ACK, ACK: the server answers the SYN with a SYN of its own.
#[test]
fn four_way_split_handshake() {
    let log = new_log();
    let mut net = Net::simple(Config::default(), Recorder::new(&log).consuming());
    let c = Conn::v4();
    net.each(&[c.syn(), server_syn(&c)]);
    assert_eq!(
        net.take(),
        cat(&[
            strs(SYN_EVENTS),
            strs(&[
                "svr snd PKT_IN",
                "cli rcv PKT_IN",
                "cli rcv TCP_STATE_CHANGE SYN_RCVD"
            ]),
        ])
    );
    net.each(&[client_synack(&c)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
    net.each(&[c.s(0, 0, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
    exchange_data(&mut net, &c);
}

/// SYN, ACK, SYN, SYN/ACK, ACK: the server first acknowledges the SYN alone.
#[test]
fn five_way_split_handshake() {
    let log = new_log();
    let mut net = Net::simple(Config::default(), Recorder::new(&log).consuming());
    let c = Conn::v4();
    let bare_ack = Seg::new(c.svr, c.cli)
        .seq(c.sisn.wrapping_sub(7000))
        .ack(c.cisn.wrapping_add(1))
        .flags(ACK);
    net.each(&[c.syn()]);
    net.take();
    // The server opens as its ACK says (a lost SYN/ACK must not stall it, SPEC §5); the
    // client, in SYN_SENT, ignores an ACK without SYN (RFC 793).
    net.each(&[bare_ack]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "svr snd TCP_STATE_CHANGE ESTABLISHED",
            "cli rcv PKT_IN"
        ])
    );
    net.each(&[server_syn(&c)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE SYN_RCVD"
        ])
    );
    // The server is open already: to it the SYN/ACK repeats the client's SYN (as in mOS).
    net.each(&[client_synack(&c)]);
    assert_eq!(
        net.take(),
        strs(&["cli snd PKT_IN", "svr rcv PKT_IN", "svr rcv REXMIT"])
    );
    net.each(&[c.s(0, 0, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
    // The stream the client receives starts after the server's SYN, not at the bare ACK.
    exchange_data(&mut net, &c);
}

/// The ordinary three-way handshake is unchanged.
#[test]
fn three_way_handshake_unchanged() {
    let log = new_log();
    let mut net = Net::simple(Config::default(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    assert_eq!(net.take(), handshake_events());
}

fn cat(parts: &[Vec<String>]) -> Vec<String> {
    parts.concat()
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/public/suricata-verify")
}

/// `flowpeek events` lines as "side hook EVENT [state|contig|reason]".
fn compact(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let mut s = format!(
                "{} {} {}",
                v["side"].as_str().unwrap(),
                v["hook"].as_str().unwrap(),
                v["event"].as_str().unwrap()
            );
            for extra in ["state", "reason"] {
                if let Some(x) = v.get(extra).and_then(|x| x.as_str()) {
                    s.push(' ');
                    s.push_str(x);
                }
            }
            if let Some(x) = v.get("contig").and_then(|x| x.as_u64()) {
                s.push_str(&format!(" {x}"));
            }
            s
        })
        .collect()
}

/// The end of the corpus cases: 4 bytes of request, the server's ACK, the client's RST.
fn request_then_rst() -> Vec<String> {
    let mut v = strs(&[
        "cli snd PKT_IN",
        "svr rcv PKT_IN",
        "svr null CONN_NEW_DATA 4",
        "svr snd PKT_IN",
        "cli rcv PKT_IN",
        "cli snd PKT_IN",
        "cli snd TCP_STATE_CHANGE CLOSED",
        "svr rcv PKT_IN",
        "svr rcv TCP_STATE_CHANGE CLOSED",
    ]);
    for side in ["svr", "cli"] {
        for hook in ["rcv", "snd"] {
            v.push(format!("{side} {hook} TCP_STATE_CHANGE CLOSED"));
            v.push(format!("{side} {hook} CONN_END rst"));
        }
    }
    v
}

#[test]
fn corpus_split_handshakes() {
    let cfg = Config::mos();
    let four = flowpeek::trace::run(
        &corpus().join("tcp-split-handshake-01-4whs/split-handshake-4whs.pcap"),
        cfg.clone(),
        1,
    )
    .unwrap();
    let want = cat(&[
        strs(SYN_EVENTS),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE SYN_RCVD",
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE ESTABLISHED",
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE ESTABLISHED",
        ]),
        request_then_rst(),
    ]);
    assert_eq!(compact(&four), want, "4-way");
    let five = flowpeek::trace::run(
        &corpus().join("tcp-split-handshake-02-5whs/split-handshake-5whs.pcap"),
        cfg,
        1,
    )
    .unwrap();
    let want = cat(&[
        strs(SYN_EVENTS),
        strs(&[
            "svr snd PKT_IN",
            "svr snd TCP_STATE_CHANGE ESTABLISHED",
            "cli rcv PKT_IN",
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE SYN_RCVD",
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr rcv REXMIT",
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE ESTABLISHED",
        ]),
        request_then_rst(),
    ]);
    assert_eq!(compact(&five), want, "5-way");
}
