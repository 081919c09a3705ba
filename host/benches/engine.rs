//! Engine throughput benchmarks (criterion).
//!
//! Everything runs on prebuilt in-memory Ethernet/IPv4/TCP frames, on one core, with time
//! passed to the engine as a counter (1 ns per packet; the engine never reads a clock).
//!
//! - `pkts_64b/{10k,1M}_flows/{no_monitor,nop_pktin_snd,plugin_noop,newdata_peek}`: 64-byte
//!   frames (14 + 20 + 20 header bytes + 10 payload bytes) round-robin over established
//!   flows, both directions, `end_batch()` every 32 packets. Throughput in packets.
//!   `plugin_noop` is the bundled no-op plugin (target/release/libnoop.so, loaded through the
//!   plugin host: the whole FFI path; skipped with a message when it is not built:
//!   `cargo build --release -p flowpeek-plugin-noop`).
//! - `reassembly_1460b/{in_order,ooo_pairs}`: 1460-byte segments on 16 flows (client to
//!   server) read by a consuming `NewData` monitor (`peek` into a 64 KiB scratch).
//!   Throughput in payload bytes.
//! - `reassembly_1460b/in_order_{rust,plugin}_crc32`: the same in-order stream read to the
//!   end with CRC-32 over every byte, by an in-process monitor (zero-copy `Cx::read`, 256 KiB
//!   buffers) and by the real streamhash plugin with `hash = "crc32"` through the plugin host
//!   (target/release/libstreamhash.so; skipped when not built: `cargo build --release -p
//!   flowpeek-plugin-streamhash`): what the ABI costs a reader, without the generator.
//!
//! How sequence numbers stay valid: the packets are a ring of frames that is exactly one
//! "pass" of the traffic (every flow-direction sends `per_pass` segments). An iteration
//! processes the next chunk of the ring (timed), then adds one pass worth of sequence
//! space to the seq/ack fields of that chunk's frames in place (not timed), so the next
//! time those frames come round they carry the next segments. The engine thus sees one
//! endless in-order stream: no retransmission, no out-of-window data. Handshakes and one
//! priming pass (which allocates the receive buffers) run before measuring; flows are
//! created in a shuffled order so that the ring does not walk the flow table sequentially. A validation
//! run at start-up checks, with a monitor counting `Rexmit`/`Error`, that the streams are
//! what they claim to be.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion, Throughput};
use flowpeek::flow::{
    BufferRequest, Config, Cx, EndReason, Engine, Event, EventKind, EventSide, Hook, Monitor,
    PeekError, Subscriptions,
};
use flowpeek::io::netmap::{LOOKAHEAD_FAR, LOOKAHEAD_NEAR};
use flowpeek::wire::{LinkType, TcpFlags};

const HDR: usize = 14 + 20 + 20;
const TCP: usize = 14 + 20;
const BATCH: u64 = 32;
const LINK: Option<LinkType> = Some(LinkType::Ethernet);

// ---------------------------------------------------------------------------------------
// Frames

#[allow(clippy::too_many_arguments)]
fn write_frame(
    f: &mut [u8],
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: usize,
) {
    let total = (20 + 20 + payload) as u16;
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.to_be_bytes());
    let ip_sum = !fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut f[TCP..HDR];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t[16..20].copy_from_slice(&[0, 0, 0, 0]);
    for (i, b) in f[HDR..HDR + payload].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seq as u8);
    }
}

fn sum16(b: &[u8], mut acc: u32) -> u32 {
    for c in b.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn add_be32(b: &mut [u8], delta: u32) {
    let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).wrapping_add(delta);
    b.copy_from_slice(&v.to_be_bytes());
}

/// One flow: client `10.x.y.z:40000` (from the index) to `192.168.0.1:80`.
#[derive(Clone, Copy)]
struct FlowSpec {
    cli: u32,
    svr: u32,
    cport: u16,
    sport: u16,
    isn_c: u32,
    isn_s: u32,
}

fn flow_spec(i: u32) -> FlowSpec {
    // ISNs spread over the whole sequence space, some close to the 2^32 wrap.
    let isn_c = i.wrapping_mul(2_654_435_761).wrapping_add(0xfff0_0000);
    FlowSpec {
        cli: 0x0a00_0000 + i,
        svr: 0xc0a8_0001,
        cport: 40000,
        sport: 80,
        isn_c,
        isn_s: !isn_c,
    }
}

/// Drives the three-way handshake of every flow (not measured), in a shuffled order: the
/// engine's flow slots are then not visited in allocation order by the ring, as in real
/// traffic (otherwise the flow table is walked sequentially and the prefetcher hides its
/// misses).
fn handshakes(engine: &mut Engine, flows: &[FlowSpec], ts: &mut u64, count: &mut u64) {
    let mut order: Vec<usize> = (0..flows.len()).collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut f = [0u8; HDR];
    let (syn, ack) = (TcpFlags::SYN, TcpFlags::ACK);
    for s in order.iter().map(|&i| &flows[i]) {
        write_frame(&mut f, s.cli, s.svr, s.cport, s.sport, s.isn_c, 0, syn, 0);
        feed(engine, &f, ts, count);
        write_frame(
            &mut f,
            s.svr,
            s.cli,
            s.sport,
            s.cport,
            s.isn_s,
            s.isn_c.wrapping_add(1),
            syn | ack,
            0,
        );
        feed(engine, &f, ts, count);
        write_frame(
            &mut f,
            s.cli,
            s.svr,
            s.cport,
            s.sport,
            s.isn_c.wrapping_add(1),
            s.isn_s.wrapping_add(1),
            ack,
            0,
        );
        feed(engine, &f, ts, count);
    }
    engine.end_batch();
}

#[inline(always)]
fn feed(engine: &mut Engine, frame: &[u8], ts: &mut u64, count: &mut u64) {
    *ts += 1;
    engine.on_frame(LINK, frame, *ts);
    *count += 1;
    if *count % BATCH == 0 {
        engine.end_batch();
    }
}

/// A ring of frames forming one pass of the traffic; see the module doc.
struct Ring {
    frames: Vec<u8>,
    stride: usize,
    len: usize,
    n: usize,
    /// Added to every frame's seq and ack field after each pass.
    seq_delta: u32,
    ack_delta: u32,
    chunk: usize,
    pos: usize,
    payload: usize,
}

impl Ring {
    fn new(n: usize, payload: usize, seq_delta: u32, ack_delta: u32, chunk: usize) -> Ring {
        let len = HDR + payload;
        let stride = len.next_multiple_of(64);
        assert!(n % chunk == 0, "chunk must divide the ring");
        Ring {
            frames: vec![0; n * stride],
            stride,
            len,
            n,
            seq_delta,
            ack_delta,
            chunk,
            pos: 0,
            payload,
        }
    }

    fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.frames[i * self.stride..i * self.stride + self.len]
    }

    /// Processes the next chunk (the measured part).
    #[inline(never)]
    fn run_chunk(&self, engine: &mut Engine, ts: &mut u64, count: &mut u64) {
        let start = self.pos * self.stride;
        let end = start + self.chunk * self.stride;
        if !engine.prefetch_wanted() {
            for f in self.frames[start..end].chunks_exact(self.stride) {
                feed(engine, &f[..self.len], ts, count);
            }
            return;
        }
        // A big table: the lookahead of the shm/netmap workers (RxRing::feed).
        let frame = |k: usize| {
            let at = start + k * self.stride;
            &self.frames[at..at + self.len]
        };
        let (far, near) = (LOOKAHEAD_FAR as usize, LOOKAHEAD_NEAR as usize);
        for k in 0..self.chunk {
            if k + far < self.chunk {
                engine.prefetch_index(LINK, frame(k + far));
            }
            if k + near < self.chunk {
                engine.prefetch_flow(LINK, frame(k + near));
            }
            feed(engine, frame(k), ts, count);
        }
    }

    /// Moves the chunk just processed one pass ahead (not measured).
    fn advance(&mut self) {
        let (sd, ad) = (self.seq_delta, self.ack_delta);
        for i in self.pos..self.pos + self.chunk {
            let f = self.frame_mut(i);
            add_be32(&mut f[TCP + 4..TCP + 8], sd);
            add_be32(&mut f[TCP + 8..TCP + 12], ad);
        }
        self.pos = (self.pos + self.chunk) % self.n;
    }

    fn pass(&mut self, engine: &mut Engine, ts: &mut u64, count: &mut u64) {
        for _ in 0..self.n / self.chunk {
            self.run_chunk(engine, ts, count);
            self.advance();
        }
    }
}

/// 64-byte frames, round-robin over `flows`: per flow, the client's segment then the
/// server's (which acknowledges it). One segment per flow-direction per pass.
fn ring_64b(flows: &[FlowSpec], chunk: usize) -> Ring {
    const P: usize = 10;
    let mut r = Ring::new(flows.len() * 2, P, P as u32, P as u32, chunk);
    let pa = TcpFlags::PSH | TcpFlags::ACK;
    for (i, s) in flows.iter().enumerate() {
        let (c, sv) = (s.isn_c.wrapping_add(1), s.isn_s.wrapping_add(1));
        write_frame(
            r.frame_mut(2 * i),
            s.cli,
            s.svr,
            s.cport,
            s.sport,
            c,
            sv,
            pa,
            P,
        );
        write_frame(
            r.frame_mut(2 * i + 1),
            s.svr,
            s.cli,
            s.sport,
            s.cport,
            sv,
            c.wrapping_add(P as u32),
            pa,
            P,
        );
    }
    r
}

/// 1460-byte segments from the client, `per_flow` per flow per pass, round-robin over the
/// flows; with `swap`, each flow's segments come in swapped pairs (2k+1 before 2k).
fn ring_1460(flows: &[FlowSpec], per_flow: usize, swap: bool) -> Ring {
    const P: usize = 1460;
    let n = flows.len() * per_flow;
    let mut r = Ring::new(n, P, (per_flow * P) as u32, 0, n);
    let pa = TcpFlags::PSH | TcpFlags::ACK;
    let mut i = 0;
    for pair in 0..per_flow / 2 {
        for s in flows {
            let order = if swap {
                [2 * pair + 1, 2 * pair]
            } else {
                [2 * pair, 2 * pair + 1]
            };
            for k in order {
                let seq = s.isn_c.wrapping_add(1).wrapping_add((k * P) as u32);
                write_frame(
                    r.frame_mut(i),
                    s.cli,
                    s.svr,
                    s.cport,
                    s.sport,
                    seq,
                    s.isn_s.wrapping_add(1),
                    pa,
                    P,
                );
                i += 1;
            }
        }
    }
    assert_eq!(i, n);
    r
}

// ---------------------------------------------------------------------------------------
// Monitors

/// Like a no-op plugin: `PktIn` at `Snd`, does nothing.
struct Nop;

impl Monitor for Nop {
    fn name(&self) -> &str {
        "nop"
    }
    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none().with(EventKind::PktIn, Hook::Snd)
    }
    fn on_event(&mut self, _cx: &mut Cx<'_>, ev: &Event) {
        black_box(ev);
    }
}

#[derive(Default)]
struct Counters {
    peeked: Cell<u64>,
    lost: Cell<u64>,
    rexmit: Cell<u64>,
    errors: Cell<u64>,
}

/// `NewData` with the default buffer; reads everything with `peek` into a 64 KiB scratch.
struct Peeker {
    scratch: Box<[u8]>,
    c: Rc<Counters>,
}

impl Peeker {
    fn new(c: &Rc<Counters>) -> Peeker {
        Peeker {
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            c: c.clone(),
        }
    }
}

impl Monitor for Peeker {
    fn name(&self) -> &str {
        "peeker"
    }
    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with_buffers(BufferRequest::Default)
    }
    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let EventSide::One(side) = ev.side else {
            return;
        };
        let mut got = 0u64;
        loop {
            match cx.peek(ev.flow, side, &mut self.scratch) {
                Ok(0) => break,
                Ok(n) => {
                    black_box(&self.scratch[..n]);
                    got += n as u64;
                }
                Err(PeekError::Lost(n)) => self.c.lost.set(self.c.lost.get() + n),
                Err(PeekError::Errno(_)) => break,
            }
        }
        self.c.peeked.set(self.c.peeked.get() + got);
    }
}

/// Validation only: counts `Rexmit` and `Error`.
struct Checker(Rc<Counters>);

impl Monitor for Checker {
    fn name(&self) -> &str {
        "checker"
    }
    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::Rexmit, Hook::Rcv)
            .with(EventKind::Error, Hook::None)
    }
    fn on_event(&mut self, _cx: &mut Cx<'_>, ev: &Event) {
        let c = match ev.kind {
            EventKind::Rexmit => &self.0.rexmit,
            _ => &self.0.errors,
        };
        c.set(c.get() + 1);
    }
}

// ---------------------------------------------------------------------------------------
// Harness

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    NoMonitor,
    NopPktIn,
    PluginNoop,
    NewDataPeek,
}

/// A bundled plugin's release library (`lib<name>.so`), if built.
fn plugin_library(name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/release/lib{name}.so"));
    p.exists().then_some(p)
}

fn noop_library() -> Option<std::path::PathBuf> {
    plugin_library("noop")
}

/// A plugin host with one bundled plugin and its configuration, for one core (kept alive
/// with the engine).
fn plugin_host(name: &str, config: &str) -> (flowpeek::plugin::PluginHost, Vec<Box<dyn Monitor>>) {
    use std::os::unix::fs::PermissionsExt;
    let lib = plugin_library(name).expect("checked by the caller");
    let dir = std::env::temp_dir().join(format!("flowpeek-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(lib, dir.join(format!("{name}.so"))).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), config).unwrap();
    let r =
        flowpeek::plugin::PluginHost::open(&dir, &dir.join("logs"), 0, u64::MAX, false).unwrap();
    assert!(r.0.failures.is_empty(), "{:?}", r.0.failures);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn noop_plugin_host() -> (flowpeek::plugin::PluginHost, Vec<Box<dyn Monitor>>) {
    plugin_host("noop", "")
}

/// `NewData` with 256 KiB buffers (as streamhash); reads everything in place with `read`
/// and CRC-32s it: the in-process twin of streamhash with `hash = "crc32"`.
struct Crc32Reader {
    crc: crc32fast::Hasher,
    c: Rc<Counters>,
}

impl Monitor for Crc32Reader {
    fn name(&self) -> &str {
        "crc32-reader"
    }
    fn subscriptions(&self) -> Subscriptions {
        Subscriptions::none()
            .with(EventKind::NewData, Hook::None)
            .with_buffers(BufferRequest::AtLeast(1 << 18))
    }
    fn on_event(&mut self, cx: &mut Cx<'_>, ev: &Event) {
        let EventSide::One(side) = ev.side else {
            return;
        };
        let mut got = 0u64;
        loop {
            match cx.read(ev.flow, side, usize::MAX) {
                Ok((a, b)) if a.is_empty() && b.is_empty() => break,
                Ok((a, b)) => {
                    self.crc.update(a);
                    self.crc.update(b);
                    got += (a.len() + b.len()) as u64;
                }
                Err(PeekError::Lost(n)) => self.c.lost.set(self.c.lost.get() + n),
                Err(PeekError::Errno(_)) => break,
            }
        }
        black_box(self.crc.clone().finalize());
        self.c.peeked.set(self.c.peeked.get() + got);
    }
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NoMonitor => "no_monitor",
            Variant::NopPktIn => "nop_pktin_snd",
            Variant::PluginNoop => "plugin_noop",
            Variant::NewDataPeek => "newdata_peek",
        }
    }
    fn monitors(self, c: &Rc<Counters>) -> Vec<Box<dyn Monitor>> {
        match self {
            Variant::NoMonitor => vec![],
            Variant::NopPktIn => vec![Box::new(Nop)],
            Variant::PluginNoop => unreachable!("built with its host"),
            Variant::NewDataPeek => vec![Box::new(Peeker::new(c))],
        }
    }
}

/// An engine with established flows and a primed ring, ready to measure.
struct Setup {
    engine: Engine,
    ring: Ring,
    ts: u64,
    count: u64,
    c: Rc<Counters>,
    data_pkts: u64,
    _plugins: Option<flowpeek::plugin::PluginHost>,
}

impl Setup {
    fn new(
        cfg: Config,
        monitors: Vec<Box<dyn Monitor>>,
        c: Rc<Counters>,
        flows: &[FlowSpec],
        ring: Ring,
    ) -> Setup {
        let mut s = Setup {
            engine: Engine::new(cfg, monitors),
            ring,
            ts: 0,
            count: 0,
            c,
            data_pkts: 0,
            _plugins: None,
        };
        handshakes(&mut s.engine, flows, &mut s.ts, &mut s.count);
        assert_eq!(s.engine.stats().flows_live, flows.len() as u64);
        s.ring.pass(&mut s.engine, &mut s.ts, &mut s.count);
        s.data_pkts += s.ring.n as u64;
        s
    }

    fn measure(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            self.ring
                .run_chunk(&mut self.engine, &mut self.ts, &mut self.count);
            total += t.elapsed();
            self.ring.advance();
            self.data_pkts += self.ring.chunk as u64;
        }
        total
    }

    /// After measuring: the engine must still hold every flow, with nothing dropped.
    fn check(&mut self, nflows: usize, peeking: bool) {
        self.engine.end_batch();
        let st = self.engine.stats();
        assert_eq!(st.flows_live, nflows as u64, "{st:?}");
        assert_eq!(
            st.flows_evicted + st.flows_timed_out + st.orphans + st.malformed,
            0,
            "{st:?}"
        );
        assert_eq!(
            st.bytes_beyond_window + st.bytes_missing + st.fragment_limit_drops,
            0,
            "{st:?}"
        );
        assert_eq!(st.buffer_memory_refusals, 0, "{st:?}");
        if peeking {
            assert_eq!(self.c.lost.get(), 0);
            assert_eq!(
                self.c.peeked.get(),
                self.data_pkts * self.ring.payload as u64,
                "peeked bytes"
            );
        }
        self.engine.finish(EndReason::Eof);
    }
}

/// Checks, with a `Rexmit`/`Error` counter, that a ring is an in-order, in-window stream.
fn validate(
    name: &str,
    flows: &[FlowSpec],
    mut make_ring: impl FnMut(&[FlowSpec]) -> Ring,
    cfg: Config,
) {
    let c = Rc::new(Counters::default());
    let mons: Vec<Box<dyn Monitor>> = vec![Box::new(Peeker::new(&c)), Box::new(Checker(c.clone()))];
    let mut s = Setup::new(cfg, mons, c.clone(), flows, make_ring(flows));
    for _ in 0..3 {
        s.ring.pass(&mut s.engine, &mut s.ts, &mut s.count);
        s.data_pkts += s.ring.n as u64;
    }
    s.engine.end_batch();
    assert_eq!(
        (c.rexmit.get(), c.errors.get()),
        (0, 0),
        "{name}: stream is not clean"
    );
    s.check(flows.len(), true);
}

fn cfg_64b(nflows: usize) -> Config {
    let mut cfg = Config::default();
    if nflows > 100_000 {
        cfg.max_flows = (nflows as u32 * 2).next_power_of_two();
        // 2 sides x 1M flows x 8 KiB would be 16 GiB: use 1 KiB buffers there.
        cfg.buffer_capacity = 1024;
        cfg.buffer_memory = 4 << 30;
    }
    cfg
}

fn bench_64b(c: &mut Criterion, nflows: usize, label: &str, chunk: usize) {
    let flows: Vec<FlowSpec> = (0..nflows as u32).map(flow_spec).collect();
    let mut g = c.benchmark_group("pkts_64b");
    g.sample_size(10);
    g.throughput(Throughput::Elements(chunk as u64));
    for v in [
        Variant::NoMonitor,
        Variant::NopPktIn,
        Variant::PluginNoop,
        Variant::NewDataPeek,
    ] {
        if v == Variant::PluginNoop && noop_library().is_none() {
            eprintln!("pkts_64b/{label}/plugin_noop skipped: build the plugin first (cargo build --release -p flowpeek-plugin-noop)");
            continue;
        }
        // Built on first use, so that a filtered-out benchmark costs no setup.
        let mut setup: Option<Setup> = None;
        g.bench_function(format!("{label}/{}", v.name()), |b| {
            let s = setup.get_or_insert_with(|| {
                let counters = Rc::new(Counters::default());
                let ring = ring_64b(&flows, chunk);
                let (host, monitors) = if v == Variant::PluginNoop {
                    let (h, m) = noop_plugin_host();
                    (Some(h), m)
                } else {
                    (None, v.monitors(&counters))
                };
                let mut s = Setup::new(cfg_64b(nflows), monitors, counters, &flows, ring);
                s._plugins = host;
                s
            });
            b.iter_custom(|iters| s.measure(iters));
        });
        if let Some(mut s) = setup {
            s.check(nflows, v == Variant::NewDataPeek);
        }
    }
    g.finish();
}

fn pkts_64b(c: &mut Criterion) {
    let small: Vec<FlowSpec> = (0..1000).map(flow_spec).collect();
    validate("64b", &small, |f| ring_64b(f, 2000), cfg_64b(1000));
    validate(
        "1460b",
        &small[..16],
        |f| ring_1460(f, 64, false),
        Config::default(),
    );
    validate(
        "1460b swapped",
        &small[..16],
        |f| ring_1460(f, 64, true),
        Config::default(),
    );

    bench_64b(c, 10_000, "10k_flows", 20_000);
    bench_64b(c, 1_000_000, "1M_flows", 100_000);
}

fn reassembly(c: &mut Criterion) {
    const FLOWS: u32 = 16;
    const PER_FLOW: usize = 64;
    let flows: Vec<FlowSpec> = (0..FLOWS).map(flow_spec).collect();
    let mut g = c.benchmark_group("reassembly_1460b");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((FLOWS as usize * PER_FLOW * 1460) as u64));
    for (name, swap) in [
        ("in_order", false),
        ("ooo_pairs", true),
        ("in_order_rust_crc32", false),
        ("in_order_plugin_crc32", false),
    ] {
        let plugin = name == "in_order_plugin_crc32";
        if plugin && plugin_library("streamhash").is_none() {
            eprintln!("reassembly_1460b/{name} skipped: build the plugin first (cargo build --release -p flowpeek-plugin-streamhash)");
            continue;
        }
        let mut setup: Option<Setup> = None;
        g.bench_function(name, |b| {
            let s = setup.get_or_insert_with(|| {
                let counters = Rc::new(Counters::default());
                let (host, mons): (_, Vec<Box<dyn Monitor>>) = match name {
                    "in_order_plugin_crc32" => {
                        let (h, m) = plugin_host("streamhash", "hash = \"crc32\"\n");
                        (Some(h), m)
                    }
                    "in_order_rust_crc32" => (
                        None,
                        vec![Box::new(Crc32Reader {
                            crc: crc32fast::Hasher::new(),
                            c: counters.clone(),
                        })],
                    ),
                    _ => (None, vec![Box::new(Peeker::new(&counters))]),
                };
                let mut s = Setup::new(
                    Config::default(),
                    mons,
                    counters,
                    &flows,
                    ring_1460(&flows, PER_FLOW, swap),
                );
                s._plugins = host;
                s
            });
            b.iter_custom(|iters| s.measure(iters));
        });
        if let Some(mut s) = setup {
            s.check(FLOWS as usize, !plugin);
        }
    }
    g.finish();
}

#[allow(missing_docs, unreachable_pub)]
mod group {
    use super::{pkts_64b, reassembly};
    criterion::criterion_group!(benches, pkts_64b, reassembly);
}
criterion_main!(group::benches);
