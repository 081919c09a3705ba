//! The read API's results and errors (SPEC §4), one test each: `ppeek` and `peek` from
//! inside callbacks, driven by scripted packets.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use common::*;
use flowpeek::flow::{
    BufferRequest, Config, Cx, Errno, Event, EventKind, EventSide, FlowHandle, Hook, PeekError,
    Side, Subscriptions,
};

fn cfg() -> Config {
    Config::default()
}

/// Lines of a probe hook: the hook decides what to call and logs the result.
fn run(cfg: Config, rec: Recorder, script: impl FnOnce(&mut Net)) -> Vec<String> {
    let mut net = Net::simple(cfg, rec);
    script(&mut net);
    net.take()
}

fn only_probes(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| l.starts_with("probe"))
        .collect()
}

fn ppeek_at(
    cx: &Cx<'_>,
    h: FlowHandle,
    side: Side,
    off: u64,
    len: usize,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    cx.ppeek(h, side, &mut buf, off).map(|n| buf[..n].to_vec())
}

#[test]
fn errno_codes_match_libc() {
    assert_eq!(Errno::Acces.code(), 13);
    assert_eq!(Errno::Badf.code(), 9);
    assert_eq!(Errno::Inval.code(), 22);
    assert_eq!(Errno::SocktNoSupport.code(), 94);
    assert_eq!(Errno::NotConn.code(), 107);
    assert_eq!(Errno::NoData.code(), 61);
    assert_eq!(Errno::Perm.code(), 1);
    assert_eq!(Errno::NoData.name(), "ENODATA");
}

// ---------------------------------------------------------------------------------------
// EACCES: a handle from another core
// ---------------------------------------------------------------------------------------

#[test]
fn eacces_handle_of_another_core() {
    // Engine on core 1: capture one of its handles.
    let foreign: Rc<Cell<Option<FlowHandle>>> = Rc::new(Cell::new(None));
    let f = foreign.clone();
    let log1 = new_log();
    let rec1 = Recorder::new(&log1).hook(move |_, ev, _| {
        if ev.kind == EventKind::NewData {
            f.set(Some(ev.flow));
        }
    });
    let mut core1 = Net::simple(Config { core: 1, ..cfg() }, rec1);
    let c = Conn::v4();
    core1.each(&c.handshake());
    core1.batch(&[c.c(0, 0, PSH | ACK).data(b"data")]);
    let h1 = foreign.get().expect("handle captured");

    // Use it inside a callback of the core-0 engine (same flow, same slot, same data).
    let log0 = new_log();
    let rec0 = Recorder::new(&log0).hook(move |cx, ev, out| {
        if ev.kind == EventKind::NewData {
            out.push(format!(
                "probe ppeek {:?}",
                ppeek_at(cx, h1, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe peek {:?}",
                cx.peek(h1, Side::Server, &mut [0u8; 4])
            ));
            out.push(format!(
                "probe own {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 0, 4)
            ));
            out.push(format!("probe core {}", cx.core_id()));
        }
    });
    let lines = run(cfg(), rec0, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"data")]);
    });
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe ppeek Err(Acces)",
            "probe peek Err(Errno(Acces))",
            "probe own Ok([100, 97, 116, 97])",
            "probe core 0",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// EBADF: a handle kept after its flow ended
// ---------------------------------------------------------------------------------------

#[test]
fn ebadf_handle_of_ended_flow() {
    let kept: Rc<Cell<Option<FlowHandle>>> = Rc::new(Cell::new(None));
    let k = kept.clone();
    let log = new_log();
    let rec = Recorder::new(&log).with_port().hook(move |cx, ev, out| {
        let port = cx.addresses(ev.flow).map(|a| a.0.port()).unwrap_or(0);
        if port == 1001 && ev.kind == EventKind::NewData {
            k.set(Some(ev.flow));
        }
        if port == 1002 && ev.kind == EventKind::NewData {
            let old = k.get().unwrap();
            out.push(format!("probe same-slot-reused {}", old != ev.flow));
            out.push(format!(
                "probe ppeek {:?}",
                ppeek_at(cx, old, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe peek {:?}",
                cx.peek(old, Side::Server, &mut [0u8; 4])
            ));
            out.push(format!("probe state {:?}", cx.tcp_state(old, Side::Server)));
        }
    });
    let a = Conn::new("10.0.0.1:1001", "10.0.0.2:80");
    let b = Conn::new("10.0.0.1:1002", "10.0.0.2:80");
    let lines = run(cfg(), rec, |net| {
        net.each(&a.handshake());
        net.batch(&[a.c(0, 0, PSH | ACK).data(b"aaaa")]);
        net.batch(&[a.c(4, 0, RST)]);
        // The RST lingers a second of packet time for the server's bytes in flight.
        net.advance(1_100_000_000);
        net.each(&b.handshake());
        net.batch(&[b.c(0, 0, PSH | ACK).data(b"bbbb")]);
    });
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe same-slot-reused true",
            "probe ppeek Err(Badf)",
            "probe peek Err(Errno(Badf))",
            "probe state Err(Badf)",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// EINVAL: buffer disabled
// ---------------------------------------------------------------------------------------

#[test]
fn einval_buffer_off_by_subscription() {
    let log = new_log();
    let rec = Recorder::new(&log)
        .subs(Subscriptions::all_builtin().with_buffers(BufferRequest::Off))
        .hook(|cx, ev, out| {
            if ev.kind == EventKind::PktIn
                && ev.hook == Hook::Rcv
                && side_of(ev) == Some(Side::Server)
            {
                out.push(format!(
                    "probe ppeek {:?}",
                    ppeek_at(cx, ev.flow, Side::Server, 0, 4)
                ));
                out.push(format!(
                    "probe peek {:?}",
                    cx.peek(ev.flow, Side::Server, &mut [0u8; 4])
                ));
                out.push(format!(
                    "probe frags {:?}",
                    cx.fragments(ev.flow, Side::Server).map(|f| f.count())
                ));
            }
        });
    let c = Conn::v4();
    let lines = run(cfg(), rec, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"data")]);
    });
    // No NewData without a buffer (SPEC §4: "NewData ... stop for that side").
    assert!(
        !lines.iter().any(|l| l.contains("CONN_NEW_DATA")),
        "{lines:?}"
    );
    let probes = only_probes(lines);
    // Server Rcv PktIn: the SYN, the ACK and the data packet.
    assert_eq!(probes.len(), 9);
    assert_eq!(
        &probes[6..],
        strs(&[
            "probe ppeek Err(Inval)",
            "probe peek Err(Errno(Inval))",
            "probe frags Err(Inval)"
        ])
    );
}

#[test]
fn einval_buffer_disabled_at_run_time() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::ConnStart && ev.hook == Hook::Snd {
            out.push(format!(
                "probe set {:?}",
                cx.set_buffer_capacity(ev.flow, Side::Server, 0)
            ));
        }
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Rcv && side_of(ev) == Some(Side::Server)
        {
            out.push(format!(
                "probe ppeek {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe peek {:?}",
                cx.peek(ev.flow, Side::Server, &mut [0u8; 4])
            ));
            // The other side still has its buffer.
            out.push(format!(
                "probe cli {:?}",
                cx.peek(ev.flow, Side::Client, &mut [0u8; 4])
            ));
        }
    });
    let c = Conn::v4();
    let lines = run(cfg(), rec, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"data")]);
    });
    assert!(
        !lines.iter().any(|l| l.contains("CONN_NEW_DATA")),
        "{lines:?}"
    );
    let probes = only_probes(lines);
    assert_eq!(probes[0], "probe set Ok(())");
    assert_eq!(
        &probes[probes.len() - 3..],
        strs(&[
            "probe ppeek Err(Inval)",
            "probe peek Err(Errno(Inval))",
            "probe cli Ok(0)"
        ])
    );
}

// ---------------------------------------------------------------------------------------
// ESOCKTNOSUPPORT: an Orphan's handle
// ---------------------------------------------------------------------------------------

#[test]
fn esocktnosupport_orphan_handle() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::Orphan {
            out.push(format!(
                "probe ppeek {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe peek {:?}",
                cx.peek(ev.flow, Side::Client, &mut [0u8; 4])
            ));
        }
    });
    let c = Conn::v4();
    let lines = run(
        Config {
            midstream: false,
            ..cfg()
        },
        rec,
        |net| {
            net.batch(&[c.c(0, 0, PSH | ACK).data(b"data")]);
        },
    );
    assert_eq!(
        lines,
        strs(&[
            "both null ORPHAN",
            "probe ppeek Err(SocktNoSupport)",
            "probe peek Err(Errno(SocktNoSupport))"
        ])
    );
}

// ---------------------------------------------------------------------------------------
// ENOTCONN: the server's stream before the SYN reached it
// ---------------------------------------------------------------------------------------

#[test]
fn enotconn_server_side_before_syn_arrives() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::ConnStart {
            out.push(format!(
                "probe ppeek {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe peek {:?}",
                cx.peek(ev.flow, Side::Server, &mut [0u8; 4])
            ));
        }
    });
    let c = Conn::v4();
    let lines = run(cfg(), rec, |net| net.each(&[c.syn()]));
    assert_eq!(
        lines,
        strs(&[
            "cli snd PKT_IN",
            "cli snd CONN_START",
            "probe ppeek Err(NotConn)",
            "probe peek Err(Errno(NotConn))",
            "cli snd TCP_STATE_CHANGE SYN_SENT",
            "svr rcv PKT_IN",
            "svr rcv CONN_START",
            // The SYN reached it: the stream exists but holds no byte yet.
            "probe ppeek Err(NoData)",
            "probe peek Ok(0)",
            "svr rcv TCP_STATE_CHANGE SYN_RCVD",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// ENODATA: in a gap, beyond the data, discarded
// ---------------------------------------------------------------------------------------

#[test]
fn enodata_gap_beyond_and_discarded() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(|cx, ev, out| {
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Rcv && side_of(ev) == Some(Side::Server)
        {
            let h = ev.flow;
            let frags: Vec<(u64, u64)> = cx.fragments(h, Side::Server).unwrap().collect();
            out.push(format!("probe frags {frags:?}"));
            for off in [0u64, 99, 100, 150, 199, 200, 250, 299, 300, 5000] {
                let r = ppeek_at(cx, h, Side::Server, off, 1000).map(|v| v.len());
                out.push(format!("probe {off} {r:?}"));
            }
        }
    });
    let c = Conn::v4();
    let lines = run(
        Config {
            buffer_capacity: 1024,
            ..cfg()
        },
        rec,
        |net| {
            net.each(&c.handshake());
            net.take();
            // [0, 100) and [200, 300): a gap at [100, 200).
            net.batch(&[c.c(0, 0, PSH | ACK).data(&[1; 100])]);
            net.take();
            net.batch(&[c.c(200, 0, PSH | ACK).data(&[2; 100])]);
        },
    );
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe frags [(0, 100), (200, 100)]",
            "probe 0 Ok(100)",
            "probe 99 Ok(1)",
            "probe 100 Err(NoData)",
            "probe 150 Err(NoData)",
            "probe 199 Err(NoData)",
            "probe 200 Ok(100)",
            "probe 250 Ok(50)",
            "probe 299 Ok(1)",
            "probe 300 Err(NoData)",
            "probe 5000 Err(NoData)",
        ])
    );
}

#[test]
fn enodata_discarded_bytes() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(|cx, ev, out| {
        let bi = cx.buffer_info(ev.flow, Side::Server).unwrap();
        if ev.kind == EventKind::NewData && bi.head > 0 {
            out.push(format!("probe head {} contig {}", bi.head, bi.contig_end));
            for off in [0u64, bi.head - 1, bi.head, bi.contig_end - 1, bi.contig_end] {
                let r = ppeek_at(cx, ev.flow, Side::Server, off, 4).map(|v| v.len());
                out.push(format!("probe {off} {r:?}"));
            }
        }
    });
    let c = Conn::v4();
    let lines = run(
        Config {
            buffer_capacity: 1024,
            ..cfg()
        },
        rec,
        |net| {
            net.each(&c.handshake());
            net.batch(&[c.c(0, 0, PSH | ACK).data(&[1; 1000])]);
            net.take();
            net.batch(&[c.c(1000, 0, PSH | ACK).data(&[2; 1000])]);
        },
    );
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe head 976 contig 2000",
            "probe 0 Err(NoData)",
            "probe 975 Err(NoData)",
            "probe 976 Ok(4)",
            "probe 1999 Ok(1)",
            "probe 2000 Err(NoData)",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// EPERM: reading a flow the monitor stopped monitoring
// ---------------------------------------------------------------------------------------

/// After `stop_monitoring(Both)`, the monitor gets no more events of that flow, so the
/// only places it can still try to read it are (a) the rest of the callback that stopped it
/// and (b) a callback of *another* flow, with the kept handle. Both give `EPERM`.
#[test]
fn eperm_after_stop_monitoring_both() {
    let kept: Rc<Cell<Option<FlowHandle>>> = Rc::new(Cell::new(None));
    let k = kept.clone();
    let log = new_log();
    let rec = Recorder::new(&log).hook(move |cx, ev, out| {
        let port = cx.addresses(ev.flow).map(|a| a.0.port()).unwrap_or(0);
        if port == 1001 && ev.kind == EventKind::NewData {
            out.push(format!(
                "probe before {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe stop {:?}",
                cx.stop_monitoring(ev.flow, EventSide::Both)
            ));
            out.push(format!(
                "probe ppeek {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe peek {:?}",
                cx.peek(ev.flow, Side::Server, &mut [0u8; 4])
            ));
            k.set(Some(ev.flow));
        }
        if port == 1002 && ev.kind == EventKind::NewData {
            let old = k.get().unwrap();
            out.push(format!(
                "probe later ppeek {:?}",
                ppeek_at(cx, old, Side::Server, 0, 4)
            ));
            out.push(format!(
                "probe later peek {:?}",
                cx.peek(old, Side::Server, &mut [0u8; 4])
            ));
        }
    });
    let a = Conn::new("10.0.0.1:1001", "10.0.0.2:80");
    let b = Conn::new("10.0.0.1:1002", "10.0.0.2:80");
    let lines = run(cfg(), rec, |net| {
        net.each(&a.handshake());
        net.each(&b.handshake());
        net.batch(&[a.c(0, 0, PSH | ACK).data(b"aaaa")]);
        net.batch(&[
            a.c(4, 0, PSH | ACK).data(b"more"),
            b.c(0, 0, PSH | ACK).data(b"bbbb"),
        ]);
    });
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe before Ok([97, 97, 97, 97])",
            "probe stop Ok(())",
            "probe ppeek Err(Perm)",
            "probe peek Err(Errno(Perm))",
            "probe later ppeek Err(Perm)",
            "probe later peek Err(Errno(Perm))",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// Ok(0) and the peek cursor
// ---------------------------------------------------------------------------------------

#[test]
fn ppeek_empty_buffer_returns_zero_and_moves_nothing() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::NewData {
            out.push(format!(
                "probe empty {:?}",
                cx.ppeek(ev.flow, Side::Server, &mut [], 0)
            ));
            out.push(format!(
                "probe empty far {:?}",
                cx.ppeek(ev.flow, Side::Server, &mut [], 9999)
            ));
            out.push(format!(
                "probe a {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 1, 3)
            ));
            out.push(format!(
                "probe b {:?}",
                ppeek_at(cx, ev.flow, Side::Server, 1, 3)
            ));
            out.push(format!(
                "probe cursor {}",
                cx.buffer_info(ev.flow, Side::Server).unwrap().cursor
            ));
        }
    });
    let c = Conn::v4();
    let lines = run(cfg(), rec, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"abcdef")]);
    });
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe empty Ok(0)",
            "probe empty far Ok(0)",
            "probe a Ok([98, 99, 100])",
            "probe b Ok([98, 99, 100])",
            "probe cursor 0",
        ])
    );
}

#[test]
fn peek_reads_in_order_then_ok_zero_when_nothing_new() {
    let log = new_log();
    let rec = Recorder::new(&log).hook(|cx, ev, out| {
        if ev.kind == EventKind::NewData {
            let mut buf = [0u8; 4];
            loop {
                let r = cx.peek(ev.flow, Side::Server, &mut buf);
                out.push(format!(
                    "probe {:?} {:?}",
                    r,
                    r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                ));
                if r != Ok(4) {
                    break;
                }
            }
            out.push(format!(
                "probe empty-buf {:?}",
                cx.peek(ev.flow, Side::Server, &mut [])
            ));
            out.push(format!(
                "probe cursor {}",
                cx.buffer_info(ev.flow, Side::Server).unwrap().cursor
            ));
        }
    });
    let c = Conn::v4();
    let lines = run(cfg(), rec, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"abcdefghij")]);
        net.batch(&[c.c(10, 0, PSH | ACK).data(b"kl")]);
    });
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe Ok(4) Ok(\"abcd\")",
            "probe Ok(4) Ok(\"efgh\")",
            "probe Ok(2) Ok(\"ij\")",
            "probe empty-buf Ok(0)",
            "probe cursor 10",
            "probe Ok(2) Ok(\"kl\")",
            "probe empty-buf Ok(0)",
            "probe cursor 12",
        ])
    );
}

#[test]
fn peek_ok_zero_when_nothing_new_at_later_event() {
    let log = new_log();
    let rec = Recorder::new(&log).consuming().hook(|cx, ev, out| {
        if ev.kind == EventKind::PktIn && ev.hook == Hook::Rcv && side_of(ev) == Some(Side::Client)
        {
            out.push(format!(
                "probe {:?}",
                cx.peek(ev.flow, Side::Server, &mut [0u8; 8])
            ));
        }
    });
    let c = Conn::v4();
    let lines = run(cfg(), rec, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"abc")]);
        net.batch(&[c.s(0, 3, ACK)]);
    });
    // The SYN/ACK (no server stream bytes yet) and the ACK after the read.
    assert_eq!(only_probes(lines), strs(&["probe Ok(0)", "probe Ok(0)"]));
}

#[test]
fn peek_reports_lost_bytes_once() {
    let log = new_log();
    let rec = Recorder::new(&log)
        .subs(
            Subscriptions::none()
                .with(EventKind::NewData, Hook::None)
                .with(EventKind::Error, Hook::None)
                .with_buffers(BufferRequest::Default),
        )
        .hook(|cx, ev, out| {
            if ev.kind == EventKind::NewData
                && cx.buffer_info(ev.flow, Side::Server).unwrap().contig_end == 3000
            {
                let mut buf = vec![0u8; 4096];
                out.push(format!(
                    "probe {:?}",
                    cx.peek(ev.flow, Side::Server, &mut buf)
                ));
                out.push(format!(
                    "probe {:?}",
                    cx.peek(ev.flow, Side::Server, &mut buf)
                ));
                out.push(format!(
                    "probe {:?}",
                    cx.peek(ev.flow, Side::Server, &mut buf)
                ));
            }
        });
    let c = Conn::v4();
    let lines = run(
        Config {
            buffer_capacity: 1024,
            ..cfg()
        },
        rec,
        |net| {
            net.each(&c.handshake());
            net.batch(&[c.c(0, 0, PSH | ACK).data(&[1; 1000])]);
            net.batch(&[c.c(1000, 0, PSH | ACK).data(&[2; 1000])]);
            net.batch(&[c.c(2000, 0, PSH | ACK).data(&[3; 1000])]);
        },
    );
    assert_eq!(
        lines,
        strs(&[
            "svr null CONN_NEW_DATA 1000",
            "svr null ERROR Overrun",
            "svr null CONN_NEW_DATA 2000",
            "svr null ERROR Overrun",
            "svr null CONN_NEW_DATA 3000",
            "probe Err(Lost(1976))",
            "probe Ok(1024)",
            "probe Ok(0)",
        ])
    );
}

#[test]
fn peek_lost_over_a_skipped_gap() {
    let log = new_log();
    let rec = Recorder::new(&log)
        .subs(
            Subscriptions::none()
                .with(EventKind::NewData, Hook::None)
                .with_buffers(BufferRequest::Default),
        )
        .hook(|cx, ev, out| {
            let mut buf = [0u8; 512];
            loop {
                let r = cx.peek(ev.flow, Side::Server, &mut buf);
                out.push(format!("probe {r:?}"));
                if !matches!(r, Ok(n) if n > 0) && !matches!(r, Err(PeekError::Lost(_))) {
                    break;
                }
            }
        });
    let c = Conn::v4();
    // The gap is skipped at the ACK (no reordering allowance): the read API's view of it.
    let skip_at_once = Config {
        gap_skip_after: 0,
        ..cfg()
    };
    let lines = run(skip_at_once, rec, |net| {
        net.each(&c.handshake());
        net.batch(&[
            c.c(0, 0, PSH | ACK).data(&[1; 10]),
            c.c(30, 0, PSH | ACK).data(&[3; 10]),
        ]);
        net.batch(&[c.s(0, 40, ACK)]);
    });
    assert_eq!(
        only_probes(lines),
        strs(&[
            "probe Ok(10)",
            "probe Ok(0)",
            "probe Err(Lost(20))",
            "probe Ok(10)",
            "probe Ok(0)"
        ])
    );
}

/// The handle is valid from the first event to ConnEnd: reading inside ConnEnd works.
#[test]
fn reads_work_inside_conn_end() {
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    let log = new_log();
    let rec = Recorder::new(&log).hook(move |cx: &mut Cx<'_>, ev: &Event, _| {
        if ev.kind == EventKind::ConnEnd
            && ev.hook == Hook::Rcv
            && side_of(ev) == Some(Side::Server)
        {
            g.borrow_mut()
                .push(format!("{:?}", ppeek_at(cx, ev.flow, Side::Server, 0, 8)));
            g.borrow_mut().push(format!("{:?}", cx.end_reason(ev.flow)));
        }
    });
    let c = Conn::v4();
    run(cfg(), rec, |net| {
        net.each(&c.handshake());
        net.batch(&[c.c(0, 0, PSH | ACK).data(b"bye")]);
        net.batch(&[c.c(3, 0, RST)]);
        net.advance(1_100_000_000); // the RST lingers (SPEC §3.1)
    });
    assert_eq!(
        *got.borrow(),
        strs(&["Ok([98, 121, 101])", "Ok(Some(Rst))"])
    );
}
