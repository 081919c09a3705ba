//! Scripted packet sequences through the engine with a fake clock, asserting the exact event
//! sequence of SPEC.md §2.1 (calibrated on the mOS reference traces in shared/mos-events).

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use common::*;
use flowpeek::flow::{
    BufferRequest, Config, Cx, EndReason, Event, EventKind, EventSide, Hook, OverlapPolicy, Side,
    Subscriptions,
};
use sha2::{Digest, Sha256};

fn cfg() -> Config {
    Config::default()
}

/// Gaps the receiver acknowledged are skipped at once (no reordering allowance).
fn skip_at_once() -> Config {
    Config {
        gap_skip_after: 0,
        ..cfg()
    }
}

/// The end of a flow destroyed with `reason`, `first` side first (SPEC §2.1 step 5).
fn destroy_events(first: Side, reason: &str) -> Vec<String> {
    let mut v = Vec::new();
    for side in [first, first.peer()] {
        let s = side.short_name();
        for hook in ["rcv", "snd"] {
            v.push(format!("{s} {hook} TCP_STATE_CHANGE CLOSED"));
            v.push(format!("{s} {hook} CONN_END {reason}"));
        }
    }
    v
}

/// What a RST from `sender` brings when it takes effect: both transitions to CLOSED, then
/// the flow's end, receiver first.
fn rst_close_events(sender: Side) -> Vec<String> {
    let (s, r) = (sender.short_name(), sender.peer().short_name());
    let mut v = vec![
        format!("{s} snd TCP_STATE_CHANGE CLOSED"),
        format!("{r} rcv TCP_STATE_CHANGE CLOSED"),
    ];
    v.extend(destroy_events(sender.peer(), "rst"));
    v
}

fn cat(parts: &[Vec<String>]) -> Vec<String> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------
// 1. Normal lifecycle
// ---------------------------------------------------------------------------------------

#[test]
fn normal_lifecycle() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(
        Config {
            tw_interval: 0,
            ..cfg()
        },
        rec,
    );
    let c = Conn::v4();
    let req = pattern(100, 1);
    let resp = pattern(200, 2);

    net.each(&c.handshake());
    assert_eq!(net.take(), handshake_events());

    net.batch(&[c.c(0, 0, PSH | ACK).data(&req)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 100"
        ])
    );

    net.batch(&[c.s(0, 100, PSH | ACK).data(&resp)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli null CONN_NEW_DATA 200"
        ])
    );

    net.batch(&[c.c(100, 200, ACK)]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));

    // The client closes first; the server's FIN/ACK acknowledges it; the last ACK ends it.
    net.batch(&[c.c(100, 200, FIN | ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "cli snd TCP_STATE_CHANGE FIN_WAIT_1",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE CLOSE_WAIT",
        ])
    );
    net.batch(&[c.s(200, 101, FIN | ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "svr snd TCP_STATE_CHANGE LAST_ACK",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE TIME_WAIT",
        ])
    );
    net.batch(&[c.c(101, 201, ACK)]);
    assert_eq!(
        net.take(),
        cat(&[
            strs(&[
                "cli snd PKT_IN",
                "svr rcv PKT_IN",
                "svr rcv TCP_STATE_CHANGE CLOSED"
            ]),
            destroy_events(Side::Server, "fin"),
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], req);
    assert_eq!(read.borrow()[Side::Client.index()], resp);
    assert_eq!(net.engine.stats().flows_live, 0);

    // Nothing left for later batches.
    net.advance(60 * SEC);
    assert!(net.take().is_empty());
}

/// NewData is coalesced per batch: two data segments in one batch give one event, at the
/// end of the batch, after both packets' callbacks.
#[test]
fn new_data_coalesced_per_batch() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log).consuming());
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&[b'a'; 10]),
        c.c(10, 0, PSH | ACK).data(&[b'b'; 20]),
        c.s(0, 30, ACK),
    ]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "svr null CONN_NEW_DATA 30",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// 2. RST
// ---------------------------------------------------------------------------------------

#[test]
fn rst_from_client() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[c.c(0, 0, RST | ACK)]);
    // The server's direction is open: the RST lingers (SPEC §3.1).
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
    assert_eq!(
        close_events_after_the_linger(&mut net),
        rst_close_events(Side::Client)
    );
    assert_eq!(net.engine.stats().flows_live, 0);
    assert_eq!(net.engine.stats().rst_ignored, 0);
}

#[test]
fn rst_from_server() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[c.s(0, 0, RST)]);
    assert_eq!(net.take(), strs(&["svr snd PKT_IN", "cli rcv PKT_IN"]));
    assert_eq!(
        close_events_after_the_linger(&mut net),
        rst_close_events(Side::Server)
    );
    assert_eq!(net.engine.stats().flows_live, 0);
}

/// Without a reordering allowance (`--profile mos`), a RST ends the flow at once, as in mOS.
#[test]
fn rst_ends_the_flow_at_once_without_allowance() {
    let log = new_log();
    let mut net = Net::simple(skip_at_once(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[c.s(0, 0, RST)]);
    assert_eq!(
        net.take(),
        cat(&[
            strs(&[
                "svr snd PKT_IN",
                "svr snd TCP_STATE_CHANGE CLOSED",
                "cli rcv PKT_IN",
                "cli rcv TCP_STATE_CHANGE CLOSED",
            ]),
            destroy_events(Side::Client, "rst"),
        ])
    );
    assert_eq!(net.engine.stats().flows_live, 0);
}

#[test]
fn blind_rst_out_of_window_is_ignored() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    // Far outside the server's receive window.
    net.batch(&[c.c(0x4000_0000, 0, RST)]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
    assert_eq!(net.engine.stats().rst_ignored, 1);
    assert_eq!(net.engine.stats().flows_live, 1);
    // The flow goes on.
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"hello")]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 5"
        ])
    );
}

// ---------------------------------------------------------------------------------------
// 3. Retransmitted SYN, SYN/ACK, FIN
// ---------------------------------------------------------------------------------------

#[test]
fn retransmitted_syn_raises_rexmit_not_conn_start() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&[c.syn()]);
    net.take();
    net.each(&[c.syn()]);
    // SPEC §6: mOS re-raises CONN_START and TCP_STATE_CHANGE(SYN_RCVD); flowpeek raises Rexmit.
    assert_eq!(
        net.take(),
        strs(&["cli snd PKT_IN", "svr rcv PKT_IN", "svr rcv REXMIT"])
    );
}

#[test]
fn retransmitted_synack_raises_rexmit_after_pkt_in() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&[c.syn(), c.synack()]);
    net.take();
    net.each(&[c.synack()]);
    assert_eq!(
        net.take(),
        strs(&["svr snd PKT_IN", "cli rcv PKT_IN", "cli rcv REXMIT"])
    );
    net.each(&[c.c(0, 0, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
}

#[test]
fn retransmitted_fin_raises_rexmit() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    net.each(&[c.c(0, 0, FIN | ACK)]);
    net.take();
    net.each(&[c.c(0, 0, FIN | ACK)]);
    assert_eq!(
        net.take(),
        strs(&["cli snd PKT_IN", "svr rcv PKT_IN", "svr rcv REXMIT"])
    );
}

// ---------------------------------------------------------------------------------------
// 4. Out of order
// ---------------------------------------------------------------------------------------

/// A hook logging the fragments of the receiver's buffer at `Rcv` `PktIn`.
fn log_fragments(cx: &mut Cx<'_>, ev: &Event, out: &mut Vec<String>) {
    if ev.kind == EventKind::PktIn && ev.hook == Hook::Rcv {
        let side = side_of(ev).unwrap();
        let frags: Vec<(u64, u64)> = cx.fragments(ev.flow, side).unwrap().collect();
        out.push(format!("frags {frags:?}"));
    }
}

#[test]
fn out_of_order_segments_deliver_once_when_gap_fills() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(log_fragments);
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let data = pattern(300, 9);
    let seg = |i: usize| {
        c.c(i as u32 * 100, 0, PSH | ACK)
            .data(&data[i * 100..(i + 1) * 100])
    };
    net.batch(&[seg(1)]);
    assert_eq!(
        net.take(),
        strs(&["cli snd PKT_IN", "svr rcv PKT_IN", "frags [(100, 100)]"])
    );
    net.batch(&[seg(2)]);
    assert_eq!(
        net.take(),
        strs(&["cli snd PKT_IN", "svr rcv PKT_IN", "frags [(100, 200)]"])
    );
    net.batch(&[seg(0)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "frags [(0, 300)]",
            "svr null CONN_NEW_DATA 300"
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], data);
}

// ---------------------------------------------------------------------------------------
// 5. Overlap policies
// ---------------------------------------------------------------------------------------

fn overlap_case(policy: OverlapPolicy) -> (Vec<String>, Vec<u8>, Vec<u8>) {
    let log = new_log();
    let stored = Rc::new(RefCell::new(Vec::new()));
    let st = stored.clone();
    let rec = Recorder::new(&log).consuming().hook(move |cx, ev, _| {
        if ev.kind == EventKind::NewData {
            let mut buf = [0u8; 150];
            let n = cx.ppeek(ev.flow, Side::Server, &mut buf, 0).unwrap();
            st.borrow_mut().extend_from_slice(&buf[..n]);
        }
    });
    let read = rec.read_handle();
    let mut net = Net::simple(
        Config {
            overlap: policy,
            ..cfg()
        },
        rec,
    );
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&[b'a'; 100]),
        c.c(50, 0, PSH | ACK).data(&[b'b'; 100]),
    ]);
    let events = net.take();
    let peeked = read.borrow()[Side::Server.index()].clone();
    let ppeeked = stored.borrow().clone();
    (events, peeked, ppeeked)
}

#[test]
fn overlap_first_keeps_first_copy() {
    let (events, peeked, ppeeked) = overlap_case(OverlapPolicy::First);
    assert_eq!(
        events,
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "cli snd PKT_IN",
            "svr rcv REXMIT",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 150",
        ])
    );
    let want = [vec![b'a'; 100], vec![b'b'; 50]].concat();
    assert_eq!(ppeeked, want);
    assert_eq!(peeked, want);
}

#[test]
fn overlap_last_keeps_last_copy() {
    let (events, peeked, ppeeked) = overlap_case(OverlapPolicy::Last);
    assert_eq!(
        events,
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "cli snd PKT_IN",
            "svr rcv REXMIT",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 150",
        ])
    );
    let want = [vec![b'a'; 50], vec![b'b'; 100]].concat();
    assert_eq!(ppeeked, want);
    assert_eq!(peeked, want);
}

/// A pure retransmission of delivered bytes: Rexmit, no NewData.
#[test]
fn retransmitted_data_raises_rexmit_only() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log).consuming());
    let c = Conn::v4();
    net.each(&c.handshake());
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"0123456789")]);
    net.take();
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"0123456789")]);
    assert_eq!(
        net.take(),
        strs(&["cli snd PKT_IN", "svr rcv REXMIT", "svr rcv PKT_IN"])
    );
}

// ---------------------------------------------------------------------------------------
// 6. Gaps never filled
// ---------------------------------------------------------------------------------------

#[test]
fn gap_skipped_when_receiver_acks_past_it() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(log_fragments);
    let read = rec.read_handle();
    let mut net = Net::simple(skip_at_once(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let data = pattern(300, 3);
    net.batch(&[c.c(0, 0, PSH | ACK).data(&data[..100])]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "frags [(0, 100)]",
            "svr null CONN_NEW_DATA 100"
        ])
    );
    // [100, 200) is lost to the capture.
    net.batch(&[c.c(200, 0, PSH | ACK).data(&data[200..])]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "frags [(0, 100), (200, 100)]"
        ])
    );
    // More out-of-order data keeps waiting.
    net.batch(&[c.c(300, 0, PSH | ACK).data(b"tail")]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "frags [(0, 100), (200, 104)]"
        ])
    );
    // The server acknowledges everything: the gap is declared missing.
    net.batch(&[c.s(0, 304, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "frags []",
            "svr null CONN_NEW_DATA 304",
            "svr peek lost 100"
        ])
    );
    let want = [&data[..100], &data[200..], b"tail"].concat();
    assert_eq!(read.borrow()[Side::Server.index()], want);
}

#[test]
fn gap_open_at_eof_still_delivers_data_before_conn_end() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    let data = pattern(300, 4);
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&data[..100]),
        c.c(200, 0, PSH | ACK).data(&data[200..]),
    ]);
    net.take();
    net.engine.finish(EndReason::Eof);
    assert_eq!(
        net.take(),
        cat(&[
            strs(&["svr null CONN_NEW_DATA 300", "svr peek lost 100"]),
            destroy_events(Side::Client, "eof"),
        ])
    );
    let want = [&data[..100], &data[200..]].concat();
    assert_eq!(read.borrow()[Side::Server.index()], want);
}

// ---------------------------------------------------------------------------------------
// 7. Buffer overrun
// ---------------------------------------------------------------------------------------

#[test]
fn overrun_delivers_pending_data_first_then_error_for_non_reader() {
    let log = new_log();
    let lazy_subs = Subscriptions::none()
        .with(EventKind::NewData, Hook::None)
        .with(EventKind::Error, Hook::None)
        .with_buffers(BufferRequest::Default);
    // "lazy" never reads on its own; at the second NewData it peeks once, to see the loss.
    let peeks = Rc::new(Cell::new(0));
    let p = peeks.clone();
    let lazy = Recorder::new(&log)
        .named("lazy")
        .subs(lazy_subs)
        .hook(move |cx, ev, out| {
            if ev.kind == EventKind::NewData {
                p.set(p.get() + 1);
                if p.get() == 2 {
                    let mut buf = [0u8; 16];
                    out.push(format!(
                        "peek {:?}",
                        cx.peek(ev.flow, Side::Server, &mut buf)
                    ));
                }
            }
        });
    let reader = Recorder::new(&log)
        .named("reader")
        .subs(lazy_subs)
        .consuming();
    let read = reader.read_handle();
    let mut net = Net::new(
        Config {
            buffer_capacity: 1024,
            ..cfg()
        },
        &log,
        vec![Box::new(lazy), Box::new(reader)],
    );
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let data = pattern(1500, 5);
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&data[..500]),
        c.c(500, 0, PSH | ACK).data(&data[500..1000]),
        c.c(1000, 0, PSH | ACK).data(&data[1000..]),
    ]);
    assert_eq!(
        net.take(),
        strs(&[
            // Before the third segment's write discards [0, 476): the pending NewData...
            "lazy: svr null CONN_NEW_DATA 1000",
            "reader: svr null CONN_NEW_DATA 1000",
            // ...then Error for the monitor that would lose unread bytes.
            "lazy: svr null ERROR Overrun",
            // End of batch.
            "lazy: svr null CONN_NEW_DATA 1500",
            "lazy: peek Err(Lost(476))",
            "reader: svr null CONN_NEW_DATA 1500",
        ])
    );
    let got = read.borrow()[Side::Server.index()].clone();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    assert_eq!(peeks.get(), 2);
}

/// A consuming reader alone never sees an Error, whatever the batch size.
#[test]
fn consuming_reader_loses_nothing_with_big_batches() {
    let log = new_log();
    let subs = Subscriptions::none()
        .with(EventKind::NewData, Hook::None)
        .with(EventKind::Error, Hook::None)
        .with_buffers(BufferRequest::Default);
    let rec = Recorder::new(&log).subs(subs).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(
        Config {
            buffer_capacity: 1024,
            ..cfg()
        },
        rec,
    );
    let c = Conn::v4();
    net.each(&c.handshake());
    let data = pattern(10_000, 6);
    let segs: Vec<Seg> = data
        .chunks(400)
        .enumerate()
        .map(|(i, ch)| c.c(i as u32 * 400, 0, PSH | ACK).data(ch))
        .collect();
    net.batch(&segs);
    let events = net.take();
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("svr null CONN_NEW_DATA")),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap(), "svr null CONN_NEW_DATA 10000");
    let got = read.borrow()[Side::Server.index()].clone();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
}

// ---------------------------------------------------------------------------------------
// 8. Sequence wrap
// ---------------------------------------------------------------------------------------

#[test]
fn sequence_numbers_wrap_offsets_keep_growing() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4().isn(u32::MAX - 1000, u32::MAX - 10);
    let distance = (1u64 << 32) - u64::from(c.cisn.wrapping_add(1));
    assert_eq!(distance, 1000);
    net.each(&[
        c.syn().mss(1460).wscale(7),
        c.synack().mss(1460).wscale(7),
        c.c(0, 0, ACK),
    ]);
    assert_eq!(net.take(), handshake_events());
    let data = pattern(5000, 8);
    let mut want_events = Vec::new();
    for i in 0..5 {
        let off = i * 1000;
        net.batch(&[
            c.c(off as u32, 0, PSH | ACK).data(&data[off..off + 1000]),
            c.s(0, off as u32 + 1000, ACK),
        ]);
        want_events.extend(strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
        ]));
        want_events.push(format!("svr null CONN_NEW_DATA {}", off + 1000));
    }
    assert_eq!(net.take(), want_events);
    assert!(5000 > distance);
    assert_eq!(read.borrow()[Side::Server.index()], data);
    // The server's stream wraps too (its ISN+1 is u32::MAX - 9).
    let resp = pattern(3000, 1);
    net.batch(&[c.s(0, 5000, PSH | ACK).data(&resp)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli null CONN_NEW_DATA 3000"
        ])
    );
    assert_eq!(read.borrow()[Side::Client.index()], resp);
}

// ---------------------------------------------------------------------------------------
// 9. TIME_WAIT
// ---------------------------------------------------------------------------------------

#[test]
fn time_wait_delays_destruction() {
    let log = new_log();
    let mut net = Net::simple(
        Config {
            tw_interval: 2 * SEC,
            ..cfg()
        },
        Recorder::new(&log),
    );
    let c = Conn::v4();
    net.each(&c.handshake());
    net.each(&[c.c(0, 0, FIN | ACK), c.s(0, 1, FIN | ACK)]);
    net.take();
    let last_ack_ts = net.ts;
    net.each(&[c.c(1, 1, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE CLOSED"
        ])
    );
    assert_eq!(net.engine.stats().flows_live, 1);
    net.engine.advance(last_ack_ts + 2 * SEC - 1);
    assert!(net.take().is_empty());
    net.engine.advance(last_ack_ts + 2 * SEC);
    assert_eq!(net.take(), destroy_events(Side::Client, "fin"));
    assert_eq!(net.engine.stats().flows_live, 0);
}

// ---------------------------------------------------------------------------------------
// 10. Idle timeout
// ---------------------------------------------------------------------------------------

#[test]
fn idle_flow_times_out() {
    let log = new_log();
    let mut net = Net::simple(
        Config {
            tcp_timeout: 5 * SEC,
            ..cfg()
        },
        Recorder::new(&log),
    );
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let last = net.ts - 1_000;
    net.engine.advance(last + 5 * SEC - 1);
    assert!(net.take().is_empty());
    net.engine.advance(last + 5 * SEC);
    assert_eq!(
        net.take(),
        cat(&[
            strs(&["cli null TIMEOUT", "svr null TIMEOUT"]),
            destroy_events(Side::Client, "timeout")
        ])
    );
    assert_eq!(net.engine.stats().flows_timed_out, 1);
    assert_eq!(net.engine.stats().flows_live, 0);
}

#[test]
fn talking_flow_does_not_expire() {
    let log = new_log();
    let mut net = Net::simple(
        Config {
            tcp_timeout: 5 * SEC,
            ..cfg()
        },
        Recorder::new(&log).with_port(),
    );
    let talk = Conn::v4();
    let idle = Conn::new("10.0.0.3:40001", "10.0.0.2:80");
    net.each(&talk.handshake());
    net.each(&idle.handshake());
    net.take();
    for i in 0..6u32 {
        net.ts += 3 * SEC;
        net.batch(&[talk.c(i, 0, PSH | ACK).data(b"x")]);
        let ev = net.take();
        if i == 1 {
            // 6 s after its last packet the idle flow is gone; the talking one stays.
            assert_eq!(
                ev,
                cat(&[
                    strs(&[
                        "40000 cli snd PKT_IN",
                        "40000 svr rcv PKT_IN",
                        "40001 cli null TIMEOUT",
                        "40001 svr null TIMEOUT"
                    ]),
                    destroy_events(Side::Client, "timeout")
                        .into_iter()
                        .map(|e| format!("40001 {e}"))
                        .collect(),
                    strs(&["40000 svr null CONN_NEW_DATA 2"]),
                ])
            );
        } else {
            assert_eq!(
                ev,
                vec![
                    "40000 cli snd PKT_IN".to_string(),
                    "40000 svr rcv PKT_IN".to_string(),
                    format!("40000 svr null CONN_NEW_DATA {}", i + 1),
                ]
            );
        }
    }
    assert_eq!(net.engine.stats().flows_live, 1);
    assert_eq!(net.engine.stats().flows_timed_out, 1);
}

// ---------------------------------------------------------------------------------------
// 11. Eviction
// ---------------------------------------------------------------------------------------

#[test]
fn full_table_evicts_least_recently_active_flow() {
    let log = new_log();
    let mut net = Net::simple(
        Config {
            max_flows: 2,
            ..cfg()
        },
        Recorder::new(&log).with_port(),
    );
    let a = Conn::new("10.0.0.1:1001", "10.0.0.2:80");
    let b = Conn::new("10.0.0.1:1002", "10.0.0.2:80");
    let c3 = Conn::new("10.0.0.1:1003", "10.0.0.2:80");
    net.each(&[a.syn(), b.syn(), a.synack()]);
    net.take();
    net.each(&[c3.syn()]);
    let mut want: Vec<String> = destroy_events(Side::Client, "evicted")
        .into_iter()
        .map(|e| format!("1002 {e}"))
        .collect();
    want.extend(strs(&[
        "1003 cli snd PKT_IN",
        "1003 cli snd CONN_START",
        "1003 cli snd TCP_STATE_CHANGE SYN_SENT",
        "1003 svr rcv PKT_IN",
        "1003 svr rcv CONN_START",
        "1003 svr rcv TCP_STATE_CHANGE SYN_RCVD",
    ]));
    assert_eq!(net.take(), want);
    assert_eq!(net.engine.stats().flows_evicted, 1);
    assert_eq!(net.engine.stats().flows_live, 2);
    // Flow A is still tracked: its ACK completes its handshake.
    net.each(&[a.c(0, 0, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "1001 cli snd PKT_IN",
            "1001 svr rcv PKT_IN",
            "1001 svr rcv TCP_STATE_CHANGE ESTABLISHED"
        ])
    );
}

// ---------------------------------------------------------------------------------------
// 12. Midstream pickup
// ---------------------------------------------------------------------------------------

#[test]
fn midstream_data_creates_partial_flow() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(|cx, ev, out| {
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Snd {
            out.push(format!("partial {:?}", cx.is_partial(ev.flow)));
        }
    });
    let read = rec.read_handle();
    // Without a reordering allowance the guessed start is final at once (with one, see
    // the next test).
    let mut net = Net::simple(skip_at_once(), rec);
    let c = Conn::v4();
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"GET / HTTP/1.0\r\n")]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "partial Ok(true)",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 16"
        ])
    );
    assert_eq!(net.engine.stats().flows_partial, 1);
    // The server's reply (from port 80) belongs to the same flow, server side.
    net.batch(&[c.s(0, 16, PSH | ACK).data(b"HTTP/1.0 200 OK\r\n")]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "partial Ok(true)",
            "cli rcv PKT_IN",
            "cli null CONN_NEW_DATA 17"
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], b"GET / HTTP/1.0\r\n");
}

/// Who is the client of a flow picked up mid-stream (SPEC §3.1): the side on a well-known
/// port is the server, else the side on the lower port, else (equal ports) the first
/// packet's sender is the client, whichever side spoke first.
#[test]
fn midstream_roles_follow_the_ports_not_the_first_packet() {
    for (cli, svr, server_first, first_line) in [
        ("10.0.0.1:40000", "10.0.0.2:80", true, "svr snd PKT_IN"),
        ("10.0.0.1:22382", "10.0.0.2:5201", true, "svr snd PKT_IN"),
        ("10.0.0.1:22382", "10.0.0.2:5201", false, "cli snd PKT_IN"),
        // Equal ports: the first packet's sender is taken for the client.
        ("10.0.0.1:7000", "10.0.0.2:7000", false, "cli snd PKT_IN"),
    ] {
        let log = new_log();
        let mut net = Net::simple(skip_at_once(), Recorder::new(&log));
        let c = Conn::new(cli, svr);
        let first = if server_first {
            c.s(0, 0, PSH | ACK).data(b"reply")
        } else {
            c.c(0, 0, PSH | ACK).data(b"request")
        };
        net.batch(&[first]);
        let got = net.take();
        assert_eq!(
            got.first().map(String::as_str),
            Some(first_line),
            "{cli} {svr}"
        );
    }
}

/// Roles guessed wrong (the client's data from the lower port came before the handshake)
/// are put right by the SYN/ACK, or by the SYN, that follows, while nothing was delivered:
/// the sides swap and the streams go with them (SPEC §3.1).
#[test]
fn a_handshake_after_the_first_packet_names_the_client() {
    for synack_first in [true, false] {
        let log = new_log();
        let rec = Recorder::new(&log).consuming();
        let read = rec.read_handle();
        let mut net = Net::simple(cfg(), rec);
        // The client's port is the lower: the port rule takes it for the server's.
        let c = Conn::new("10.0.0.1:2336", "10.0.0.2:2869");
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"request")]);
        assert_eq!(net.take()[0], "svr snd PKT_IN", "guessed from the ports");
        let handshake = if synack_first {
            vec![c.synack(), c.syn()]
        } else {
            vec![c.syn(), c.synack()]
        };
        net.batch(&handshake);
        let got = net.take();
        // From the handshake on, the sides are named right.
        let first = if synack_first {
            "svr snd PKT_IN"
        } else {
            "cli snd PKT_IN"
        };
        assert_eq!(got[0], first, "SYN/ACK first: {synack_first}: {got:?}");
        net.batch(&[c.s(0, 7, PSH | ACK).data(b"reply")]);
        net.batch(&[c.c(7, 5, FIN | ACK), c.s(5, 8, FIN | ACK), c.c(8, 6, ACK)]);
        assert_eq!(net.engine.stats().flows_live, 0);
        assert_eq!(read.borrow()[Side::Server.index()], b"request");
        assert_eq!(read.borrow()[Side::Client.index()], b"reply");
    }
}

#[test]
fn a_midstream_start_moves_back_for_the_segment_the_first_one_overtook() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    // The second segment of the request is the first packet seen: its start is a guess,
    // and its bytes wait (SPEC §3.1) ...
    net.batch(&[c.c(16, 0, PSH | ACK).data(b"Host: a\r\n\r\n")]);
    let first = net.take();
    assert!(!first.iter().any(|e| e.contains("NEW_DATA")), "{first:?}");
    // ... so that the segment it overtook is placed before it, not dropped as old.
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"GET / HTTP/1.0\r\n")]);
    let second = net.take();
    assert!(!second.iter().any(|e| e.contains("REXMIT")), "{second:?}");
    net.engine.finish(EndReason::Eof);
    let all = net.take();
    assert!(
        all.contains(&"svr null CONN_NEW_DATA 27".to_string()),
        "{all:?}"
    );
    assert_eq!(
        read.borrow()[Side::Server.index()],
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"
    );
}

#[test]
fn midstream_off_gives_orphan() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::Orphan {
            let (src, dst) = cx.addresses(ev.flow).unwrap();
            out.push(format!("{src}>{dst}"));
        }
    });
    let mut net = Net::simple(
        Config {
            midstream: false,
            ..cfg()
        },
        rec,
    );
    let c = Conn::v4();
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"abc")]);
    assert_eq!(
        net.take(),
        strs(&["both null ORPHAN", "10.0.0.1:40000>10.0.0.2:80"])
    );
    assert_eq!(net.engine.stats().orphans, 1);
    assert_eq!(net.engine.stats().flows_created, 0);
}

// ---------------------------------------------------------------------------------------
// 13. User-defined events, per-flow subscriptions, stop monitoring, timers
// ---------------------------------------------------------------------------------------

fn contig_at_least(cx: &mut Cx<'_>, ev: &Event, arg: u64) -> bool {
    let side = side_of(ev).unwrap();
    cx.buffer_info(ev.flow, side)
        .map(|b| b.contig_end >= arg)
        .unwrap_or(false)
}

#[test]
fn user_event_with_filter_fires_right_after_base() {
    let log = new_log();
    let mut net = Net::new(cfg(), &log, vec![Box::new(Recorder::new(&log).consuming())]);
    let ue = net
        .engine
        .define_event(EventKind::NewData, Some(contig_at_least), 100)
        .unwrap();
    assert_eq!(
        net.engine
            .define_event(EventKind::NewData, Some(contig_at_least), 100)
            .unwrap(),
        ue
    );
    let other = net
        .engine
        .define_event(EventKind::NewData, Some(contig_at_least), 200)
        .unwrap();
    assert_ne!(other, ue);
    assert_eq!(ue, EventKind::User(flowpeek::flow::UserEventId(0)));
    net.engine.subscribe(0, ue, Hook::None);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[c.c(0, 0, PSH | ACK).data(&[1; 50])]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 50"
        ])
    );
    net.batch(&[c.c(50, 0, PSH | ACK).data(&[1; 100])]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 150",
            "svr null USER0"
        ])
    );
}

#[test]
fn filterless_user_event_raised_from_callback() {
    let log = new_log();
    let id = Rc::new(Cell::new(None));
    let id2 = id.clone();
    let rec = Recorder::new(&log).hook(move |cx, ev, out| {
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Snd && side_of(ev) == Some(Side::Client)
        {
            let r = cx.raise(ev.flow, EventSide::One(Side::Client), id2.get().unwrap());
            out.push(format!("raise {r:?}"));
        }
    });
    let mut net = Net::new(cfg(), &log, vec![Box::new(rec)]);
    let ue = net.engine.define_event(EventKind::PktIn, None, 0).unwrap();
    id.set(Some(ue));
    net.engine.subscribe(0, ue, Hook::None);
    let c = Conn::v4();
    net.each(&[c.syn()]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "raise Ok(())",
            "cli null USER0",
            "cli snd CONN_START",
            "cli snd TCP_STATE_CHANGE SYN_SENT",
            "svr rcv PKT_IN",
            "svr rcv CONN_START",
            "svr rcv TCP_STATE_CHANGE SYN_RCVD",
        ])
    );
}

#[test]
fn per_flow_subscribe_and_unsubscribe() {
    let log = new_log();
    let subs = Subscriptions::none()
        .with(EventKind::ConnStart, Hook::Snd)
        .with_buffers(BufferRequest::Default);
    let rec = Recorder::new(&log)
        .subs(subs)
        .with_port()
        .hook(|cx, ev, _| {
            let port = cx.addresses(ev.flow).unwrap().0.port();
            if ev.kind == EventKind::ConnStart && port == 1001 {
                cx.subscribe(ev.flow, EventKind::NewData, Hook::None)
                    .unwrap();
            }
            if ev.kind == EventKind::NewData {
                cx.unsubscribe(ev.flow, EventKind::NewData, Hook::None)
                    .unwrap();
            }
        });
    let mut net = Net::simple(cfg(), rec);
    let a = Conn::new("10.0.0.1:1001", "10.0.0.2:80");
    let b = Conn::new("10.0.0.1:1002", "10.0.0.2:80");
    net.each(&a.handshake());
    net.each(&b.handshake());
    assert_eq!(
        net.take(),
        strs(&["1001 cli snd CONN_START", "1002 cli snd CONN_START"])
    );
    net.batch(&[
        a.c(0, 0, PSH | ACK).data(b"aa"),
        b.c(0, 0, PSH | ACK).data(b"bb"),
    ]);
    assert_eq!(net.take(), strs(&["1001 svr null CONN_NEW_DATA 2"]));
    net.batch(&[
        a.c(2, 0, PSH | ACK).data(b"aa"),
        b.c(2, 0, PSH | ACK).data(b"bb"),
    ]);
    assert!(net.take().is_empty());
}

#[test]
fn stop_monitoring_one_side() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::ConnStart && ev.hook == Hook::Snd {
            out.push(format!(
                "stop {:?}",
                cx.stop_monitoring(ev.flow, EventSide::One(Side::Server))
            ));
        }
    });
    // A RST ends the flow at once without the reordering allowance (else it lingers
    // while the other direction is open, SPEC §3.1).
    let mut net = Net::simple(skip_at_once(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(b"req"),
        c.s(0, 3, PSH | ACK).data(b"resp"),
    ]);
    net.batch(&[c.c(3, 4, RST | ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "cli snd CONN_START",
            "stop Ok(())",
            "cli snd TCP_STATE_CHANGE SYN_SENT",
            // SYN/ACK
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE ESTABLISHED",
            // ACK
            "cli snd PKT_IN",
            // data both ways: only the client side's events
            "cli snd PKT_IN",
            "cli rcv PKT_IN",
            "cli null CONN_NEW_DATA 4",
            // RST
            "cli snd PKT_IN",
            "cli snd TCP_STATE_CHANGE CLOSED",
            "cli rcv TCP_STATE_CHANGE CLOSED",
            "cli rcv CONN_END rst",
            "cli snd TCP_STATE_CHANGE CLOSED",
            "cli snd CONN_END rst",
        ])
    );
}

#[test]
fn stop_monitoring_both_ends_at_once_for_that_monitor_only() {
    let log = new_log();
    let stopper = Recorder::new(&log).named("A").hook(|cx, ev, out| {
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Rcv && side_of(ev) == Some(Side::Client)
        {
            out.push(format!(
                "stop {:?}",
                cx.stop_monitoring(ev.flow, EventSide::Both)
            ));
        }
    });
    let other = Recorder::new(&log).named("B").subs(
        Subscriptions::none()
            .with(EventKind::PktIn, Hook::Rcv)
            .with(EventKind::ConnEnd, Hook::Snd),
    );
    // A RST ends the flow at once without the reordering allowance (SPEC §3.1).
    let mut net = Net::new(
        skip_at_once(),
        &log,
        vec![Box::new(stopper), Box::new(other)],
    );
    let c = Conn::v4();
    net.each(&[c.syn()]);
    net.take();
    // SYN/ACK: server-sent packets visit monitors in reverse load order (B, then A).
    net.each(&[c.synack()]);
    assert_eq!(
        net.take(),
        strs(&[
            "A: svr snd PKT_IN",
            "B: cli rcv PKT_IN",
            "A: cli rcv PKT_IN",
            "A: stop Ok(())",
            "A: cli rcv CONN_END stopped",
            "A: cli snd CONN_END stopped",
            "A: svr rcv CONN_END stopped",
            "A: svr snd CONN_END stopped",
            // Nothing more for A: not even the state change of this very packet.
        ])
    );
    net.each(&[c.c(0, 0, ACK), c.c(0, 0, RST | ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "B: svr rcv PKT_IN",
            "B: svr rcv PKT_IN",
            "B: svr snd CONN_END rst",
            "B: cli snd CONN_END rst"
        ])
    );
}

#[test]
fn per_flow_timer_fires_at_end_of_batch_once_due() {
    let log = new_log();
    let rec = Recorder::new(&log)
        .subs(
            Subscriptions::none()
                .with(EventKind::ConnStart, Hook::Snd)
                .with(EventKind::ConnEnd, Hook::Snd),
        )
        .hook(|cx, ev, out| {
            if ev.kind == EventKind::ConnStart {
                out.push(format!("set {:?}", cx.set_timer(ev.flow, SEC, 7)));
                out.push(format!("set {:?}", cx.set_timer(ev.flow, 10 * SEC, 8)));
            }
        })
        .timer_hook(|cx, flow, _, out| {
            out.push(format!(
                "state {:?}",
                cx.tcp_state(flow.unwrap(), Side::Client)
            ));
        });
    // A RST ends the flow at once without the reordering allowance (else it lingers
    // while the other direction is open, SPEC §3.1).
    let mut net = Net::simple(skip_at_once(), rec);
    let c = Conn::v4();
    net.each(&[c.syn()]);
    assert_eq!(
        net.take(),
        strs(&["cli snd CONN_START", "set Ok(())", "set Ok(())"])
    );
    net.advance(SEC / 2);
    net.each(&[c.synack()]);
    assert!(net.take().is_empty());
    net.advance(SEC / 2);
    assert_eq!(net.take(), strs(&["timer 7", "state Ok(Established)"]));
    net.advance(SEC);
    assert!(net.take().is_empty());
    // The flow ends before timer 8 is due: it never fires.
    net.each(&[c.c(0, 0, RST | ACK)]);
    assert_eq!(
        net.take(),
        strs(&["svr snd CONN_END rst", "cli snd CONN_END rst"])
    );
    net.advance(20 * SEC);
    assert!(net.take().is_empty());
}

// ---------------------------------------------------------------------------------------
// 14. IPv6
// ---------------------------------------------------------------------------------------

#[test]
fn ipv6_flow() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(|cx, ev, out| {
        if ev.kind == EventKind::ConnStart && ev.hook == Hook::Snd {
            let (c, s) = cx.addresses(ev.flow).unwrap();
            out.push(format!("{c} > {s}"));
        }
    });
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::new("[2001:db8::1]:40000", "[2001:db8::2]:443");
    net.each(&c.handshake());
    let mut want = handshake_events();
    want.insert(2, "[2001:db8::1]:40000 > [2001:db8::2]:443".to_string());
    assert_eq!(net.take(), want);
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"v6 data")]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 7"
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], b"v6 data");
    assert_eq!(net.engine.stats().malformed, 0);
}

/// A frame of the builder with checksum verification on is accepted (the checksums the
/// harness computes are right).
#[test]
fn builder_checksums_are_valid() {
    let log = new_log();
    let mut net = Net::simple(
        Config {
            verify_checksums: true,
            ..cfg()
        },
        Recorder::new(&log),
    );
    let c = Conn::v4();
    let c6 = Conn::new("[2001:db8::1]:40000", "[2001:db8::2]:443");
    net.each(&c.handshake());
    net.each(&c6.handshake());
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"odd")]);
    assert_eq!(net.engine.stats().bad_checksum, 0);
    assert_eq!(net.engine.stats().flows_created, 2);
}

// ---------------------------------------------------------------------------------------
// More of SPEC §2.1 / §3 / §6
// ---------------------------------------------------------------------------------------

/// SPEC §2.1: a flow destroyed in the batch gets its pending NewData before its ConnEnd.
#[test]
fn pending_new_data_delivered_before_conn_end_in_same_batch() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    // A RST ends the flow at once without the reordering allowance (else it lingers
    // while the other direction is open, SPEC §3.1).
    let mut net = Net::simple(skip_at_once(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(b"last words"),
        c.c(10, 0, RST | ACK),
    ]);
    assert_eq!(
        net.take(),
        cat(&[
            strs(&[
                "cli snd PKT_IN",
                "svr rcv PKT_IN",
                "cli snd PKT_IN",
                "cli snd TCP_STATE_CHANGE CLOSED",
                "svr rcv PKT_IN",
                "svr rcv TCP_STATE_CHANGE CLOSED",
                "svr null CONN_NEW_DATA 10",
            ]),
            destroy_events(Side::Server, "rst"),
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], b"last words");
}

/// SPEC §3: a segment starting beyond `contiguous end + capacity` is dropped with Error,
/// raised before the receiver's Rcv callbacks (§2.1 step 4).
#[test]
fn segment_beyond_window_dropped_with_error() {
    let log = new_log();
    let mut net = Net::simple(
        Config {
            buffer_capacity: 1024,
            ..cfg()
        },
        Recorder::new(&log).consuming(),
    );
    let c = Conn::v4();
    net.each(&c.handshake());
    net.batch(&[c.c(0, 0, PSH | ACK).data(&[1; 100])]);
    net.take();
    net.batch(&[c.c(100 + 1024, 0, PSH | ACK).data(&[2; 10])]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr null ERROR BeyondWindow",
            "svr rcv PKT_IN"
        ])
    );
    assert_eq!(net.engine.stats().bytes_beyond_window, 10);
    // Just inside the window is stored (out of order).
    net.batch(&[c.c(100 + 1023, 0, PSH | ACK).data(&[3; 1])]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
}

/// SPEC §6: data received by a half-closed side raises NewData; a FIN alone raises none.
#[test]
fn half_closed_side_still_gets_new_data() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log).consuming());
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[c.c(0, 0, FIN | ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "cli snd TCP_STATE_CHANGE FIN_WAIT_1",
            "svr rcv PKT_IN",
            "svr rcv TCP_STATE_CHANGE CLOSE_WAIT",
        ])
    );
    net.batch(&[c.s(0, 1, PSH | ACK).data(b"still talking")]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "cli rcv TCP_STATE_CHANGE FIN_WAIT_2",
            "cli null CONN_NEW_DATA 13",
        ])
    );
}

/// SPEC §4/§6: the last packet knows its side, and its offset is in the sender's direction.
#[test]
fn last_packet_side_and_offset() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Rcv {
            let lp = cx.last_packet(ev.flow).unwrap();
            out.push(format!(
                "last {:?} off {} len {}",
                lp.sender, lp.offset, lp.payload_len
            ));
        }
    });
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&[0; 100]),
        c.c(100, 0, PSH | ACK).data(&[0; 50]),
    ]);
    net.batch(&[
        c.s(0, 150, PSH | ACK).data(&[0; 7]),
        c.s(7, 150, PSH | ACK).data(&[0; 3]),
    ]);
    let lines: Vec<String> = net
        .take()
        .into_iter()
        .filter(|l| l.starts_with("last"))
        .collect();
    assert_eq!(
        lines,
        strs(&[
            "last Some(Client) off 0 len 0",
            "last Some(Server) off 0 len 0",
            "last Some(Client) off 0 len 0",
            "last Some(Client) off 0 len 100",
            "last Some(Client) off 100 len 50",
            "last Some(Server) off 0 len 7",
            "last Some(Server) off 7 len 3",
        ])
    );
}

/// Several monitors: load order for client-sent packets, reverse for server-sent ones;
/// NewData (not tied to a packet) in load order.
#[test]
fn monitor_order_load_then_reverse() {
    let log = new_log();
    let a = Recorder::new(&log).named("A");
    let b = Recorder::new(&log).named("B");
    let mut net = Net::new(cfg(), &log, vec![Box::new(a), Box::new(b)]);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[c.c(0, 0, PSH | ACK).data(b"x")]);
    assert_eq!(
        net.take(),
        strs(&[
            "A: cli snd PKT_IN",
            "B: cli snd PKT_IN",
            "A: svr rcv PKT_IN",
            "B: svr rcv PKT_IN",
            "A: svr null CONN_NEW_DATA 1",
            "B: svr null CONN_NEW_DATA 1",
        ])
    );
    net.batch(&[c.s(0, 1, PSH | ACK).data(b"y")]);
    assert_eq!(
        net.take(),
        strs(&[
            "B: svr snd PKT_IN",
            "A: svr snd PKT_IN",
            "B: cli rcv PKT_IN",
            "A: cli rcv PKT_IN",
            "A: cli null CONN_NEW_DATA 1",
            "B: cli null CONN_NEW_DATA 1",
        ])
    );
}

/// SPEC §3: "Nothing is ever consumed: space is reclaimed only by new data", and Error
/// (Overrun) is about *storing a segment* over unread bytes. Skipping a gap the receiver
/// acknowledged stores nothing: the in-order bytes before the gap stay readable with
/// `ppeek`, and a monitor that has not read them gets no Overrun.
#[test]
fn gap_skip_keeps_earlier_bytes_and_raises_no_overrun() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::NewData {
            let mut buf = [0u8; 4];
            out.push(format!(
                "ppeek0 {:?}",
                cx.ppeek(ev.flow, Side::Server, &mut buf, 0)
            ));
        }
    });
    let mut net = Net::simple(skip_at_once(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&[1; 100]),
        c.c(200, 0, PSH | ACK).data(&[3; 100]),
    ]);
    assert_eq!(
        net.take()[4..],
        strs(&["svr null CONN_NEW_DATA 100", "ppeek0 Ok(4)"])
    );
    net.batch(&[c.s(0, 300, ACK)]);
    assert_eq!(
        net.take(),
        strs(&[
            "svr snd PKT_IN",
            "cli rcv PKT_IN",
            "svr null CONN_NEW_DATA 300",
            "ppeek0 Ok(4)"
        ])
    );
}

// ---------------------------------------------------------------------------------------
// Disorder on the tap (docs/SPEC.md §3.1)
// ---------------------------------------------------------------------------------------

/// The server's ACK overtakes the data it acknowledges: the gap waits, the data fills it,
/// nothing is missing.
#[test]
fn ack_before_data_waits_for_the_data() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let data = pattern(200, 5);
    net.batch(&[c.c(0, 0, PSH | ACK).data(&data[..100])]);
    net.take();
    net.batch(&[c.s(0, 200, ACK)]);
    assert_eq!(net.take(), strs(&["svr snd PKT_IN", "cli rcv PKT_IN"]));
    net.batch(&[c.c(100, 0, PSH | ACK).data(&data[100..])]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 200"
        ])
    );
    assert_eq!(net.engine.stats().bytes_missing, 0);
    assert_eq!(read.borrow()[Side::Server.index()], data);
}

/// The client's FIN overtakes its data: it is held, and the state changes come when the
/// stream reaches it, in the order they have without reordering.
#[test]
fn fin_before_data_takes_effect_when_the_stream_reaches_it() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let data = pattern(100, 6);
    net.batch(&[c.c(100, 0, FIN | ACK)]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
    net.batch(&[c.c(0, 0, PSH | ACK).data(&data)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "cli snd TCP_STATE_CHANGE FIN_WAIT_1",
            "svr rcv TCP_STATE_CHANGE CLOSE_WAIT",
            "svr null CONN_NEW_DATA 100",
        ])
    );
    // The client's last ACK overtakes the server's FIN.
    net.batch(&[c.c(101, 1, ACK)]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
    net.batch(&[c.s(0, 101, FIN | ACK)]);
    assert_eq!(
        net.take(),
        cat(&[
            strs(&[
                "svr snd PKT_IN",
                "svr snd TCP_STATE_CHANGE LAST_ACK",
                "cli rcv PKT_IN",
                "cli rcv TCP_STATE_CHANGE TIME_WAIT",
                "svr rcv TCP_STATE_CHANGE CLOSED",
            ]),
            destroy_events(Side::Client, "fin"),
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], data);
    assert_eq!(net.engine.stats().bytes_missing, 0);
}

/// An in-window RST ahead of the data ends the flow only after the data before it.
#[test]
fn rst_ahead_of_data_ends_the_flow_after_the_data() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    net.take();
    let data = pattern(100, 7);
    net.batch(&[c.c(100, 0, RST | ACK)]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
    assert_eq!(net.engine.stats().flows_live, 1);
    net.batch(&[c.c(0, 0, PSH | ACK).data(&data)]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "svr rcv PKT_IN",
            "svr null CONN_NEW_DATA 100"
        ])
    );
    assert_eq!(read.borrow()[Side::Server.index()], data);
    // In sequence now, it lingers as any RST while the other direction is open.
    assert_eq!(
        close_events_after_the_linger(&mut net),
        rst_close_events(Side::Client)
    );
}

/// The events a lingering RST brings (SPEC §3.1): none half a second of packet time after
/// it, its transitions and the flow's end once a second has passed.
fn close_events_after_the_linger(net: &mut Net) -> Vec<String> {
    net.advance(500_000_000);
    assert_eq!(net.take(), Vec::<String>::new(), "half a second on");
    assert_eq!(net.engine.stats().flows_live, 1);
    net.advance(600_000_000);
    assert_eq!(net.engine.stats().flows_live, 0);
    net.take()
}

/// A RST in sequence while the other direction is open lingers (SPEC §3.1): the peer's
/// bytes that the tap shows after it (sent before the RST reached the peer) still reach the
/// stream, later copies of the RST wait with it, and the flow ends a second of packet time
/// later (or after `gap_skip_after` more packets of the flow, or at a packet of the flow
/// past the second: then that packet is late). With or without the RST's sender having
/// acknowledged what it got, or sent its FIN (a reset of a closed socket).
#[test]
fn rst_lingers_while_the_other_direction_is_open() {
    for fin_first in [false, true] {
        rst_lingers(fin_first);
    }
}

fn rst_lingers(fin_first: bool) {
    let log = new_log();
    let rec = Recorder::new(&log).consuming();
    let read = rec.read_handle();
    let mut net = Net::simple(cfg(), rec);
    let c = Conn::v4();
    net.each(&c.handshake());
    let (first, last) = (pattern(100, 3), pattern(100, 4));
    net.batch(&[c.s(0, 0, PSH | ACK).data(&first)]);
    let at = if fin_first {
        // Everything acknowledged, then the client closes: the server's next segment makes
        // its stack reset.
        net.batch(&[c.c(0, 100, FIN | ACK)]);
        1
    } else {
        0 // the client has not acknowledged the 100 bytes
    };
    net.take();
    net.batch(&[c.c(at, 100, RST)]);
    assert_eq!(net.take(), strs(&["cli snd PKT_IN", "svr rcv PKT_IN"]));
    net.batch(&[c.s(100, at, PSH | ACK).data(&last), c.c(at, 100, RST)]);
    // With the FIN first, the server's segment acknowledges it.
    let fin_wait_2 = if fin_first {
        &["cli rcv TCP_STATE_CHANGE FIN_WAIT_2"][..]
    } else {
        &[]
    };
    assert_eq!(
        net.take(),
        cat(&[
            strs(&["svr snd PKT_IN", "cli rcv PKT_IN"]),
            strs(fin_wait_2),
            strs(&[
                "cli snd PKT_IN",
                "svr rcv PKT_IN",
                "cli null CONN_NEW_DATA 200"
            ]),
        ]),
        "FIN first: {fin_first}"
    );
    assert_eq!(read.borrow()[Side::Client.index()], [first, last].concat());
    assert_eq!(
        close_events_after_the_linger(&mut net),
        rst_close_events(Side::Client)
    );
    assert_eq!(net.engine.stats().bytes_missing, 0);
}

/// A handshake, 100 bytes from the server, then the client's RST (which lingers: the
/// server's direction is open); the events so far are taken. The connection and the bytes.
fn server_data_then_client_rst(net: &mut Net) -> (Conn, Vec<u8>) {
    let c = Conn::v4();
    net.each(&c.handshake());
    let data = pattern(100, 5);
    net.batch(&[c.s(0, 0, PSH | ACK).data(&data)]);
    net.batch(&[c.c(0, 0, RST)]);
    net.take();
    (c, data)
}

/// A packet of a flow whose lingering RST is past its deadline, with no end of batch in
/// between (a worker whose clock only that flow moves): the RST takes effect first, as it
/// would have at the end of a batch, and the packet is a late copy.
#[test]
fn a_packet_past_the_linger_finds_the_flow_closed() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let (c, data) = server_data_then_client_rst(&mut net);
    assert_eq!(net.engine.stats().flows_live, 1, "the RST lingers");
    net.ts += 2_000_000_000;
    net.batch(&[c.s(0, 0, PSH | ACK).data(&data)]);
    assert_eq!(net.take(), rst_close_events(Side::Client));
    let st = net.engine.stats();
    assert_eq!((st.flows_live, st.late, st.flows_created), (0, 1, 1));
}

/// `Config::rst_linger` (`--rst-linger`) sets how long the RST waits: with 5 s, the
/// server's segment 2 s after the client's RST is still taken into the stream; past the
/// 5 s the flow ends.
#[test]
fn the_rst_linger_is_configurable() {
    let log = new_log();
    let config = Config {
        rst_linger: 5_000_000_000,
        ..cfg()
    };
    let mut net = Net::simple(config, Recorder::new(&log));
    let (c, data) = server_data_then_client_rst(&mut net);
    net.ts += 2_000_000_000;
    net.batch(&[c.s(100, 0, PSH | ACK).data(&data)]);
    let st = net.engine.stats();
    assert_eq!((st.flows_live, st.late), (1, 0), "still lingering");
    net.ts += 4_000_000_000;
    // A packet of another connection moves the clock; the linger ends at the batch's end.
    net.batch(&[Conn::new("10.0.0.3:40000", "10.0.0.2:80").syn()]);
    let got = net.take();
    assert!(got.ends_with(&rst_close_events(Side::Client)), "{got:?}");
    assert_eq!(
        net.engine.stats().flows_live,
        1,
        "only the other connection"
    );
}

/// A RST from a side that has its peer's FIN (the other direction is closed), or with no
/// reordering allowance (`--profile mos`), takes effect at once.
#[test]
fn rst_with_the_other_direction_closed_ends_the_flow_at_once() {
    for (config, peer_fin) in [(cfg(), true), (skip_at_once(), false)] {
        let log = new_log();
        let mut net = Net::simple(config, Recorder::new(&log));
        let c = Conn::v4();
        net.each(&c.handshake());
        net.batch(&[c.s(0, 0, PSH | ACK).data(&pattern(10, 1))]);
        let ack = if peer_fin {
            net.batch(&[c.s(10, 0, FIN | ACK)]);
            11
        } else {
            10
        };
        net.take();
        net.batch(&[c.c(0, ack, RST | ACK)]);
        let got = net.take();
        assert!(
            got.ends_with(&destroy_events(Side::Server, "rst")),
            "peer FIN {peer_fin}: {got:?}"
        );
        assert_eq!(net.engine.stats().flows_live, 0);
    }
}

/// After the close, copies of the connection's packets are `late`: no event, no new flow.
/// A SYN with a fresh ISN on the same endpoints is a new connection.
#[test]
fn late_packets_after_close_are_counted_not_new_flows() {
    let log = new_log();
    let mut net = Net::simple(cfg(), Recorder::new(&log));
    let c = Conn::v4();
    net.each(&c.handshake());
    let data = pattern(100, 8);
    net.batch(&[c.c(0, 0, PSH | ACK).data(&data)]);
    net.batch(&[c.c(100, 0, FIN | ACK)]);
    net.batch(&[c.s(0, 101, FIN | ACK)]);
    net.batch(&[c.c(101, 1, ACK)]);
    assert_eq!(net.engine.stats().flows_live, 0);
    net.take();
    net.batch(&[
        c.c(0, 0, PSH | ACK).data(&data),
        c.s(0, 101, FIN | ACK),
        c.c(101, 1, ACK),
    ]);
    assert_eq!(net.take(), Vec::<String>::new());
    let s = net.engine.stats();
    assert_eq!((s.late, s.flows_created, s.orphans), (3, 1, 0));
    let again = Conn::v4().isn(0x4000_0000, 0x7000_0000);
    net.batch(&[again.syn()]);
    assert_eq!(
        net.take(),
        strs(&[
            "cli snd PKT_IN",
            "cli snd CONN_START",
            "cli snd TCP_STATE_CHANGE SYN_SENT",
            "svr rcv PKT_IN",
            "svr rcv CONN_START",
            "svr rcv TCP_STATE_CHANGE SYN_RCVD",
        ])
    );
    assert_eq!(net.engine.stats().flows_created, 2);
}

/// A client whose SYN was answered by a stale ACK (of an older connection) resets it and
/// retries with the same SYN: the retry starts the connection (it is not a late copy),
/// whole from its handshake. A SYN copy after the server refused it (its RST) stays late.
#[test]
fn a_syn_retried_after_its_sender_reset_a_stale_answer_starts_the_connection() {
    let c = Conn::v4();
    // As in suricata-verify's tls-subjectaltname: the stale ACK names a sequence number
    // far from the client's, and the client's RST carries exactly that number.
    let stale = Seg::new(c.svr, c.cli)
        .seq(1_272_121_215)
        .ack(3_058_576_675)
        .flags(ACK);
    let reset = Seg::new(c.cli, c.svr).seq(3_058_576_675).flags(RST);
    for (answer, retry_starts) in [
        (vec![stale, reset], true),
        (vec![c.s(0, 0, RST | ACK)], false),
    ] {
        let log = new_log();
        let mut net = Net::simple(cfg(), Recorder::new(&log));
        net.batch(&[c.syn()]);
        for p in answer {
            net.batch(&[p]);
        }
        let ended = net.take();
        let closed = ended.iter().filter(|e| e.contains("CONN_END")).count();
        assert_eq!(closed, 4, "the first attempt ends at its RST: {ended:?}");
        net.ts += 3_000_000_000;
        net.batch(&[c.syn()]);
        let st = net.engine.stats().clone();
        let got = net.take();
        if !retry_starts {
            assert_eq!(
                (st.late, st.flows_created, st.flows_live),
                (1, 1, 0),
                "a late copy"
            );
            assert!(!got.iter().any(|e| e.contains("CONN_START")), "{got:?}");
            continue;
        }
        assert_eq!(
            (st.late, st.flows_created, st.flows_live),
            (0, 2, 1),
            "a new attempt"
        );
        let syn_events = &handshake_events()[..6];
        assert!(got.ends_with(syn_events), "{got:?}");
        net.batch(&[c.synack()]);
        net.batch(&[c.c(0, 0, ACK)]);
        assert_eq!(net.take(), handshake_events()[6..]);
        let partial = net.engine.stats().flows_partial;
        assert_eq!(partial, 0, "tracked from its handshake");
    }
}
