//! The one loop on a netmap source: an in-memory netmap image walked by the netmap ring code
//! ([`crate::io::netmap::NetmapMem::feed`], what [`NetmapPort`]'s batches call), with the
//! kernel's part (filling the RX ring between two waits) played here.

use super::*;
use crate::io::netmap::image::testing::Image;
use crate::io::netmap::{HostRings, NetmapMem};

/// Plays the kernel of a one-ring netmap port: each wait fills the ring (when the worker has
/// emptied it) with the next frames, and stops the worker once every frame was read.
struct KernelImage {
    // Field order: the walker points into the image and goes first.
    mem: NetmapMem,
    img: Image,
    frames: std::vec::IntoIter<Vec<u8>>,
    stop: Arc<AtomicBool>,
}

impl KernelImage {
    fn new(frames: Vec<Vec<u8>>, stop: Arc<AtomicBool>) -> Self {
        let mut img = Image::new(1, 1024, 128);
        let mem = img.mem(HostRings::FromIf).unwrap();
        KernelImage {
            mem,
            img,
            frames: frames.into_iter(),
            stop,
        }
    }
}

impl Source for KernelImage {
    // A netmap port's policy, so that the loop is compiled as for one.
    const IDLE: Idle = <NetmapPort as Source>::IDLE;
    const WALL_CLOCK: bool = <NetmapPort as Source>::WALL_CLOCK;
    const STAMPS: bool = <NetmapPort as Source>::STAMPS;
    const SAFE_POINT_EVERY: u64 = <NetmapPort as Source>::SAFE_POINT_EVERY;

    fn wait(&mut self, _timeout: Duration) -> Result<(), SourceError> {
        if self.mem.ring(0).unwrap().available().unwrap() > 0 {
            return Ok(());
        }
        let mut filled = 0;
        for frame in self.frames.by_ref().take(1023) {
            self.img.produce(0, &frame);
            filled += 1;
        }
        if filled == 0 {
            self.stop.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn next_batch<K: Sink>(&mut self, now: u64, sink: &mut K) -> Result<Batch, SourceError> {
        match self.mem.feed(&[0], Some(LinkType::Ethernet), now, sink) {
            Ok(0) => Ok(Batch::Empty),
            Ok(n) => Ok(Batch::Frames(n)),
            Err(e) => panic!("the image is well formed: {e}"),
        }
    }
}

/// A TCP SYN of flow `i` (Ethernet, IPv4, no options): every `i` is another flow.
fn syn(i: u32) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
    ip[16..20].copy_from_slice(&[192, 168, 0, 1]);
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&i.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

/// Runs the loop over `flows` SYNs on the image; returns the engine's packet count and the
/// lookahead hints the source handed to the engine.
fn run_image(flows: u32) -> (u64, u64) {
    let dir = std::env::temp_dir().join(format!(
        "flowpeek-worker-test-{}-{flows}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let plugins = Arc::new(PluginSet::open(&dir, &dir, 0, false).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let spec = WorkerSpec {
        core: 0,
        cores: 1,
        engine: Config {
            max_flows: 1 << 17,
            ..Config::default()
        },
        plugins,
        stop: Arc::clone(&stop),
        counters: Arc::new(CoreCounters::default()),
        pin: false,
        latency_sample: 0,
        latency_warmup: 0,
        handoff: None,
    };
    let mut src = KernelImage::new((0..flows).map(syn).collect(), stop);
    let (mut host, engine) = start_core(&spec).unwrap();
    let mut feed = Feed::new(engine, NoMeter);
    let error = drive(&spec, &mut src, &mut feed, &mut host, &mut None);
    assert!(error.is_none(), "{error:?}");
    let _ = std::fs::remove_dir_all(&dir);
    (feed.engine.stats().packets, feed.hints)
}

#[test]
fn netmap_source_looks_ahead_once_the_table_is_past_the_caches() {
    let flows = crate::flow::PREFETCH_MIN_FLOWS as u32 + 6000;
    let (packets, hints) = run_image(flows);
    assert_eq!(packets, u64::from(flows));
    // Lookahead starts at the first batch (at most MAX_BATCH frames) after the table reached
    // PREFETCH_MIN_FLOWS; from then on every frame is hinted far and near before it is
    // processed.
    let looked_ahead = 6000 - crate::io::netmap::MAX_BATCH as u64;
    assert!(hints >= 2 * looked_ahead, "{hints} hints");
    assert!(hints <= 2 * 6000, "{hints} hints");
}

#[test]
fn small_tables_are_walked_without_lookahead() {
    let (packets, hints) = run_image(3000);
    assert_eq!(packets, 3000);
    assert_eq!(hints, 0);
}
