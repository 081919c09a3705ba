//! Outputs of the generator: netmap-layout shared-memory rings, the TX rings of a real
//! netmap port, or a pcap file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowpeek::io::netmap::{NetmapTxPort, PortSpec, NETMAP_DEVICE};
use flowpeek::io::shm::{monotonic_ns, ring_for, PushError, ShmProducer, ShmRegion};

/// How long [`Output::finish`] waits for a netmap port to send the frames it was given.
pub const NETMAP_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where frames go.
pub enum Output {
    /// Rings in /dev/shm, frames spread over them by the symmetric flow hash; with `stamp`,
    /// each slot's `ptr` field gets CLOCK_MONOTONIC ns at push time (the frame's bytes are
    /// unchanged), for `flowpeek run --latency-sample`.
    Shm {
        /// The producer.
        producer: ShmProducer,
        /// Stamp each slot.
        stamp: bool,
    },
    /// A pcap file (nanosecond timestamps).
    Pcap(std::io::BufWriter<std::fs::File>, PathBuf),
    /// The TX rings of a real netmap port (a NIC, a pipe end, a VALE port), frames spread
    /// over them by the symmetric flow hash. Never stamped: a NIC does not carry a slot's
    /// `ptr` field to the receiver.
    Netmap(NetmapOut),
}

/// A netmap port as the generator's output: frames are copied into the TX rings and
/// handed to the kernel with one `NIOCTXSYNC` every `batch` frames (pkt-gen's `-b`).
pub struct NetmapOut {
    port: NetmapTxPort,
    /// Frames written since the last sync.
    unsynced: u32,
    /// Frames per sync.
    batch: u32,
    /// Per ring (its position in the port's ring list): pushes refused because it was full.
    full: Vec<u64>,
}

impl NetmapOut {
    /// Opens and registers the port for transmitting (see `NetmapTxPort::open_spec`).
    pub fn open(spec: &PortSpec) -> Result<NetmapOut, String> {
        let port = NetmapTxPort::open_spec(spec.clone()).map_err(|e| e.to_string())?;
        let rings = port.rings().len();
        Ok(NetmapOut {
            port,
            unsynced: 0,
            batch: 1,
            full: vec![0; rings],
        })
    }

    /// The port.
    pub fn port(&mut self) -> &mut NetmapTxPort {
        &mut self.port
    }

    /// Publishes every frame written and syncs (`NIOCTXSYNC`): the kernel transmits them and
    /// gives back the slots already sent.
    pub fn sync(&mut self) -> Result<(), String> {
        self.port.publish();
        self.unsynced = 0;
        self.port.tx_sync().map_err(|e| e.to_string())
    }

    /// Writes one frame into the TX ring its flow hashes to; `Ok(Err(i))` when ring `i` (a
    /// position in the port's ring list) stays full after a sync.
    #[inline]
    pub fn send(&mut self, frame: &[u8]) -> Result<Result<(), usize>, String> {
        let rings = self.port.rings();
        let i = ring_for(frame, rings.len());
        let ring = rings[i];
        if !self.port.push(ring, frame).map_err(|e| e.to_string())? {
            // Full: hand the kernel what is written, let it take back the slots it has sent,
            // and try once more (the generator retries after that, as with shm).
            self.sync()?;
            if !self.port.push(ring, frame).map_err(|e| e.to_string())? {
                self.full[i] += 1;
                return Ok(Err(i));
            }
        }
        self.unsynced += 1;
        if self.unsynced >= self.batch {
            self.sync()?;
        }
        Ok(Ok(()))
    }

    /// Syncs until every frame published has been sent, at most [`NETMAP_DRAIN_TIMEOUT`].
    pub fn finish(&mut self) -> Result<(), String> {
        self.sync()?;
        let start = Instant::now();
        loop {
            let left = self.port.in_flight().map_err(|e| e.to_string())?;
            if left == 0 {
                return Ok(());
            }
            if start.elapsed() >= NETMAP_DRAIN_TIMEOUT {
                return Err(format!(
                    "{}: {left} frame(s) still in the TX rings {} s after the last one was written: the port is not sending them (link down, or nobody reads the other end of the pipe)",
                    self.port.spec(),
                    NETMAP_DRAIN_TIMEOUT.as_secs()
                ));
            }
            // As pkt-gen at the end of a run: sync, wait a little, look again.
            std::thread::sleep(Duration::from_micros(100));
            self.port.tx_sync().map_err(|e| e.to_string())?;
        }
    }
}

impl Drop for NetmapOut {
    fn drop(&mut self) {
        // Frames written but not handed over yet go out (best effort; `finish` checks).
        if self.port.publish() > 0 {
            let _ = self.port.tx_sync();
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// `shm:NAME`.
    Shm(String),
    /// `pcap:FILE`.
    Pcap(PathBuf),
    /// `netmap:IF`, `netmap:IF-K`, `netmap:NAME{K`, `netmap:NAME}K` or `valeB:P`.
    Netmap(PortSpec),
}

impl std::str::FromStr for OutputSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<OutputSpec, String> {
        match s.split_once(':') {
            Some(("shm", name)) if !name.is_empty() => Ok(OutputSpec::Shm(name.into())),
            Some(("pcap", path)) if !path.is_empty() => Ok(OutputSpec::Pcap(path.into())),
            Some((prefix, _)) if prefix == "netmap" || prefix.starts_with("vale") => {
                PortSpec::parse(s)
                    .map(OutputSpec::Netmap)
                    .map_err(|e| e.to_string())
            }
            _ => Err(format!(
                "{s:?}: expected shm:NAME, pcap:FILE, netmap:IF, netmap:IF-K, netmap:NAME{{K or valeB:P"
            )),
        }
    }
}

impl Output {
    /// Opens the output: shm rings are created (`rings` of `slots` slots); a netmap port is
    /// registered (its rings are the driver's).
    pub fn open(spec: &OutputSpec, rings: u32, slots: u32) -> Result<Output, String> {
        match spec {
            OutputSpec::Shm(name) => ShmRegion::create(name, rings, slots, 2048)
                .map(|producer| Output::Shm {
                    producer,
                    stamp: true,
                })
                .map_err(|e| e.to_string()),
            OutputSpec::Pcap(path) => {
                let f =
                    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                // Nanosecond pcap, Ethernet, snaplen 65535.
                let mut h = Vec::with_capacity(24);
                h.extend(0xa1b2_3c4du32.to_le_bytes());
                h.extend(2u16.to_le_bytes());
                h.extend(4u16.to_le_bytes());
                h.extend([0u8; 8]);
                h.extend(65535u32.to_le_bytes());
                h.extend(1u32.to_le_bytes());
                w.write_all(&h)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Output::Pcap(w, path.clone()))
            }
            OutputSpec::Netmap(port) => NetmapOut::open(port).map(Output::Netmap),
        }
    }

    /// Sends one frame; `Ok(false)` when a ring was full (counted by the producer).
    pub fn send(&mut self, frame: &[u8], ts_ns: u64) -> Result<bool, String> {
        self.send_to(frame, ts_ns).map(|r| r.is_ok())
    }

    /// Sends one frame; `Ok(Err(ring))` when ring `ring` was full (counted by the producer;
    /// for netmap, still full after a sync).
    pub fn send_to(&mut self, frame: &[u8], ts_ns: u64) -> Result<Result<(), usize>, String> {
        match self {
            Output::Shm { producer, stamp } => match if *stamp {
                producer.push_hashed_stamped(frame, monotonic_ns())
            } else {
                producer.push_hashed(frame)
            } {
                Ok(_) => Ok(Ok(())),
                Err(PushError::Full { ring }) => Ok(Err(ring)),
                Err(e) => Err(e.to_string()),
            },
            Output::Pcap(w, path) => {
                let mut rec = [0u8; 16];
                rec[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
                rec[4..8].copy_from_slice(&((ts_ns % 1_000_000_000) as u32).to_le_bytes());
                rec[8..12].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                rec[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                w.write_all(&rec)
                    .and_then(|_| w.write_all(frame))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Ok(()))
            }
            Output::Netmap(n) => n.send(frame),
        }
    }

    /// Frames refused by full rings so far.
    pub fn full(&self) -> u64 {
        self.full_per_ring().iter().sum()
    }

    /// Rings (1 for a file).
    pub fn rings(&self) -> usize {
        match self {
            Output::Shm { producer, .. } => producer.region().rings(),
            Output::Pcap(..) => 1,
            Output::Netmap(n) => n.port.rings().len(),
        }
    }

    /// Push attempts refused by each full ring so far (empty for a file).
    pub fn full_per_ring(&self) -> Vec<u64> {
        match self {
            Output::Shm { producer: p, .. } => {
                (0..p.region().rings()).map(|r| p.full_count(r)).collect()
            }
            Output::Pcap(..) => Vec::new(),
            Output::Netmap(n) => n.full.clone(),
        }
    }

    /// shm: waits until a consumer polls every ring (see `ShmProducer::wait_for_consumer`);
    /// false after `timeout`. A pcap or netmap output has nobody to wait for.
    pub fn wait_for_consumer(&self, timeout: std::time::Duration) -> bool {
        match self {
            Output::Shm { producer, .. } => producer.wait_for_consumer(timeout),
            Output::Pcap(..) | Output::Netmap(_) => true,
        }
    }

    /// Stamp shm slots with the push time (default on; no effect on a file or a netmap port).
    pub fn set_stamp(&mut self, on: bool) {
        if let Output::Shm { stamp, .. } = self {
            *stamp = on;
        }
    }

    /// Whether frames are stamped (shm only).
    pub fn stamps(&self) -> bool {
        matches!(self, Output::Shm { stamp: true, .. })
    }

    /// Flushes a file output; publishes shm frames; syncs a netmap port until it has sent
    /// everything (at most [`NETMAP_DRAIN_TIMEOUT`]).
    pub fn finish(&mut self) -> Result<(), String> {
        match self {
            Output::Pcap(w, path) => w.flush().map_err(|e| format!("{}: {e}", path.display()))?,
            Output::Shm { producer, .. } => producer.flush(),
            Output::Netmap(n) => n.finish()?,
        }
        Ok(())
    }

    /// shm: publish each ring's frames in batches of `n` (see
    /// `ShmProducer::set_publish_every`); netmap: one `NIOCTXSYNC` every `n` frames.
    /// [`flush`](Self::flush) hands over the rest.
    pub fn set_publish_every(&mut self, n: u32) {
        match self {
            Output::Shm { producer, .. } => producer.set_publish_every(n),
            Output::Netmap(out) => out.batch = n.max(1),
            Output::Pcap(..) => {}
        }
    }

    /// shm: publishes every frame written so far; netmap: publishes and syncs.
    pub fn flush(&mut self) -> Result<(), String> {
        match self {
            Output::Shm { producer, .. } => producer.flush(),
            Output::Netmap(n) => n.sync()?,
            Output::Pcap(..) => {}
        }
        Ok(())
    }

    /// The file behind the output (`/dev/netmap` for a netmap port).
    pub fn path(&self) -> &Path {
        match self {
            Output::Shm { producer, .. } => producer.region().path(),
            Output::Pcap(_, path) => path,
            Output::Netmap(_) => Path::new(NETMAP_DEVICE),
        }
    }

    /// The output, for messages: the shm file or pcap path, or the netmap port.
    pub fn name(&self) -> String {
        match self {
            Output::Netmap(n) => n.port.spec().to_string(),
            _ => self.path().display().to_string(),
        }
    }
}
