//! The `shm` rings across processes: a producer child (this test binary re-executed with
//! `FLOWPEEK_SHM_CHILD` set) and the test process as consumer.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use flowpeek::io::shm::{self, PushError, ShmError, ShmRegion};

const CHILD_ENV: &str = "FLOWPEEK_SHM_CHILD";

/// An Ethernet/IPv4/TCP frame carrying `n` as an 8-byte payload. Flow = n % 37; odd `n` go
/// the other way, so both directions of each flow are exercised.
fn frame(n: u64) -> Vec<u8> {
    let flow = (n % 37) as u8;
    let (mut src, mut dst) = ([10, 0, 0, flow], [10, 1, 0, 1]);
    let (mut sport, mut dport) = (1000 + u16::from(flow), 80u16);
    if n % 2 == 1 {
        std::mem::swap(&mut src, &mut dst);
        std::mem::swap(&mut sport, &mut dport);
    }
    let mut f = Vec::with_capacity(62);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = 20u16 + 20 + 8;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        6,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(n as u32).to_be_bytes()); // seq
    f.extend_from_slice(&0u32.to_be_bytes()); // ack
    f.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&n.to_be_bytes());
    f
}

fn number(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[frame.len() - 8..].try_into().unwrap())
}

fn unique(tag: &str) -> String {
    format!("flowpeek-test-{tag}-{}", std::process::id())
}

/// The producer, when this binary runs as the child. Env: FLOWPEEK_SHM_CHILD=name,rings,
/// slots,count,mode (mode: normal | slow | crash).
#[test]
fn producer_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let v: Vec<&str> = args.split(',').collect();
    let (name, rings, slots, count, mode) = (
        v[0],
        v[1].parse().unwrap(),
        v[2].parse().unwrap(),
        v[3].parse::<u64>().unwrap(),
        v[4],
    );
    let mut p = ShmRegion::create(name, rings, slots, 2048).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "GO");
    let mut told = false;
    for n in 0..count {
        let f = frame(n);
        loop {
            match p.push_hashed(&f) {
                Ok(_) => break,
                Err(PushError::Full { .. }) => {
                    if mode == "slow" && !told {
                        writeln!(out, "FULL").unwrap();
                        out.flush().unwrap();
                        told = true;
                    }
                    std::thread::yield_now();
                }
                Err(e) => panic!("push: {e}"),
            }
        }
    }
    let full: u64 = (0..rings as usize).map(|r| p.full_count(r)).sum();
    writeln!(out, "STATS full={full}").unwrap();
    out.flush().unwrap();
    if mode == "crash" {
        p.keep_file(true);
        std::mem::forget(p);
        std::process::exit(0);
    }
}

struct Producer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Producer {
    fn spawn(name: &str, rings: u32, slots: u32, count: u64, mode: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "producer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{name},{rings},{slots},{count},{mode}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Producer {
            child,
            stdin,
            stdout,
        };
        p.expect("READY");
        p
    }

    /// Reads lines until one starts with `prefix` (the test harness prints its own).
    fn expect(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "producer child ended before printing {prefix}");
            // The harness prints "test producer_child ... " before the child's first line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
        }
    }

    fn go(&mut self) {
        writeln!(self.stdin, "GO").unwrap();
        self.stdin.flush().unwrap();
    }

    fn full_count(&mut self) -> u64 {
        self.expect("STATS full=").parse().unwrap()
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "producer child failed: {status}");
    }
}

/// Reads every ring until each reports that the producer exited; checks that every number
/// below `count` arrived exactly once and on the ring its symmetric hash selects.
#[allow(clippy::needless_range_loop)] // `r` is also the ring index passed to rx_batch
fn consume_all(c: &mut shm::ShmConsumer, count: u64) -> ShmError {
    let rings = c.rings();
    let mut seen = vec![0u8; count as usize];
    let mut done = vec![None; rings];
    let mut last_err = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done.iter().any(Option::is_none) {
        assert!(std::time::Instant::now() < deadline, "consumer timed out");
        for r in 0..rings {
            if done[r].is_some() {
                continue;
            }
            match c.rx_batch(r, |f| {
                let n = number(f);
                assert!(n < count, "unexpected frame {n}");
                seen[n as usize] += 1;
                assert_eq!(shm::ring_for(f, rings), r, "frame {n} on the wrong ring");
            }) {
                Ok(_) => {}
                Err(e @ ShmError::ProducerExited { .. }) => {
                    done[r] = Some(());
                    last_err = Some(e);
                }
                Err(e) => panic!("consumer: {e}"),
            }
        }
        std::thread::yield_now();
    }
    let missing: Vec<_> = (0..count)
        .filter(|&n| seen[n as usize] == 0)
        .take(5)
        .collect();
    let dup: Vec<_> = (0..count)
        .filter(|&n| seen[n as usize] > 1)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?}, duplicated {dup:?}"
    );
    last_err.unwrap()
}

#[test]
fn every_frame_once_across_processes_and_rings() {
    let name = unique("many");
    let count = 60_000;
    let mut p = Producer::spawn(&name, 4, 64, count, "normal");
    let mut c = ShmRegion::open(&name).unwrap();
    assert_eq!(c.rings(), 4);
    assert_eq!(c.region().producer_pid(), p.child.id());
    // Both directions of a flow share a ring, and the flows spread over all rings.
    let used: std::collections::HashSet<_> = (0..74).map(|n| shm::ring_for(&frame(n), 4)).collect();
    assert!(used.len() > 1);
    for n in 0..74 {
        assert_eq!(
            shm::ring_for(&frame(n), 4),
            shm::ring_for(&frame(n + 37), 4)
        );
    }
    p.go();
    let err = consume_all(&mut c, count);
    assert!(err.to_string().contains("closed the region"), "{err}");
    let _full = p.full_count();
    p.finish();
    assert!(
        !ShmRegion::path_for(&name).unwrap().exists(),
        "producer removes its file"
    );
}

#[test]
fn ring_wraps_many_times() {
    let name = unique("wrap");
    // 7 slots (not a power of two): 6 frames in flight at most, 5000 frames.
    let mut p = Producer::spawn(&name, 1, 7, 5000, "normal");
    let mut c = ShmRegion::open(&name).unwrap();
    p.go();
    consume_all(&mut c, 5000);
    p.full_count();
    p.finish();
}

#[test]
fn slow_consumer_makes_producer_count_full_then_recovers() {
    let name = unique("slow");
    let mut p = Producer::spawn(&name, 1, 16, 200, "slow");
    let mut c = ShmRegion::open(&name).unwrap();
    p.go();
    p.expect("FULL");
    // The producer is blocked: the ring holds num_slots - 1 frames.
    assert_eq!(c.ring(0).unwrap().available().unwrap(), 15);
    assert!(c.region().full_count() >= 1);
    consume_all(&mut c, 200);
    let full = p.full_count();
    assert!(full >= 1, "producer counted {full} full rings");
    p.finish();
}

#[test]
fn producer_that_dies_without_closing_is_detected() {
    let name = unique("crash");
    let mut p = Producer::spawn(&name, 2, 64, 50, "crash");
    let mut c = ShmRegion::open(&name).unwrap();
    p.go();
    p.full_count();
    p.finish(); // reaped: kill(pid, 0) now fails with ESRCH
    let err = consume_all(&mut c, 50);
    assert!(err.to_string().contains("exited without closing"), "{err}");
    std::fs::remove_file(ShmRegion::path_for(&name).unwrap()).unwrap();
}

mod refused {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn poke(name: &str, offset: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(ShmRegion::path_for(name).unwrap())
            .unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }

    fn open_err(name: &str) -> (ShmError, String) {
        let e = ShmRegion::open(name).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(&format!("/dev/shm/{name}")),
            "error does not name the file: {s}"
        );
        (e, s)
    }

    // Two rings: netmap_if at 4096, ring_ofs[0] at 4152, ring 0 at align128(4096+56+16)=4224.
    const RING_OFS0: u64 = 4096 + 56;
    const RING0: u64 = 4224;

    #[test]
    fn corrupt_ring_offset() {
        let name = unique("bad-ofs");
        let p = ShmRegion::create(&name, 2, 32, 256).unwrap();
        assert!(ShmRegion::open(&name).is_ok());
        poke(&name, RING_OFS0, &(1i64 << 40).to_ne_bytes());
        let (e, s) = open_err(&name);
        assert!(
            matches!(e, ShmError::Ring { .. }) && s.contains("outside"),
            "{s}"
        );
        drop(p);
    }

    #[test]
    fn corrupt_ring_fields() {
        let name = unique("bad-tail");
        let p = ShmRegion::create(&name, 2, 32, 256).unwrap();
        poke(&name, RING0 + 28, &32u32.to_ne_bytes()); // tail = num_slots
        let (_, s) = open_err(&name);
        assert!(s.contains("tail = 32"), "{s}");
        poke(&name, RING0 + 28, &0u32.to_ne_bytes());
        poke(&name, RING0 + 8, &0u32.to_ne_bytes()); // num_slots = 0
        let (_, s) = open_err(&name);
        assert!(s.contains("num_slots = 0"), "{s}");
        drop(p);
    }

    #[test]
    fn corrupt_header() {
        let name = unique("bad-hdr");
        let p = ShmRegion::create(&name, 2, 32, 256).unwrap();
        poke(&name, 40, &3u32.to_ne_bytes()); // rings
        let (e, s) = open_err(&name);
        assert!(matches!(e, ShmError::CorruptHeader { .. }), "{s}");
        poke(&name, 40, &2u32.to_ne_bytes());
        poke(&name, 0, b"NOT-FLOWPEEK");
        let (e, _) = open_err(&name);
        assert!(matches!(e, ShmError::NotShm { .. }));
        drop(p);
    }

    #[test]
    fn wrong_version() {
        let name = unique("bad-ver");
        let p = ShmRegion::create(&name, 1, 8, 128).unwrap();
        poke(&name, shm::VERSION_OFFSET as u64, &99u32.to_ne_bytes());
        let (e, s) = open_err(&name);
        assert!(
            matches!(
                e,
                ShmError::Version {
                    found: 99,
                    expected: shm::SHM_VERSION,
                    ..
                }
            ),
            "{s}"
        );
        assert!(s.contains("version 99"), "{s}");
        drop(p);
    }

    #[test]
    fn name_taken_and_bad_names() {
        let name = unique("taken");
        let p = ShmRegion::create(&name, 1, 8, 128).unwrap();
        let e = ShmRegion::create(&name, 1, 8, 128).unwrap_err();
        assert!(matches!(e, ShmError::Exists { .. }), "{e}");
        drop(p);
        assert!(matches!(
            ShmRegion::open(&name),
            Err(ShmError::NotFound { .. })
        ));
        for bad in ["", "a/b", ".hidden"] {
            assert!(matches!(
                ShmRegion::create(bad, 1, 8, 128),
                Err(ShmError::InvalidName { .. })
            ));
        }
        assert!(matches!(
            ShmRegion::create(&name, 0, 8, 128),
            Err(ShmError::InvalidGeometry { .. })
        ));
    }

    #[test]
    fn batched_publish_shows_frames_per_batch_on_full_and_on_flush() {
        let name = unique("batch");
        let mut p = ShmRegion::create(&name, 1, 8, 64).unwrap();
        p.set_publish_every(3);
        let mut c = ShmRegion::open(&name).unwrap();
        p.push(0, &[1; 8]).unwrap();
        p.push(0, &[2; 8]).unwrap();
        assert_eq!(
            c.rx_batch(0, |_| {}).unwrap(),
            0,
            "two frames: not a batch yet"
        );
        p.push(0, &[3; 8]).unwrap();
        let mut got = Vec::new();
        assert_eq!(c.rx_batch(0, |f| got.push(f[0])).unwrap(), 3);
        assert_eq!(got, [1, 2, 3]);
        p.push(0, &[4; 8]).unwrap();
        p.flush();
        assert_eq!(c.rx_batch(0, |f| assert_eq!(f, &[4; 8])).unwrap(), 1);
        // A ring found full publishes what it holds, so the consumer can free it.
        for k in 0..7u8 {
            p.push(0, &[k; 8]).unwrap();
        }
        assert_eq!(p.push(0, &[9; 8]), Err(PushError::Full { ring: 0 }));
        assert_eq!(c.rx_batch(0, |_| {}).unwrap(), 7);
        // Dropping the producer publishes the rest before closing.
        p.push(0, &[5; 8]).unwrap();
        drop(p);
        assert_eq!(c.rx_batch(0, |f| assert_eq!(f, &[5; 8])).unwrap(), 1);
    }

    #[test]
    fn push_errors() {
        let name = unique("push");
        let mut p = ShmRegion::create(&name, 1, 4, 64).unwrap();
        assert!(matches!(
            p.push(0, &[0; 65]),
            Err(PushError::TooLarge { len: 65, max: 64 })
        ));
        assert!(matches!(
            p.push(1, &[0; 8]),
            Err(PushError::NoSuchRing { .. })
        ));
        for _ in 0..3 {
            p.push(0, &[1; 8]).unwrap();
        }
        assert_eq!(p.push(0, &[1; 8]), Err(PushError::Full { ring: 0 }));
        assert_eq!(p.full_count(0), 1);
        let mut c = ShmRegion::open(&name).unwrap();
        assert_eq!(c.rx_batch(0, |f| assert_eq!(f, &[1; 8])).unwrap(), 3);
        p.push(0, &[2; 8]).unwrap();
        assert_eq!(c.rx_batch(0, |f| assert_eq!(f, &[2; 8])).unwrap(), 1);
        drop(p);
        assert!(matches!(
            c.rx_batch(0, |_| {}),
            Err(ShmError::ProducerExited { .. })
        ));
    }
}
