//! Live capture through `AF_PACKET` on a veth pair between two network namespaces.
//!
//! Each test builds its own pair of namespaces (`fp<pid><tag>-a`, `-b`, deleted on drop),
//! runs real TCP connections between them with std sockets (threads enter a namespace with
//! `setns`, which changes only the calling thread), and captures on the veth end in
//! namespace a:
//!
//! - `streams_match_what_was_sent`: one socket feeds an [`Engine`] with a [`StreamHasher`];
//!   every connection's c2s and s2c SHA-256 must equal what the programs sent, with
//!   nothing missing.
//! - `symmetric_fanout_keeps_flows_together`: two sockets in one `Symmetric` fanout group;
//!   both directions of every flow must land on the same socket, and both sockets get flows.
//!
//! They need root (or CAP_NET_ADMIN + CAP_NET_RAW + CAP_SYS_ADMIN) and iproute2's `ip`;
//! without them they print why and pass.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use flowpeek::flow::{Config, EndReason, Engine};
use flowpeek::io::afpacket::{AfPacketSocket, FanoutGroup, FanoutMode, RingConfig};
use flowpeek::streams::{StreamHasher, StreamRecord};
use sha2::{Digest, Sha256};

#[macro_use]
mod netns;
use netns::{enter_netns, Net};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 5000;
const SIZES: [usize; 4] = [1, 1024, 100_000, 1_000_000];
const CONNECTIONS: usize = 20;
const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What one side of a connection sent and received.
#[derive(Debug, Clone)]
struct Seen {
    sent_sha: String,
    sent: usize,
    received_sha: String,
    received: usize,
}

/// Runs `CONNECTIONS` connections from ns a to a server in ns b; returns, per client
/// address, what the client and the server saw.
fn run_traffic(net: &Net) -> HashMap<SocketAddr, (Seen, Seen)> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (srv_tx, srv_rx) = mpsc::channel::<(SocketAddr, Seen)>();
    let ns_b = net.ns_b.clone();
    let server = thread::spawn(move || {
        enter_netns(&ns_b);
        let listener = TcpListener::bind((SERVER_IP, PORT)).expect("bind server");
        ready_tx.send(()).unwrap();
        let mut handlers = Vec::new();
        for k in 0..CONNECTIONS {
            let (mut conn, peer) = listener.accept().expect("accept");
            let tx = srv_tx.clone();
            handlers.push(thread::spawn(move || {
                conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                conn.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).expect("server read");
                let out = payload(1_000 + k as u64, SIZES[(k * 3 + 1) % SIZES.len()]);
                conn.write_all(&out).expect("server write");
                conn.shutdown(Shutdown::Write).expect("server shutdown");
                // Wait for the client's close so both FINs are on the wire.
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest);
                tx.send((
                    peer,
                    Seen {
                        sent_sha: sha(&out),
                        sent: out.len(),
                        received_sha: sha(&got),
                        received: got.len(),
                    },
                ))
                .unwrap();
            }));
        }
        for h in handlers {
            h.join().expect("server handler");
        }
    });
    ready_rx.recv_timeout(IO_TIMEOUT).expect("server ready");

    let workers = 4;
    let (cli_tx, cli_rx) = mpsc::channel::<(SocketAddr, Seen)>();
    let clients: Vec<_> = (0..workers)
        .map(|w| {
            let ns_a = net.ns_a.clone();
            let tx = cli_tx.clone();
            thread::spawn(move || {
                enter_netns(&ns_a);
                for i in (w..CONNECTIONS).step_by(workers) {
                    let mut conn = TcpStream::connect_timeout(
                        &SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT)),
                        IO_TIMEOUT,
                    )
                    .expect("connect");
                    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    conn.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                    let local = conn.local_addr().unwrap();
                    let out = payload(i as u64, SIZES[i % SIZES.len()]);
                    conn.write_all(&out).expect("client write");
                    conn.shutdown(Shutdown::Write).expect("client shutdown");
                    let mut got = Vec::new();
                    conn.read_to_end(&mut got).expect("client read");
                    drop(conn);
                    tx.send((
                        local,
                        Seen {
                            sent_sha: sha(&out),
                            sent: out.len(),
                            received_sha: sha(&got),
                            received: got.len(),
                        },
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    drop(cli_tx);
    for c in clients {
        c.join().expect("client thread");
    }
    server.join().expect("server thread");
    let srv: HashMap<_, _> = srv_rx.try_iter().collect();
    let mut all = HashMap::new();
    for (addr, cli) in cli_rx.try_iter() {
        let s = srv.get(&addr).expect("server saw every client").clone();
        assert_eq!(addr.ip(), CLIENT_IP);
        assert_eq!(
            (cli.sent, cli.received),
            (s.received, s.sent),
            "{addr}: lengths"
        );
        assert_eq!(
            cli.sent_sha, s.received_sha,
            "{addr}: server got what the client sent"
        );
        assert_eq!(
            s.sent_sha, cli.received_sha,
            "{addr}: client got what the server sent"
        );
        all.insert(addr, (cli, s));
    }
    assert_eq!(all.len(), CONNECTIONS);
    all
}

/// Polls until `stop` is set, then ~300 ms more (the last ACKs and FINs).
fn capture_until(stop: &AtomicBool, mut poll: impl FnMut(Duration)) {
    let mut deadline = None;
    loop {
        poll(Duration::from_millis(20));
        if stop.load(Ordering::Acquire) {
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_millis(300));
            if Instant::now() >= d {
                break;
            }
        }
    }
}

#[test]
fn streams_match_what_was_sent() {
    require_live!();
    let net = Net::up('s');
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (ns_a, if_a, stop2) = (net.ns_a.clone(), net.if_a.clone(), Arc::clone(&stop));
    let capture = thread::spawn(move || {
        enter_netns(&ns_a);
        let mut sock = match AfPacketSocket::open(&if_a, None, RingConfig::default()) {
            Ok(s) => s,
            Err(e) => {
                ready_tx.send(Err(e.to_string())).unwrap();
                return None;
            }
        };
        ready_tx.send(Ok(())).unwrap();
        let link = sock.link_type();
        let done = Rc::new(RefCell::new(Vec::<StreamRecord>::new()));
        let hasher = StreamHasher::new(1 << 20, Rc::clone(&done));
        let cfg = Config {
            midstream: true,
            buffer_capacity: 1 << 20,
            ..Config::default()
        };
        let mut engine = Engine::new(cfg, vec![Box::new(hasher)]);
        capture_until(&stop2, |t| {
            sock.poll_batch(t, |frame, ts| engine.on_frame(link, frame, ts))
                .expect("poll");
            engine.end_batch();
        });
        engine.finish(EndReason::Eof);
        let stats = sock.stats().expect("stats");
        let engine_stats = format!("{:?}", engine.stats());
        drop(engine);
        let records = std::mem::take(&mut *done.borrow_mut());
        Some((records, stats, engine_stats))
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("capture thread")
        .expect("open capture socket");

    let seen = run_traffic(&net);
    stop.store(true, Ordering::Release);
    let (records, stats, engine_stats) = capture.join().expect("capture thread").unwrap();
    eprintln!("socket: {stats:?}\nengine: {engine_stats}");
    assert_eq!(stats.drops, 0, "ring dropped packets: {stats:?}");

    let records: Vec<_> = records.iter().filter(|r| r.server.port() == PORT).collect();
    assert_eq!(
        records.len(),
        CONNECTIONS,
        "one record per connection: {records:#?}"
    );
    let mut matched = HashSet::new();
    for r in records {
        let (cli, srv) = seen
            .get(&r.client)
            .unwrap_or_else(|| panic!("record for an unknown client: {r:?}"));
        assert!(matched.insert(r.client), "two records for {}", r.client);
        assert_eq!(r.server, SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT)));
        assert!(!r.partial, "{r:?}");
        assert_eq!(r.c2s.missing, 0, "{r:?}");
        assert_eq!(r.s2c.missing, 0, "{r:?}");
        assert_eq!(r.c2s.bytes, cli.sent as u64, "{r:?}");
        assert_eq!(r.s2c.bytes, srv.sent as u64, "{r:?}");
        assert_eq!(r.c2s.sha256, cli.sent_sha, "{r:?}");
        assert_eq!(r.s2c.sha256, srv.sent_sha, "{r:?}");
        assert_eq!(r.close, "fin", "{r:?}");
    }
}

/// The TCP 4-tuple of an Ethernet/IPv4 frame, if it is one.
fn tcp4(frame: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    if frame.len() < 14 + 20 + 4 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    if ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let tcp = ip.get(ihl..ihl + 4)?;
    let addr = |a: &[u8], p: &[u8]| {
        SocketAddrV4::new(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            u16::from_be_bytes([p[0], p[1]]),
        )
    };
    Some((addr(&ip[12..16], &tcp[0..2]), addr(&ip[16..20], &tcp[2..4])))
}

#[test]
fn symmetric_fanout_keeps_flows_together() {
    require_live!();
    let net = Net::up('f');
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (ns_a, if_a, stop2) = (net.ns_a.clone(), net.if_a.clone(), Arc::clone(&stop));
    let capture = thread::spawn(move || {
        enter_netns(&ns_a);
        let group = FanoutGroup {
            id: (std::process::id() & 0xffff) as u16,
            mode: FanoutMode::Symmetric,
        };
        let ring = RingConfig {
            block_count: 32,
            ..RingConfig::default()
        };
        let socks: Result<Vec<_>, _> = (0..2)
            .map(|_| AfPacketSocket::open(&if_a, Some(group), ring))
            .collect();
        let mut socks = match socks {
            Ok(s) => s,
            Err(e) => {
                ready_tx.send(Err(e.to_string())).unwrap();
                return None;
            }
        };
        ready_tx.send(Ok(())).unwrap();
        // Per flow (client endpoint first): packets per socket and direction.
        let mut flows: HashMap<(SocketAddrV4, SocketAddrV4), [[u64; 2]; 2]> = HashMap::new();
        capture_until(&stop2, |t| {
            for (i, sock) in socks.iter_mut().enumerate() {
                sock.poll_batch(t / 2, |frame, _| {
                    let Some((src, dst)) = tcp4(frame) else {
                        return;
                    };
                    let (key, dir) = if dst.port() == PORT {
                        ((src, dst), 0)
                    } else {
                        ((dst, src), 1)
                    };
                    flows.entry(key).or_default()[i][dir] += 1;
                })
                .expect("poll");
            }
        });
        let stats: Vec<_> = socks
            .iter_mut()
            .map(|s| s.stats().expect("stats"))
            .collect();
        Some((flows, stats))
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("capture thread")
        .expect("open fanout sockets");

    let seen = run_traffic(&net);
    stop.store(true, Ordering::Release);
    let (flows, stats) = capture.join().expect("capture thread").unwrap();
    eprintln!("sockets: {stats:?}");
    for s in &stats {
        assert_eq!(s.drops, 0, "{stats:?}");
    }
    assert_eq!(flows.len(), CONNECTIONS, "{flows:?}");
    let mut per_socket = [0; 2];
    for ((client, _), counts) in &flows {
        assert!(
            seen.contains_key(&SocketAddr::V4(*client)),
            "unknown flow {client}"
        );
        let used: Vec<usize> = (0..2).filter(|&i| counts[i] != [0, 0]).collect();
        assert_eq!(
            used.len(),
            1,
            "flow {client} split over sockets: {counts:?}"
        );
        let c = counts[used[0]];
        assert!(
            c[0] > 0 && c[1] > 0,
            "flow {client} lacks a direction: {counts:?}"
        );
        per_socket[used[0]] += 1;
    }
    assert!(
        per_socket[0] > 0 && per_socket[1] > 0,
        "the hash put every flow on one socket: {per_socket:?}"
    );
    eprintln!("flows per socket: {per_socket:?}");
}

#[path = "plugin_util/mod.rs"]
mod plugin_util;

/// The whole path: `flowpeek run --source afpacket:IF --cores 2` with the streamhash plugin,
/// in the client's namespace, while real clients and servers talk: every connection's hashes
/// equal the bytes the programs sent.
#[test]
fn flowpeek_run_with_streamhash_on_two_cores() {
    require_live!();
    let net = Net::up('r');
    let dir = plugin_util::TempDir::new("live-plugins");
    let logs = plugin_util::TempDir::new("live-logs");
    plugin_util::place(&plugin_util::streamhash(), dir.path(), "streamhash.so");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns_a,
            env!("CARGO_BIN_EXE_flowpeek"),
            "run",
        ])
        .arg(format!("--source=afpacket:{}", net.if_a))
        .arg("--plugins")
        .arg(dir.path())
        .arg("--log-dir")
        .arg(logs.path())
        .args([
            "--cores",
            "2",
            "--buffer",
            "1048576",
            "--quiet",
            "--no-watch",
        ])
        .spawn()
        .expect("start flowpeek run");
    // The log file appears when the plugins are loaded, just before the sockets open.
    let log = logs.join("streamhash.jsonl");
    let t0 = Instant::now();
    while !log.exists() && t0.elapsed() < IO_TIMEOUT {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    let seen = run_traffic(&net);
    thread::sleep(Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().expect("wait for flowpeek");
    assert!(status.success(), "flowpeek run exited with {status}");
    let text = std::fs::read_to_string(&log).expect("streamhash log");
    let mut matched = HashSet::new();
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if !r["server"].as_str().unwrap().ends_with(&format!(":{PORT}")) {
            continue;
        }
        let client: SocketAddr = r["client"].as_str().unwrap().parse().unwrap();
        let (cli, srv) = seen
            .get(&client)
            .unwrap_or_else(|| panic!("unknown client {r}"));
        assert!(matched.insert(client), "two records for {client}");
        assert_eq!(r["c2s"]["bytes"], cli.sent as u64, "{r}");
        assert_eq!(r["s2c"]["bytes"], srv.sent as u64, "{r}");
        assert_eq!(r["c2s"]["sha256"], cli.sent_sha.as_str(), "{r}");
        assert_eq!(r["s2c"]["sha256"], srv.sent_sha.as_str(), "{r}");
        assert_eq!(r["c2s"]["missing"], 0, "{r}");
        assert_eq!(r["s2c"]["missing"], 0, "{r}");
    }
    assert_eq!(matched.len(), CONNECTIONS, "one record per connection");
}
